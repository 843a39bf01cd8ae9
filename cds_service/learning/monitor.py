"""`cds-service monitor <card>`: how the deployed site model does on the patients it has
scored since it was deployed.

1. The deployed model is the site overlay's learned model for the card (its report names
   the approval date: the deployment); `--since` overrides.
2. The outcomes are extracted as `learn` does (Bulk Data, Group or system level, the same
   access), with `_since` = the deployment date minus the definition's look-back (a
   patient's predictors are recorded before the index), and derived by the learning
   cohort code: the predictors as they were at the decision time (the values the card
   scored), the outcome as the definition says. Patients indexed before the deployment are
   left out.
3. Scored with the deployed model: calibration-in-the-large (observed / expected events
   with the exact Poisson interval; Cox: expected = the model's cumulative hazard over each
   patient's own follow-up up to the horizon, so censoring is respected, and the
   Kaplan-Meier risk at the horizon next to the mean predicted risk), the calibration slope
   and the C-statistic, overall and by time window; and the sequential drift test
   (learning/drift.py), whose false-alarm rate is the definition's alpha however often the
   monitor runs.
4. The verdict (`ok`, `retired`, `insufficient`) is appended to the model's report and
   written to the instance folder (`monitoring/<card>.json`), which the service reads: a
   retired model's estimate is no longer shown, until another model is deployed.
"""

from __future__ import annotations

import json
import os
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np

from cds_service.content.model_report import ModelReport, build_report
from cds_service.content.site_models import SiteModel, attach_site_models
from cds_service.fhir.bulk import BulkClient, BulkError
from cds_service.learning import fit as fitting
from cds_service.learning.cohort import Row, derive_rows
from cds_service.learning.definition import LearningDefinition
from cds_service.learning.drift import drift_test
from cds_service.learning.report import ReportFileError, read_report_file, write_report_files
from cds_service.learning.run import LearnError, LearnOptions, prepare
from cds_service.learning.staging import Staging, line_decoding
from cds_service.storage.model_status import verdict_path


class MonitorError(LearnError):
    """The monitor cannot run (configuration, server). `reason` is safe to show."""


@dataclass(frozen=True)
class MonitorOptions:
    card_id: str
    cards_dir: Path
    fhir_base: str
    site_overlay: Path
    instance_dir: Path
    group: str | None = None
    since: date | None = None  # default: the report's approval date
    max_wait_s: float = 3600.0
    poll_initial_s: float = 0.5
    prefer_bulk: bool = True
    staging_dir: Path | None = None
    today: date | None = None
    site_name: str | None = None  # a multi-site deployment: the site whose model this is


@dataclass(frozen=True)
class MonitorResult:
    status: str  # ok | retired | insufficient
    reason: str
    run: dict
    report_json: Path
    status_file: Path


# ---------------------------------------------------------------------------- the run
def monitor(options: MonitorOptions, auth=None) -> MonitorResult:
    recent = recent_cohort(options, auth)
    run = evaluate_model(recent.site, recent.definition, recent.rows, recent.since, recent.today)
    run["run_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    run["extraction"] = recent.extraction
    data = recent.report.model_dump(mode="json")
    extended = build_report({**data, "monitoring": [*data["monitoring"], run]})
    write_report_files(extended, recent.report_path)
    status_file = write_status(
        options.instance_dir,
        recent.card.id,
        recent.site,
        extended.monitoring[-1].model_dump(mode="json"),
        options.site_name,
    )
    return MonitorResult(run["status"], run["reason"], run, recent.report_path, status_file)


@dataclass(frozen=True)
class RecentCohort:
    """The deployed model and the patients it has scored since its deployment."""

    definition: LearningDefinition
    card: object
    site: SiteModel
    report: ModelReport
    report_path: Path
    since: date
    today: date
    rows: list[Row]  # indexed on or after `since`, in index order
    extraction: dict


def recent_cohort(options: MonitorOptions, auth=None) -> RecentCohort:
    definition, _sha, card, concepts, _path = prepare(
        LearnOptions(
            options.card_id, options.cards_dir, options.fhir_base, Path("."), site_overlay=options.site_overlay
        )
    )
    site, report, report_path = _deployed(options, card)
    since = options.since or _approval_day(report)
    today = options.today or datetime.now(UTC).date()
    export_since = f"{since - timedelta(days=definition.monitoring.lookback_days)}T00:00:00Z"
    client = BulkClient(
        options.fhir_base,
        auth.authorization if auth is not None else None,
        on_unauthorized=getattr(auth, "invalidate", None),
        decoding=line_decoding(),  # each exported line decoded once, into what staging keeps
        max_wait_s=options.max_wait_s,
        poll_initial_s=options.poll_initial_s,
    )
    staging = Staging(options.staging_dir)
    try:
        try:
            extraction = client.extract(
                definition.resource_types, options.group, options.prefer_bulk, since=export_since
            )
            for resource in extraction.resources:
                staging.add(resource)
        except BulkError as exc:
            raise MonitorError(f"extraction failed: {exc.reason}") from None
        rows, _counts = derive_rows(staging.patients(), definition, concepts, today)
    finally:
        staging.close()
    recent = sorted((r for r in rows if r.index_day is not None and r.index_day >= since), key=lambda r: r.index_day)
    info = {**extraction.provenance(), "since": export_since}
    return RecentCohort(definition, card, site, report, report_path, since, today, recent, info)


def _deployed(options: MonitorOptions, card) -> tuple[SiteModel, ModelReport, Path]:
    try:
        overlay = tomllib.loads(Path(options.site_overlay).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MonitorError(f"site overlay {options.site_overlay}: {exc}") from None
    if card.id not in (overlay.get("models") or {}):
        raise MonitorError(f"site overlay {options.site_overlay}: no deployed model for {card.id} ([models.{card.id}])")
    (with_model,) = attach_site_models(
        [card], {"models": {card.id: overlay["models"][card.id]}}, Path(options.site_overlay).parent
    )
    site = with_model.site_model
    if site.learned is None:
        raise MonitorError(f"[models.{card.id}] names no report (report = ...): only a learned model can be monitored")
    path = Path(site.learned.report_path)
    try:
        return site, read_report_file(path), path
    except ReportFileError as exc:
        raise MonitorError(exc.reason) from None


def _approval_day(report: ModelReport) -> date:
    if report.approval is None:
        raise MonitorError("the model's report has no approval (deployment) date: approve it, or give --since")
    try:
        return date.fromisoformat(report.approval.approved_at[:10])
    except ValueError:
        raise MonitorError(f"the approval date {report.approval.approved_at!r} is not a date: give --since") from None


# ---------------------------------------------------------------------------- scoring and judging
def scores(site: SiteModel, definition: LearningDefinition, rows: list[Row]) -> dict[str, np.ndarray]:
    """The deployed model on the rows: linear predictor, and outcome / expected per patient
    (Cox: events and expected events up to the horizon; logistic: outcome and risk)."""
    x = np.array(
        [[site.coding[n].code(r.values[n]) if n in site.coding else r.values[n] for n in site.names] for r in rows],
        dtype=float,
    ).reshape(len(rows), len(site.names))
    beta = np.asarray(site.coefficients, dtype=float)
    event = np.array([1.0 if r.event else 0.0 for r in rows])
    if site.kind == "logistic":
        lp = site.intercept + x @ beta
        return {"lp": lp, "outcome": event, "expected": 1.0 / (1.0 + np.exp(-lp))}
    horizon = horizon_of(site, definition)
    reference = np.array([site.reference[n] for n in site.names], dtype=float)
    lp = x @ beta - reference @ beta
    time = np.minimum(np.array([r.time for r in rows], dtype=float), horizon)
    outcome = event * (np.array([r.time for r in rows], dtype=float) <= horizon)
    h0 = baseline_cumhaz(site)
    return {
        "lp": lp,
        "outcome": outcome,
        "expected": h0(time) * np.exp(lp),
        "time": time,
        "risk": 1.0 - np.exp(-h0(np.full(len(rows), horizon)) * np.exp(lp)),
    }


def horizon_of(site: SiteModel, definition: LearningDefinition) -> float:
    wanted = definition.validation.calibration_horizon
    return wanted if wanted in site.baseline_survival else max(site.baseline_survival)


def baseline_cumhaz(site: SiteModel):
    """H0(t) from the overlay's S0 at its horizons: -ln S0, linear between horizons (0 at 0)."""
    times = np.array([0.0, *site.baseline_survival.keys()])
    values = np.array([0.0, *(-np.log(s) for s in site.baseline_survival.values())])
    return lambda t: np.interp(t, times, values)


def evaluate_model(site: SiteModel, definition: LearningDefinition, rows: list[Row], since: date, today: date) -> dict:
    m = definition.monitoring
    s = scores(site, definition, rows)
    events = int(s["outcome"].sum())
    expected = float(s["expected"].sum())
    run: dict = {
        "since": since.isoformat(),
        "horizon": horizon_of(site, definition) if site.kind == "cox" else None,
        "n": len(rows),
        "events": events,
        "expected": expected,
        "observed_expected": fitting.observed_expected(events, expected) if rows else None,
    }
    if site.kind == "cox" and rows:
        run["observed_risk_km"] = fitting.kaplan_meier_risk(s["time"], s["outcome"], run["horizon"])
        run["mean_predicted_risk"] = float(s["risk"].mean())
    run["c_statistic"], run["calibration_slope"] = _discrimination(site.kind, s, events, len(rows))
    run["windows"] = _windows(site.kind, rows, s, since, today, m.window_days)
    drift = drift_test(site.kind, s["outcome"], s["expected"], m.alpha, m.mixture_sd)
    run["drift"] = {
        "method": f"mixture SPRT on observed / expected (normal prior on log O/E, sd {m.mixture_sd:g}; Ville's bound)",
        "alpha": m.alpha,
        "statistic": drift.statistic,
        "threshold": drift.threshold,
        "alarm": drift.alarm,
        "direction": drift.direction,
        "events_at_alarm": int(s["outcome"][: drift.at + 1].sum()) if drift.at is not None else None,
    }
    run["status"], run["reason"] = _verdict(site, run, m)
    return run


def _discrimination(kind: str, s: dict, events: int, n: int) -> tuple[float | None, dict | None]:
    if events < 2 or n - events < 2:
        return None, None
    if kind == "cox":
        c = fitting.harrell_c(s["time"], s["outcome"], s["lp"])
    else:
        c = fitting.auc(s["outcome"], s["lp"])
    try:
        slope = fitting.calibration_slope_interval(kind, s["lp"], s["outcome"], s.get("time"))
    except fitting.FitFailed:
        slope = None
    return c, slope


def _windows(kind: str, rows: list[Row], s: dict, since: date, today: date, days: int) -> list[dict]:
    out = []
    start = since
    index = np.array([r.index_day.toordinal() for r in rows])
    while start <= today:
        end = min(start + timedelta(days=days - 1), today)
        mask = (index >= start.toordinal()) & (index <= end.toordinal())
        n, events = int(mask.sum()), int(s["outcome"][mask].sum())
        expected = float(s["expected"][mask].sum())
        window = {"start": start.isoformat(), "end": end.isoformat(), "n": n, "events": events, "expected": expected}
        if n:
            window["observed_expected"] = fitting.observed_expected(events, expected)
            if events >= 2 and n - events >= 2:
                sub = {k: v[mask] for k, v in s.items()}
                window["c_statistic"] = (
                    fitting.harrell_c(sub["time"], sub["outcome"], sub["lp"])
                    if kind == "cox"
                    else fitting.auc(sub["outcome"], sub["lp"])
                )
        else:
            window["note"] = "no patients scored"
        out.append(window)
        start = end + timedelta(days=1)
    return out


def _verdict(site: SiteModel, run: dict, m) -> tuple[str, str]:
    name = f"{site.label} {site.version}"
    oe = run["observed_expected"]
    oe_text = (
        f"observed / expected {oe['estimate']:.2f} ({oe['low']:.2f} to {oe['high']:.2f}; {run['events']} events)"
        if oe and oe.get("estimate") is not None
        else f"{run['events']} events"
    )
    drift = run["drift"]
    if drift["alarm"]:
        more = "more" if drift["direction"] == "higher" else "fewer"
        return "retired", (
            f"{name} retired by monitoring on {datetime.now(UTC).date()}: {more} events than it predicts since "
            f"{run['since']}, {oe_text}; drift test alarm (false-alarm rate {drift['alpha']:g})."
        )
    slope, c = run["calibration_slope"], run["c_statistic"]
    if run["events"] >= m.min_events:
        if slope and slope.get("high") is not None and slope["high"] < m.min_calibration_slope:
            return "retired", (
                f"{name} retired by monitoring: calibration slope {slope['estimate']:.2f} (upper 95 % bound "
                f"{slope['high']:.2f}) below {m.min_calibration_slope:g} since {run['since']}."
            )
        interval = fitting.c_interval(c, run["events"], run["n"] - run["events"]) if c is not None else None
        if interval and interval["high"] is not None and interval["high"] < m.min_c_statistic:
            return "retired", (
                f"{name} retired by monitoring: C-statistic {c:.2f} (upper 95 % bound {interval['high']:.2f}) "
                f"below {m.min_c_statistic:g} since {run['since']}."
            )
        return "ok", f"{name}: {oe_text} since {run['since']}; no drift alarm."
    return "insufficient", (
        f"{name}: {run['events']} events since {run['since']}, fewer than the {m.min_events} needed for a verdict "
        f"on slope and discrimination; no drift alarm."
    )


# ---------------------------------------------------------------------------- the service's status file
def write_status(instance_dir: Path, card_id: str, site: SiteModel, run: dict, site_name: str | None = None) -> Path:
    """The verdict for the service, replaced atomically (a reader never sees half a file)."""
    path = verdict_path(instance_dir, card_id, site_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "card": card_id,
        "model": {"label": site.label, "version": site.version},
        "status": run["status"],
        "reason": run["reason"],
        "run_at": run["run_at"],
        "observed_expected": (run.get("observed_expected") or {}).get("estimate"),
        "drift_statistic": run["drift"]["statistic"],
        "events": run["events"],
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{card_id}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(body, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
