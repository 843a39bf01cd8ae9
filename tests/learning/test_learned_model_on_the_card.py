"""Issue 11 end to end: `cds-service learn` writes the overlay entry and its report; the app
loads them (site_overlay setting) and a hook call shows the estimate labelled with the
model's provenance; its evidence page shows the model's calibration."""

from __future__ import annotations

import re

from support.chart import CHEMODENERVATION, Chart
from support.learned_reports import serve_population
from support.synthetic_cohort import Generator

from cds_service.config import DEFAULT_CARDS_DIR
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
    assert "Example Hospital BTX-A model" in card["detail"]
    assert (
        f"learned from this hospital's records (127.0.0.1, {report['provenance']['generated_at'][:10]})"
        in (card["detail"])
    )
    assert f"fitted on {n} patients ({report['counts']['events']} poor responses)" in card["detail"]
