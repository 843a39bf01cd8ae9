"""The fitting and validation measures against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from cds_service.learning import fit
from cds_service.learning.report import calibration_svg, overlay_text


def test_auc_counts_ties_as_half_and_matches_a_hand_count():
    y = np.array([1, 1, 0, 0, 0])
    score = np.array([0.9, 0.5, 0.5, 0.2, 0.1])
    # pairs (event, non-event): 0.9 beats all 3; 0.5 ties one and beats two -> (3 + 2.5) / 6
    assert fit.auc(y, score) == pytest.approx(5.5 / 6)


def test_kaplan_meier_risk_matches_lifelines():
    from lifelines import KaplanMeierFitter

    rng = np.random.default_rng(1)
    t = rng.exponential(10, 200).round(1)
    e = (rng.random(200) < 0.7).astype(float)
    km = KaplanMeierFitter().fit(t, e)
    assert fit.kaplan_meier_risk(t, e, 8.0) == pytest.approx(1 - float(km.survival_function_at_times(8.0).iloc[0]))


def test_a_logistic_model_on_its_own_data_has_slope_one_and_intercept_zero_and_overfits_in_bootstrap():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3))
    y = (rng.random(300) < 1 / (1 + np.exp(-(-1 + x @ np.array([1.0, 0.0, 0.0]))))).astype(float)
    d = fit.Design(("a", "b", "c"), x, y, None)
    model = fit.fit_logistic(d)
    perf = fit.validate_logistic(d, model, 30, seed=3)
    assert perf.slope_apparent == pytest.approx(1.0, abs=1e-6)
    assert perf.intercept_apparent == pytest.approx(0.0, abs=1e-6)
    assert perf.c_corrected < perf.c_apparent  # optimism is positive
    assert perf.slope_corrected < 1.0


def test_perfect_separation_is_a_fit_failure_not_a_model():
    x = np.array([[0.0], [0.0], [1.0], [1.0]] * 10)
    y = x[:, 0].copy()
    with pytest.raises(fit.FitFailed, match="separated"):
        fit.fit_logistic(fit.Design(("a",), x, y, None))


def test_the_cox_calibration_intercept_is_zero_on_the_fitting_data():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 1))
    t = rng.exponential(1 / np.exp(0.7 * x[:, 0]))
    e = (t < 2.0).astype(float)
    t = np.minimum(t, 2.0)
    d = fit.Design(("a",), x, e, t)
    model = fit.fit_cox(d, np.array([0.0]))
    slope, intercept = fit.cox_calibration(model, d)
    assert slope == pytest.approx(1.0, abs=1e-3)
    assert intercept == pytest.approx(0.0, abs=0.02)
    assert 0.3 < model.beta[0] < 1.1


def test_the_svg_plot_is_plain_svg_with_one_point_per_group():
    svg = calibration_svg(
        [{"n": 10, "predicted": 0.1, "observed": 0.12}, {"n": 10, "predicted": 0.4, "observed": 0.35}], "t"
    )
    assert svg.startswith("<svg") and svg.count("<circle") == 2 and "script" not in svg


def test_the_overlay_text_escapes_a_label_with_quotes():
    import tomllib

    from support.learned_reports import MODEL_CARD

    report = {
        "card": {"id": "btxa-response"},
        "model": {"kind": "logistic", "outcome": "poor response", "label": 'Site "A" model', "version": "1"},
        "model_card": MODEL_CARD,
        "counts": {"included": 300, "events": 90},
        "provenance": {"generated_at": "now", "fhir_server": "http://x"},
        "status": "passed",
        "files": {"report_html": "r.html", "report_json": "r.json"},
        "coefficients": [{"predictor": "hypertension", "estimate": 1.5, "coding": None}],
        "intercept": {"estimate": -2.0},
    }
    parsed = tomllib.loads(overlay_text(report))["models"]["btxa-response"]
    assert parsed == {
        "label": 'Site "A" model',
        "version": "1",
        "report": "r.json",
        "coefficients": {"hypertension": 1.5},
        "intercept": -2.0,
    }


def test_the_report_page_is_a_template_with_every_text_escaped():
    from support.learned_reports import MODEL_CARD

    from cds_service.learning.report import report_html

    hostile = "<script>alert(1)</script>"
    report = {
        "card": {"id": "btxa-response", "version": "1.0"},
        "model": {"kind": "logistic", "outcome": hostile, "label": "m", "version": "1"},
        "model_card": {**MODEL_CARD, "intended_use": hostile},
        "status": "passed",
        "message": hostile,
        "minimums": {
            "sample_size_rule": "Riley",
            "checks": [{"name": "events", "value": 40.0, "required": ">= 10", "passed": True}],
        },
        "counts": {
            "patients_scanned": 100,
            "with_index_event": 90,
            "included": 80,
            "events": 40,
            "predictors": 1,
            "events_per_predictor": 40.0,
            "excluded": {"no follow-up": 10},
        },
        "coefficients": [
            {
                "predictor": "hypertension",
                "label": "Hypertension",
                "coding_text": "yes/no",
                "estimate": 1.23456,
                "ci_low": 0.5,
                "ci_high": 2.0,
                "ratio": 3.437,
                "ratio_ci_low": 1.6,
                "ratio_ci_high": 7.4,
                "published": None,
            }
        ],
        "intercept": {"estimate": -2.0, "ci_low": -3.0, "ci_high": -1.0},
        "calibration": {"horizon": None},
        "provenance": {
            "fhir_server": "http://x",
            "extraction": {"method": "bulk", "level": "system", "types": ["Patient"], "transaction_time": "t"},
            "extraction_started": "s",
            "generated_at": "g",
            "versions": {"cds": "0.1"},
        },
        "definition": {"path": "d.toml", "version": "1", "sha256": "0" * 64},
        "monitoring": [
            {
                "run_at": "2026-12-01",
                "since": "2026-06-01",
                "n": 50,
                "events": 20,
                "drift": {"method": "CUSUM", "alpha": 0.05, "alarm": False},
                "status": "ok",
                "reason": hostile,
            }
        ],
    }
    html = report_html(report, calibration_svg([{"n": 10, "predicted": 0.1, "observed": 0.12}], "t"))
    assert "<script>" not in html and html.count("&lt;script&gt;") == 4  # outcome, message, model card, monitoring
    assert "<svg" in html and "<td>1.23</td>" in html and "<td>Excluded: no follow-up</td>" in html
    assert "Intercept -2 (95 % CI -3 to -1)." in html
