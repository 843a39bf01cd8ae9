"""Issue 20 end to end against the real FHIR server (sekmet, SMART Backend Services and
Group-level Bulk Data, tests/learning/conftest.py): `cds-service monitor` on a cohort whose
outcomes after deployment follow the deployed model (kept) and on one whose outcomes
drifted (odds 1.8 times higher: retired); the card then withholds the estimate with the one-line reason and shows the
evidence only, until another model is deployed."""

from __future__ import annotations

import json
import math
import tomllib

import pytest
from support.chart import CHEMODENERVATION, Chart
from support.learned_reports import MODEL_CARD
from support.synthetic_cohort import BtxaTruth

from cds_service.cli import main
from cds_service.content.model_report import ModelReport, build_report

TRUTH = BtxaTruth()
COEFFICIENTS = {
    "hypertension": TRUTH.b_hypertension,
    "male_sex": TRUTH.b_male,
    "drinking": TRUTH.b_drinking,
    "diabetes": TRUTH.b_diabetes,
}
DEPLOYED = "2021-01-01T09:00:00Z"  # the cohorts' index dates are in the 900 days after


def _deploy(folder, version: str) -> str:
    """A deployed BTX-A model (the truth of the effect cohort), approved on DEPLOYED."""
    folder.mkdir(parents=True, exist_ok=True)
    report = build_report(
        {
            "status": "passed",
            "message": "Fitted and internally validated",
            "card": {"id": "btxa-response", "version": "1.0.0"},
            "model": {"kind": "logistic", "outcome": "poor response", "label": "Site BTX-A", "version": version},
            "model_card": MODEL_CARD,
            "counts": {"included": 500, "events": 120},
            "provenance": {"fhir_server": "https://fhir.example/fhir", "generated_at": "2020-12-20T10:00:00Z"},
            "coefficients": [{"predictor": k, "estimate": v} for k, v in COEFFICIENTS.items()],
            "intercept": {"estimate": TRUTH.intercept},
            "performance": {"c_statistic_optimism_corrected": 0.7, "calibration_slope_optimism_corrected": 1.0},
            "files": {"report_json": "btxa-response.report.json", "report_html": "btxa-response.report.html"},
            "approval": {"approved_by": "Dr A. Reviewer", "approved_at": DEPLOYED},
        }
    )
    (folder / "btxa-response.report.json").write_text(report.to_json(), encoding="utf-8")
    coefficients = ", ".join(f"{k} = {v!r}" for k, v in COEFFICIENTS.items())
    overlay = folder / "site.toml"
    overlay.write_text(
        "[models.btxa-response]\n"
        'label = "Site BTX-A"\n'
        f'version = "{version}"\n'
        'report = "btxa-response.report.json"\n'
        f"coefficients = {{ {coefficients} }}\n"
        f"intercept = {TRUTH.intercept!r}\n",
        encoding="utf-8",
    )
    return str(overlay)


def _monitor(smart_fhir, group: str, overlay: str, instance, capsys) -> tuple[int, str]:
    code = main(
        [
            "monitor",
            "btxa-response",
            "--fhir-base",
            smart_fhir.base_url,
            "--group",
            smart_fhir.groups[group],
            "--site-overlay",
            overlay,
            "--instance",
            str(instance),
            "--client-id",
            "cds-learn-rsa",
            "--private-key",
            str(smart_fhir.rsa_key),
            "--kid",
            "rsa-1",
        ]
    )
    return code, capsys.readouterr().out


def _btxa_card(app) -> dict:
    chart = Chart().hfs().hypertension().order(CHEMODENERVATION)
    response = app.test_client().post(
        "/cds-services/hfs-outcomes-order-select", json=chart.hook_request("order-select")
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return next(c for c in response.get_json()["cards"] if c["summary"].startswith("Botulinum"))


@pytest.fixture(scope="module")
def evidence_only_summary(tmp_path_factory):
    from cds_service.http.app import create_app

    app = create_app(instance_path=tmp_path_factory.mktemp("plain"), allow_unsigned=True)
    try:
        return _btxa_card(app)["summary"]
    finally:
        app.extensions["cds_service"].close()


def test_a_cohort_that_follows_the_model_keeps_it_and_the_card_keeps_its_estimate(
    smart_fhir, tmp_path, capsys, make_app, evidence_only_summary
):
    overlay = _deploy(tmp_path / "site", "1")
    code, out = _monitor(smart_fhir, "btxa", overlay, tmp_path / "instance", capsys)
    assert code == 0, out
    assert out.startswith("ok: Site BTX-A 1: observed / expected ")
    report = ModelReport.model_validate_json((tmp_path / "site" / "btxa-response.report.json").read_text())
    run = report.monitoring[-1]
    assert run.status == "ok" and not run.drift.alarm and run.drift.statistic < run.drift.threshold
    assert run.n == 500 and run.events > 50 and run.observed_expected.low < 1.0 < run.observed_expected.high
    assert run.calibration_slope.low < 1.0 < run.calibration_slope.high and run.c_statistic > 0.6
    assert run.extraction.level == "group" and run.extraction.since == "2019-01-02T00:00:00Z"
    assert sum(w.n for w in run.windows) == run.n and run.windows[0].start == "2021-01-01"
    verdict = json.loads((tmp_path / "instance" / "monitoring" / "btxa-response.json").read_text())
    assert verdict["status"] == "ok" and verdict["model"] == {"label": "Site BTX-A", "version": "1"}
    card = _btxa_card(make_app(site_overlay=overlay, instance_path=tmp_path / "instance"))
    assert "site model" in card["summary"] and card["summary"] != evidence_only_summary


def test_a_cohort_that_drifted_retires_the_model_until_another_is_deployed(
    smart_fhir, tmp_path, capsys, make_app, evidence_only_summary
):
    overlay = _deploy(tmp_path / "site", "1")
    instance = tmp_path / "instance"
    code, out = _monitor(smart_fhir, "btxa-drift", overlay, instance, capsys)
    assert code == 5, out
    report = ModelReport.model_validate_json((tmp_path / "site" / "btxa-response.report.json").read_text())
    run = report.monitoring[-1]
    assert run.status == "retired" and run.drift.alarm and run.drift.direction == "higher"
    assert run.observed_expected.low > 1.0
    assert "more events than it predicts" in run.reason and "\n" not in run.reason
    html = (tmp_path / "site" / "btxa-response.report.html").read_text(encoding="utf-8")
    assert "Monitoring since deployment" in html and "ALARM" in html

    card = _btxa_card(make_app(site_overlay=overlay, instance_path=instance))
    assert card["summary"] == evidence_only_summary  # the evidence-only card
    assert run.reason in card["detail"]
    from prometheus_client import REGISTRY

    assert REGISTRY.get_sample_value("cds_site_model_retired", {"card": "btxa-response", "site": ""}) == 1.0
    assert REGISTRY.get_sample_value("cds_site_model_observed_expected", {"card": "btxa-response", "site": ""}) > 1.2

    # a new model (another version, approved) is deployed: the old verdict does not apply to it
    overlay2 = _deploy(tmp_path / "site2", "2")
    card = _btxa_card(make_app(site_overlay=overlay2, instance_path=instance))
    assert "site model" in card["summary"] and run.reason not in card["detail"]
    assert REGISTRY.get_sample_value("cds_site_model_retired", {"card": "btxa-response", "site": ""}) == 0.0
    assert tomllib.loads((tmp_path / "site2" / "site.toml").read_text())["models"]["btxa-response"]["version"] == "2"


def test_monitor_errors_are_one_line_with_a_non_zero_exit(smart_fhir, tmp_path, capsys):
    overlay = tmp_path / "site.toml"
    overlay.write_text("", encoding="utf-8")
    code = main(
        [
            *("monitor", "btxa-response", "--fhir-base", smart_fhir.base_url),
            *("--site-overlay", str(overlay), "--instance", str(tmp_path / "i")),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no deployed model for btxa-response" in err


def test_learn_recalibrate_proposes_a_model_a_person_must_approve_and_the_monitor_keeps_it(
    smart_fhir, tmp_path, capsys, make_app
):
    from cds_service.config import ConfigError

    overlay = _deploy(tmp_path / "site", "1")
    out = tmp_path / "proposal"
    code = main(
        [
            *("learn", "btxa-response", "--recalibrate", "--fhir-base", smart_fhir.base_url),
            *("--group", smart_fhir.groups["btxa-drift"], "--site-overlay", overlay, "--out", str(out)),
            *("--client-id", "cds-learn-rsa", "--private-key", str(smart_fhir.rsa_key), "--kid", "rsa-1"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    proposal = ModelReport.model_validate_json((out / "btxa-response.recalibrated.report.json").read_text())
    recal = proposal.recalibration
    assert recal.of_version == "1" and proposal.model.version.startswith("1-recal-")
    assert abs(proposal.intercept.estimate - (TRUTH.intercept + math.log(1.8))) < 0.35  # the drift, recovered
    assert 0.7 < recal.slope < 1.3 and proposal.approval is None
    new_overlay = str(out / "btxa-response.recalibrated.overlay.toml")
    with pytest.raises(ConfigError, match="not been approved by a person"):
        make_app(site_overlay=new_overlay)
    assert main(["approve", str(out / "btxa-response.recalibrated.report.json"), "--by", "Dr A. Reviewer"]) == 0
    card = _btxa_card(make_app(site_overlay=new_overlay, instance_path=tmp_path / "instance"))
    assert "site model" in card["summary"]
    # the recalibrated model on the same drifted patients: kept
    code = main(
        [
            *("monitor", "btxa-response", "--fhir-base", smart_fhir.base_url, "--since", "2021-01-01"),
            *("--group", smart_fhir.groups["btxa-drift"], "--site-overlay", new_overlay),
            *("--instance", str(tmp_path / "instance"), "--client-id", "cds-learn-rsa"),
            *("--private-key", str(smart_fhir.rsa_key), "--kid", "rsa-1"),
        ]
    )
    assert code == 0, capsys.readouterr().out
