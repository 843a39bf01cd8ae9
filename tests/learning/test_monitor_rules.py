"""Issue 20, the monitor without a server: the Cox model's calibration-in-the-large with
censoring (expected events over each patient's own follow-up to the horizon), the verdicts,
and the service's reading of the verdict file."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
from support.learned_reports import RFA_LEARNED

from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import load_cards
from cds_service.learning.cohort import Row
from cds_service.learning.definition import definition_path, load_definition
from cds_service.learning.monitor import baseline_cumhaz, evaluate_model
from cds_service.storage.model_status import ModelStatus

DEFINITION = load_definition(definition_path(DEFAULT_CARDS_DIR, "rfa-recurrence"))[0]
SITE = {c.id: c for c in load_cards(DEFAULT_CARDS_DIR, {"models": {"rfa-recurrence": RFA_LEARNED}})}[
    "rfa-recurrence"
].site_model
SINCE = date(2025, 1, 1)


def _cohort(theta: float, n: int = 1500, seed: int = 4) -> list[Row]:
    """Patients whose true cumulative hazard is theta times the deployed model's (the model's
    H0 between its horizons, the coefficients on the coded predictors), censored uniformly
    over 2 to 18 months."""
    rng = np.random.default_rng(seed)
    h0 = baseline_cumhaz(SITE)
    grid = np.linspace(0, 12, 1201)
    rows = []
    for i in range(n):
        minutes, grade = float(rng.integers(20, 70)), float(rng.integers(1, 5))
        x = np.array([(minutes - 0) / 10, grade - 1]) - np.array([SITE.reference[k] for k in SITE.names])
        relative = float(np.exp(x @ np.asarray(SITE.coefficients)))
        target = rng.exponential()  # event when theta * H(t) reaches an Exp(1) draw
        reached = np.flatnonzero(theta * h0(grid) * relative >= target)
        event_time = grid[reached[0]] if len(reached) else 99.0
        censor = rng.uniform(2.0, 18.0)
        rows.append(
            Row(
                values={"operation_time": minutes, "paralysis_grade_after": grade},
                event=bool(event_time <= censor),
                time=float(min(event_time, censor)),
                index_day=SINCE + timedelta(days=i % 360),
            )
        )
    return rows


def test_a_cox_model_on_its_own_truth_is_kept_with_km_close_to_the_mean_prediction():
    run = evaluate_model(SITE, DEFINITION, _cohort(1.0), SINCE, SINCE + timedelta(days=400))
    oe = run["observed_expected"]
    assert run["status"] == "ok" and not run["drift"]["alarm"], run["reason"]
    assert run["horizon"] == 12 and oe["low"] < 1.0 < oe["high"]
    assert abs(run["observed_risk_km"] - run["mean_predicted_risk"]) < 0.05
    assert run["calibration_slope"]["low"] < 1.0 < run["calibration_slope"]["high"]
    assert [w["start"] for w in run["windows"]][:2] == ["2025-01-01", "2025-04-01"]
    assert sum(w["n"] for w in run["windows"]) == 1500


def test_a_cox_model_whose_hazard_drifted_by_1_5_is_retired_saying_why_in_one_line():
    run = evaluate_model(SITE, DEFINITION, _cohort(1.5), SINCE, SINCE + timedelta(days=400))
    assert run["status"] == "retired" and run["drift"]["alarm"] and run["drift"]["direction"] == "higher"
    assert run["observed_expected"]["low"] > 1.0
    assert run["reason"].startswith(f"{SITE.label} {SITE.version} retired by monitoring on ")
    assert "more events than it predicts since 2025-01-01" in run["reason"] and "\n" not in run["reason"]


def test_too_few_events_gives_no_verdict_and_keeps_the_model():
    rows = _cohort(1.0, n=15)  # at most 15 events, fewer than the 20 the definition needs
    run = evaluate_model(SITE, DEFINITION, rows, SINCE, SINCE + timedelta(days=60))
    assert run["status"] == "insufficient" and "fewer than the 20 needed" in run["reason"]


def test_the_service_ignores_an_unreadable_verdict_and_one_about_another_model(tmp_path):
    status = ModelStatus(tmp_path)
    assert status.retired("rfa-recurrence", "L", "1") is None  # no file
    (tmp_path / "monitoring").mkdir()
    path = tmp_path / "monitoring" / "rfa-recurrence.json"
    path.write_text("{not json", encoding="utf-8")
    assert status.retired("rfa-recurrence", "L", "1") is None
    verdict = {"model": {"label": "L", "version": "1"}, "status": "retired", "reason": "L 1 retired: why."}
    path.write_text(json.dumps(verdict), encoding="utf-8")
    assert status.retired("rfa-recurrence", "L", "1") == "L 1 retired: why."
    assert status.retired("rfa-recurrence", "L", "2") is None  # a newer model is deployed
