"""`cds-service learn <card> --recalibrate`: propose an update of the deployed site model
from the patients it has scored since its deployment (the monitor's cohort), keeping its
predictors and their relative weights:

- logistic: logit p = a + b * lp_deployed -> coefficients b * beta, intercept a + b * beta0;
- Cox: h(t) = h0*(t) exp(b * (lp_deployed - lp_reference)) -> coefficients b * beta, a new
  baseline survival at the reference (Breslow) at the horizons within the follow-up.

It writes a new overlay entry (`<card>.recalibrated.overlay.toml`, version
`<deployed version>-recal-<date>`) with its own report (`<card>.recalibrated.report.json` and
`.html`: the model card carried over, the recalibration, the cohort and performance on these
patients), never the deployed overlay. It is deployed only by a person: the report has no
approval until `cds-service approve`, and the service does not start with an unapproved one.
Too few events (the definition's [monitoring] min_events) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cds_service.content.model_report import ModelReport, build_report
from cds_service.learning import fit as fitting
from cds_service.learning import report as reporting
from cds_service.learning.monitor import MonitorError, MonitorOptions, horizon_of, recent_cohort, scores

CALIBRATION_GROUPS = 10


@dataclass(frozen=True)
class Recalibrated:
    status: str  # passed | refused
    message: str
    report: ModelReport
    report_json: Path
    overlay: Path | None


def recalibrate(options: MonitorOptions, out_dir: Path, auth=None) -> Recalibrated:
    recent = recent_cohort(options, auth)
    site, definition, rows, old = recent.site, recent.definition, recent.rows, recent.report
    s = scores(site, definition, rows)
    events = int(s["outcome"].sum())
    now = datetime.now(UTC)
    card = recent.card.id
    version = f"{site.version}-recal-{now:%Y-%m-%d}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / f"{card}.recalibrated.report.json", out / f"{card}.recalibrated.report.html"
    overlay_path = out / f"{card}.recalibrated.overlay.toml"
    data = old.model_dump(mode="json")
    days = [r.index_day for r in rows]
    data.update(
        {
            "model": {**data["model"], "label": site.label, "version": version},
            "model_card": {
                **data["model_card"],
                "data_range": {
                    "first_index": min(days).isoformat() if days else None,
                    "last_index": max(days).isoformat() if days else None,
                },
            },
            "provenance": {
                "fhir_server": options.fhir_base,
                "generated_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "extraction_started": None,
                "extraction": recent.extraction,
                "versions": data["provenance"]["versions"],
                "timings_s": {},
            },
            "counts": {"included": len(rows), "events": events},
            "follow_up": None,
            "minimums": {"sample_size_rule": None, "checks": [], "passed": None},
            "subgroups": [],
            "approval": None,
            "monitoring": [],
            "files": {"report_json": json_path.name, "report_html": html_path.name, "overlay": overlay_path.name},
        }
    )
    minimum = definition.monitoring.min_events
    check = {"name": "events since deployment", "value": events, "required": f">= {minimum}"}
    if events < minimum or len(rows) - events < 2:
        data.update(
            status="refused",
            message=f"Refused: {events} events since {recent.since}, fewer than the {minimum} a recalibration needs.",
            coefficients=[],
            intercept=None,
            baseline_survival=None,
            recalibration=None,
            minimums={"sample_size_rule": None, "checks": [{**check, "passed": False}], "passed": False},
        )
        report = build_report(data)
        reporting.write_report_files(report, json_path)
        return Recalibrated("refused", report.message, report, json_path, None)
    beta = np.asarray(site.coefficients, dtype=float)
    try:
        if site.kind == "logistic":
            slope, intercept = _logistic(s)
            coefficients = slope * beta
            new_intercept = intercept + slope * site.intercept
            lp_new = new_intercept + (s["lp"] - site.intercept) * slope
            predicted = 1.0 / (1.0 + np.exp(-lp_new))
            design = fitting.Design(("lp",), lp_new[:, None], s["outcome"], None)
            data["intercept"] = {"estimate": new_intercept}
            data["calibration"] = {
                "horizon": None,
                "groups": fitting.calibration_groups(predicted, design, None, CALIBRATION_GROUPS),
            }
            c = fitting.auc(s["outcome"], lp_new)
        else:
            slope, at, intercept = _cox(s, site, definition)
            coefficients = slope * beta
            horizon = horizon_of(site, definition)
            data["baseline_survival"] = {**data["baseline_survival"], "at": at}
            design = fitting.Design(("lp",), (slope * s["lp"])[:, None], s["outcome"], s["time"])
            s0 = at.get(f"{horizon:g}")
            predicted = 1.0 - np.power(s0, np.exp(slope * s["lp"])) if s0 is not None else None
            data["calibration"] = {
                "horizon": horizon if s0 is not None else None,
                "groups": fitting.calibration_groups(predicted, design, horizon, CALIBRATION_GROUPS)
                if predicted is not None
                else [],
            }
            c = fitting.harrell_c(s["time"], s["outcome"], s["lp"])
    except fitting.FitFailed as exc:
        raise MonitorError(f"the recalibration could not be fitted: {exc}") from None
    data["coefficients"] = [
        {**entry, "estimate": float(value), "se": None, "ci_low": None, "ci_high": None}
        | {"ratio": math.exp(float(value)), "ratio_ci_low": None, "ratio_ci_high": None}
        for entry, value in zip(data["coefficients"], coefficients, strict=True)
    ]
    data["recalibration"] = {"of_version": site.version, "intercept": intercept, "slope": slope, "events": events}
    data["performance"] = {
        "c_statistic_apparent": c,
        "calibration_slope_apparent": 1.0,
        "calibration_intercept_definition": "the recalibration refits them on these patients (apparent)",
    }
    data["minimums"] = {"sample_size_rule": None, "checks": [{**check, "passed": True}], "passed": True}
    data["status"] = "passed"
    data["message"] = (
        f"Recalibrated on {len(rows)} patients ({events} events) scored since {recent.since}: "
        f"intercept {intercept:+.3f}, slope {slope:.3f}. Review it; deploy it only after approving it."
    )
    report = build_report(data)
    reporting.write_report_files(report, json_path)
    overlay_path.write_text(reporting.overlay_text(report), encoding="utf-8")
    return Recalibrated("passed", report.message, report, json_path, overlay_path)


def _logistic(s: dict) -> tuple[float, float]:
    """(slope b, intercept a) of logit y = a + b * lp_deployed."""
    import statsmodels.api as sm

    fitted = fitting._quiet_fit(
        lambda: sm.Logit(s["outcome"], sm.add_constant(s["lp"], has_constant="add")).fit(disp=0)
    )
    return float(fitted.params[1]), float(fitted.params[0])


def _cox(s: dict, site, definition) -> tuple[float, dict, float]:
    """(slope, baseline survival by horizon, log of the baseline hazard ratio new / old at the
    calibration horizon) of a Cox model on the deployed linear predictor."""
    design = fitting.Design(("lp",), s["lp"][:, None], s["outcome"], s["time"])
    model = fitting.fit_cox(design, np.array([0.0]))
    slope = float(model.beta[0])
    follow = float(s["time"].max())
    at = {f"{h:g}": model.baseline_survival(h) for h in definition.outcome.horizons if h <= follow}
    horizon = horizon_of(site, definition)
    old = site.baseline_survival.get(horizon)
    new = at.get(f"{horizon:g}")
    shift = math.log(math.log(new) / math.log(old)) if old and new and 0 < new < 1 and 0 < old < 1 else 0.0
    return slope, at, shift
