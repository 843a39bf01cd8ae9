"""Issue 11 end to end: `cds-service learn` writes the overlay entry and its report; the app
loads them (site_overlay setting) and a hook call shows the estimate labelled with the
model's provenance; its evidence page shows the model's calibration."""

from __future__ import annotations

import html
import re
import tomllib
from urllib.parse import urlsplit

import pytest
from support.chart import CARBAMAZEPINE, CHEMODENERVATION, LOCAL, MVD, Chart
from support.learned_reports import serve_population
from support.synthetic_cohort import Generator

from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.learning.report import approve
from cds_service.learning.run import LearnOptions, learn


def test_a_model_learned_by_learn_is_loaded_by_the_app_and_the_hook_call_shows_it_labelled(
    fhir_stub, tmp_path, make_app
):
    generator = Generator(seed=21)
    generator.btxa(600)
    serve_population(fhir_stub, generator)
    result = learn(
        LearnOptions(
            card_id="btxa-response",
            cards_dir=DEFAULT_CARDS_DIR,
            fhir_base=fhir_stub.url_for("/fhir"),
            out_dir=tmp_path / "out",
            staging_dir=tmp_path,
            bootstrap=20,
            model_label="Example Hospital BTX-A model",
        )
    )
    assert result.status == "passed", result.message
    assert 'report = "btxa-response.report.json"' in result.overlay.read_text(encoding="utf-8")
    approve(result.report_json, "Dr A. Reviewer", None, "2026-12-07T10:00:00Z")  # deployed only by a person

    app = make_app(site_overlay=str(result.overlay))
    chart = Chart().hfs().hypertension().order(CHEMODENERVATION)
    response = app.test_client().post(
        "/cds-services/hfs-outcomes-order-select", json=chart.hook_request("order-select")
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    card = next(c for c in response.get_json()["cards"] if c["summary"].startswith("Botulinum"))
    report = result.report
    n = report["counts"]["included"]
    c_stat = f"{report['performance']['c_statistic_optimism_corrected']:.2f}"
    slope = f"{report['performance']['calibration_slope_optimism_corrected']:.2f}"
    assert re.fullmatch(
        rf"Botulinum toxin A: site model \({n} patients, C-statistic {c_stat}, slope {slope}\) estimates "
        r"\d+\.\d % poor response; 8\.5 % in the study cohort",
        card["summary"],
    ), card["summary"]
    # the estimate's provenance is on the card's evidence page (issue 9), opened from its link
    link = next(x for x in card["links"] if "/evidence/" in x["url"])
    page = app.test_client().get(urlsplit(link["url"]).path)
    assert page.status_code == 200
    text = html.unescape(page.get_data(as_text=True))
    assert "Example Hospital BTX-A model" in text
    assert f"learned from this hospital's records (127.0.0.1, {report['provenance']['generated_at'][:10]})" in text
    assert f"fitted on {n} patients ({report['counts']['events']} poor responses)" in text


# -- card B: an evidence-only card that accepts a learned logistic model ----------------------------
@pytest.fixture(scope="module")
def amr_learned(tmp_path_factory):
    """`cds-service learn amr-persistence` on a seeded synthetic cohort (search fallback)."""
    from pytest_httpserver import HTTPServer

    folder = tmp_path_factory.mktemp("amr")
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    try:
        generator = Generator(seed=31)
        generator.amr(450)
        serve_population(server, generator)
        result = learn(
            LearnOptions(
                card_id="amr-persistence",
                cards_dir=DEFAULT_CARDS_DIR,
                fhir_base=server.url_for("/fhir"),
                out_dir=folder,
                staging_dir=folder,
                bootstrap=20,
            )
        )
    finally:
        server.clear()
        if server.is_running():
            server.stop()
    assert result.status == "passed", result.message
    approve(result.report_json, "Dr A. Reviewer", None, "2026-12-07T10:00:00Z")
    return result


def _mvd_order_chart(amplitude: float) -> Chart:
    chart = Chart().hfs(onset="2020-06-01").order(MVD)
    chart.local_observation("cohen-spasm-grade", "2025-05-01", valueInteger=3)
    chart.local_observation("responsible-vessel-count", "2025-05-01", valueInteger=2)
    chart.quantity((LOCAL, "amr-amplitude-preop"), "2025-05-20", amplitude, "uV")
    return chart.medication(CARBAMAZEPINE, statement=True)


def test_the_learned_amr_model_gives_card_b_the_preoperative_probability_it_needs(amr_learned):
    overlay = tomllib.loads(amr_learned.overlay.read_text(encoding="utf-8"))
    overlay["models"]["amr-persistence"]["report"] = str(amr_learned.report_json)
    result = _mvd_order_chart(300).result("amr-persistence", "order-select", "2025-06-01", overlay=overlay)
    assert result.estimate is not None and result.estimate.kind == "logistic"
    assert 0 < result.estimate.probability < 1
    card = _mvd_order_chart(300).show("amr-persistence", "order-select", "2025-06-01", overlay=overlay)
    n = amr_learned.report["counts"]["included"]
    assert (
        f"**Predicted probability of a persistent AMR for this patient: {result.estimate.headline}**, from the "
        f"site's model (fitted on {n} of this hospital's patients" in card["detail"]
    )
    assert "Study cohort: 21.7 %." in card["detail"]


def test_card_b_withholds_the_probability_for_an_amplitude_beyond_the_training_data(amr_learned):
    overlay = tomllib.loads(amr_learned.overlay.read_text(encoding="utf-8"))
    overlay["models"]["amr-persistence"]["report"] = str(amr_learned.report_json)
    seen = amr_learned.report["predictor_ranges"]["amr_amplitude"]
    chart = _mvd_order_chart(seen["max"] + 400)
    result = chart.result("amr-persistence", "order-select", "2025-06-01", overlay=overlay)
    assert result.estimate is None and [o.predictor for o in result.outside_range] == ["amr_amplitude"]
    lead = chart.show("amr-persistence", "order-select", "2025-06-01", overlay=overlay)["detail"].split("\n### ")[0]
    assert "**No predicted probability is shown:** Preoperative AMR amplitude" in lead
    assert "outside the values (in brackets) the site's model was fitted on" in lead


def test_an_evidence_only_card_without_site_model_still_refuses_a_site_model():
    from cds_service.content.cards import load_cards
    from cds_service.content.errors import ContentError

    overlay = {"models": {"mvd-recurrence": {"label": "x", "version": "1", "coefficients": {}}}}
    with pytest.raises(ContentError, match="evidence-only"):
        load_cards(DEFAULT_CARDS_DIR, overlay)


def test_card_b_refuses_a_site_model_without_a_coefficient_for_each_site_predictor():
    from cds_service.content.cards import load_cards
    from cds_service.content.errors import ContentError

    overlay = {"models": {"amr-persistence": {"label": "x", "version": "1", "intercept": -1.0}}}
    with pytest.raises(ContentError, match="publishes none, so give one for each of"):
        load_cards(DEFAULT_CARDS_DIR, overlay)
