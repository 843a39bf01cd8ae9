"""`cds-service learn <card>`: extract the cohort, derive the analysis rows, check the
minimum sample size, fit, validate, and write the model report and the site-overlay entry.

Order and guarantees:
1. The definition, card and concepts are checked before any data is read.
2. The extraction is streamed into an on-disk staging file (deleted at the end, whatever
   happens) and read back one patient at a time.
3. The minimum-sample-size rule of the definition is checked before fitting: a cohort that
   fails it is refused (report written, no model, no overlay) with the rule named.
4. The fitted model is validated (bootstrap); the report says whether it meets the
   definition's validation minimums (status `passed` / `failed`). The overlay entry is
   written either way, marked with the status; the report decides deployment.
"""

from __future__ import annotations

import itertools
import math
import platform
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from cds_service.content.cards import CardContent, load_cards
from cds_service.content.model_report import build_report
from cds_service.fhir.bulk import BulkClient, BulkError
from cds_service.formatting import significant
from cds_service.learning import fit as fitting
from cds_service.learning import report as reporting
from cds_service.learning.cohort import CohortCounts, Row, derive_rows
from cds_service.learning.definition import (
    DefinitionError,
    LearningDefinition,
    definition_path,
    load_definition,
)
from cds_service.learning.staging import Staging, line_decoding
from cds_service.terminology.concepts_file import load_concepts

CALIBRATION_GROUPS = 10
DAYS_UNIT = {"index_duration": "min", "disease_duration_at_index": "years"}


class LearnError(Exception):
    """The learning run cannot proceed (configuration, server). `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class LearnOptions:
    card_id: str
    cards_dir: Path
    fhir_base: str
    out_dir: Path
    group: str | None = None
    site_overlay: Path | None = None
    model_label: str | None = None
    model_version: str | None = None
    bootstrap: int | None = None  # None: the definition's
    seed: int = 20251126
    max_wait_s: float = 3600.0
    poll_initial_s: float = 0.5
    prefer_bulk: bool = True
    staging_dir: Path | None = None


@dataclass(frozen=True)
class LearnResult:
    status: str  # passed | failed | refused
    message: str
    report: dict
    report_json: Path
    report_html: Path
    overlay: Path | None


def learn(options: LearnOptions, auth=None) -> LearnResult:
    """`auth`: an object with authorization() (and optionally invalidate()), or None."""
    started = _now()
    definition, sha256, card, concepts, def_path = prepare(options)
    client = BulkClient(
        options.fhir_base,
        auth.authorization if auth is not None else None,
        on_unauthorized=getattr(auth, "invalidate", None),
        decoding=line_decoding(),  # each exported line decoded once, into what staging keeps
        max_wait_s=options.max_wait_s,
        poll_initial_s=options.poll_initial_s,
    )
    today = datetime.now(UTC).date()
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    staging = Staging(options.staging_dir)
    try:
        try:
            extraction = client.extract(definition.resource_types, options.group, options.prefer_bulk)
            for resource in extraction.resources:
                staging.add(resource)
        except BulkError as exc:
            raise LearnError(f"extraction failed: {exc.reason}") from None
        timings["extraction"] = time.perf_counter() - clock
        rows, counts = derive_rows(staging.patients(), definition, concepts, today)
        timings["derivation"] = time.perf_counter() - clock - timings["extraction"]
    finally:
        staging.close()
    base = {
        "format": reporting.REPORT_FORMAT,
        "card": {"id": card.id, "version": card.version},
        "definition": {
            "path": _shown_path(def_path, options.cards_dir),
            "version": definition.version,
            "sha256": sha256,
        },
        "model": {
            "kind": definition.kind,
            "outcome": definition.outcome_label,
            "time_unit": definition.outcome.time_unit,
            "label": options.model_label or f"Site-learned {card.id} model",
            "version": options.model_version or started[:10],
        },
        "model_card": _model_card(definition, card, concepts, rows),
        "provenance": {
            "fhir_server": options.fhir_base,
            "extraction_started": started,
            "extraction": extraction.provenance(),
            "versions": _versions(),
            "timings_s": timings,
        },
    }
    clock = time.perf_counter()
    result = _analyse(base, rows, counts, definition, card, concepts, options)
    timings["fit_and_validation"] = time.perf_counter() - clock
    result.report_json.write_text(reporting.report_json(result.report), encoding="utf-8")
    return result


# ---------------------------------------------------------------------------- the model card
READ_WORDS = {
    "index_duration": "the duration of the index procedure (performedPeriod, else an {concept} Observation of its day)",
    "observation_after_index": "the latest {concept} recorded after the index procedure, up to the decision time",
    "observation_before_index": "the latest {concept} recorded before the index procedure",
    "disease_duration_at_index": "years from the first recorded onset of {concept} to the index procedure",
    "condition_at_index": "{concept} present on the index day (recorded before it and not abated)",
    "medication_at_index": "{concept} in use on the index day",
    "sex_male": "Patient.gender male (other or unknown: missing)",
}


def _model_card(definition: LearningDefinition, card, concepts, rows: list[Row]) -> dict:
    text = definition.model_card
    units = {p.id: _unit(p, concepts) for p in definition.predictors}
    o = definition.outcome
    if definition.kind == "cox":
        parts = []
        if o.condition:
            parts.append(f"{o.condition} recorded as {' or '.join(o.condition_statuses)} after the index")
        if o.procedures:
            parts.append(f"a completed {', '.join(o.procedures)} after the index")
        outcome = (
            f"{definition.outcome_label}: {'; or '.join(parts)}; whichever comes first; time in "
            f"{o.time_unit} from the index ({definition.index.procedure}); censored at the last recorded contact"
        )
    else:
        outcome = (
            f"{definition.outcome_label}: the first {o.observation} recorded {o.window_days[0]} to "
            f"{o.window_days[1]} days after the index ({definition.index.procedure}) is one of "
            f"{', '.join(o.event_answers)}"
        )
    days = sorted(r.index_day for r in rows if r.index_day is not None)
    return {
        "intended_use": text.intended_use,
        "intended_users": text.intended_users,
        "setting": text.setting,
        "outcome_definition": outcome,
        "predictor_definitions": [
            {
                "id": p.id,
                "label": _card_predictors(card)[p.id].label,
                "definition": READ_WORDS[p.read].format(concept=p.concept or ""),
                "coding": "yes = 1, no = 0" if p.coding is None else _coding_text(p, units[p.id]),
            }
            for p in definition.predictors
        ],
        "missing_inputs": text.missing_inputs,
        "updating_policy": text.updating_policy,
        "data_range": {
            "first_index": days[0].isoformat() if days else None,
            "last_index": days[-1].isoformat() if days else None,
        },
    }


def _subgroups(rows: list[Row], expected: np.ndarray, score: np.ndarray, definition) -> list[dict]:
    """Apparent performance by sex and age band: O/E (with a 95 % interval) and C-statistic
    (Hanley-McNeil interval); "too few events" below the definition's minimum."""
    bands = definition.model_card.age_bands
    minimum = definition.model_card.min_subgroup_events
    event = np.array([1.0 if r.event else 0.0 for r in rows])
    time = np.array([r.time for r in rows], dtype=float) if definition.kind == "cox" else None
    groups: list[tuple[str, str, np.ndarray]] = []
    for sex in ("female", "male"):
        groups.append(("sex", sex, np.array([r.sex == sex for r in rows], dtype=bool)))
    ages = np.array([np.nan if r.age is None else r.age for r in rows], dtype=float)
    edges = [-np.inf, *bands, np.inf]
    for lo, hi in itertools.pairwise(edges):
        label = f"< {hi:g}" if lo == -np.inf else (f">= {lo:g}" if hi == np.inf else f"{lo:g} to < {hi:g}")
        groups.append(("age", label, (ages >= lo) & (ages < hi)))
    out = []
    for by, level, mask in groups:
        n, events = int(mask.sum()), int(event[mask].sum())
        entry = {"by": by, "level": level, "n": n, "events": events}
        limiting = events if definition.kind == "cox" else min(events, n - events)
        if limiting < minimum:
            entry["note"] = f"too few events ({limiting} < {minimum})"
        else:
            entry["observed_expected"] = fitting.observed_expected(events, float(expected[mask].sum()))
            if definition.kind == "cox":
                c = fitting.harrell_c(time[mask], event[mask], score[mask])
            else:
                c = fitting.auc(event[mask], score[mask])
            entry["c_statistic"] = fitting.c_interval(c, events, n - events)
        out.append(entry)
    return out


# ---------------------------------------------------------------------------- preparing
def prepare(options: LearnOptions):
    path = definition_path(options.cards_dir, options.card_id)
    definition, sha256 = load_definition(path)
    if definition.card != options.card_id:
        raise DefinitionError(f"{path}: card = {definition.card!r}, expected {options.card_id!r}")
    overlay = None
    if options.site_overlay is not None:
        try:
            overlay = tomllib.loads(Path(options.site_overlay).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LearnError(f"site overlay {options.site_overlay}: {exc}") from None
    concepts = load_concepts(options.cards_dir, overlay)  # the site's local codes, as at the point of care
    cards = {c.id: c for c in load_cards(options.cards_dir, None, concepts)}
    card = cards.get(options.card_id)
    if card is None:
        raise DefinitionError(f"{path}: no card with id {options.card_id!r} (cards: {sorted(cards)})")
    for concept in sorted(definition.concepts()):
        if concept not in concepts:
            raise DefinitionError(f"{path}: concept {concept!r} is not in concepts.toml")
    for p in definition.predictors:
        if p.id not in _card_predictors(card):
            raise DefinitionError(f"{path}: predictor {p.id!r} is not a predictor of card {card.id}")
    return definition, sha256, card, concepts, path


# ---------------------------------------------------------------------------- analysis
def _analyse(base, rows: list[Row], counts: CohortCounts, definition: LearningDefinition, card, concepts, options):
    names = tuple(p.id for p in definition.predictors)
    events = sum(1 for r in rows if r.event)
    n = len(rows)
    limiting = events if definition.kind == "cox" else min(events, n - events)
    epp = limiting / len(names)
    rule = definition.minimum_sample_size
    checks = [
        _check(
            "events per predictor parameter" + ("" if definition.kind == "cox" else " (the less frequent outcome)"),
            epp,
            f">= {rule.min_events_per_predictor:g}",
            epp >= rule.min_events_per_predictor,
        ),
        _check("events", limiting, f">= {rule.min_events}", limiting >= rule.min_events),
    ]
    if rule.riley_margin is not None and definition.kind == "logistic":
        phi = events / n if n else 0.0
        needed = math.ceil((1.959964 / rule.riley_margin) ** 2 * phi * (1 - phi)) if n else 1
        checks.append(
            _check(
                f"patients for the overall risk within +/- {rule.riley_margin:g} (Riley criterion iii)",
                n,
                f">= {needed}",
                n >= needed and n > 0,
            )
        )
    report = dict(base)
    report["counts"] = {**counts.as_dict(), "events": events, "predictors": len(names), "events_per_predictor": epp}
    if definition.kind == "cox" and counts.follow_up:
        follow = np.asarray(counts.follow_up)
        report["follow_up"] = {
            "unit": definition.outcome.time_unit,
            "median": float(np.median(follow)),
            "max": float(follow.max()),
            "person_time": float(follow.sum()),
        }
    report["minimums"] = {"sample_size_rule": rule.rule, "checks": checks}
    failed = [c for c in checks if not c["passed"]]
    if failed:
        message = (
            f"Refused: the data cannot support this model under the minimum-sample-size rule ({rule.rule}): "
            + "; ".join(f"{c['name']} = {_short(c['value'])}, needs {c['required']}" for c in failed)
            + ". No model was fitted."
        )
        return _write(report, "refused", message, None, options)
    design = _design(rows, definition)
    try:
        model, performance, extra = _fit(design, definition, options, rows, concepts, card)
    except fitting.FitFailed as exc:
        return _write(report, "refused", f"Refused: {exc}. No model was fitted.", None, options)
    report.update(extra)
    report["coefficients"] = _coefficients(model, definition, card, concepts)
    v = definition.validation
    report["performance"] = {
        "c_statistic_apparent": performance.c_apparent,
        "c_statistic_optimism_corrected": performance.c_corrected,
        "calibration_slope_apparent": performance.slope_apparent,
        "calibration_slope_optimism_corrected": performance.slope_corrected,
        "calibration_intercept_apparent": performance.intercept_apparent,
        "calibration_intercept_optimism_corrected": performance.intercept_corrected,
        "calibration_intercept_definition": (
            "ln(observed / expected events)" if definition.kind == "cox" else "calibration-in-the-large, log odds"
        ),
        "bootstrap_resamples": performance.resamples,
        "bootstrap_failed": performance.failed,
    }
    lo, hi = v.calibration_slope
    checks += [
        _check(
            "C-statistic (optimism-corrected)",
            performance.c_corrected,
            f">= {v.min_c_statistic:g}",
            _ge(performance.c_corrected, v.min_c_statistic),
        ),
        _check(
            "calibration slope (optimism-corrected)",
            performance.slope_corrected,
            f"{lo:g} to {hi:g}",
            _ge(performance.slope_corrected, lo) and _ge(hi, performance.slope_corrected),
        ),
    ]
    report["predictor_ranges"] = _ranges(design, rows, definition, concepts)
    failed = [c for c in checks if not c["passed"]]
    if failed:
        status = "failed"
        message = (
            "Fitted, but the model does not meet the validation minimums: "
            + "; ".join(f"{c['name']} = {_short(c['value'])}, needs {c['required']}" for c in failed)
            + ". Do not deploy it."
        )
    else:
        status = "passed"
        message = "Fitted and internally validated; it meets the definition's minimums."
    return _write(report, status, message, model, options)


def _design(rows: list[Row], definition: LearningDefinition) -> fitting.Design:
    columns = []
    for p in definition.predictors:
        raw = np.array([r.values[p.id] for r in rows], dtype=float)
        columns.append(p.coding.code(raw) if p.coding is not None else raw)
    x = np.column_stack(columns) if columns else np.zeros((len(rows), 0))
    event = np.array([1.0 if r.event else 0.0 for r in rows])
    time = np.array([r.time for r in rows], dtype=float) if definition.kind == "cox" else None
    return fitting.Design(tuple(p.id for p in definition.predictors), x, event, time)


def _fit(design: fitting.Design, definition: LearningDefinition, options: LearnOptions, rows, concepts, card):
    resamples = definition.validation.bootstrap if options.bootstrap is None else options.bootstrap
    if definition.kind == "logistic":
        model = fitting.fit_logistic(design)
        performance = fitting.validate_logistic(design, model, resamples, options.seed)
        p = 1.0 / (1.0 + np.exp(-model.lp(design.x)))
        groups = fitting.calibration_groups(p, design, None, CALIBRATION_GROUPS)
        extra = {
            "intercept": {
                "estimate": model.intercept,
                "se": float(model.se[0]),
                "ci_low": float(model.ci[0, 0]),
                "ci_high": float(model.ci[0, 1]),
            },
            "calibration": {"horizon": None, "groups": groups},
            "subgroups": _subgroups(rows, p, model.lp(design.x), definition),
        }
        return model, performance, extra
    reference_raw = {p.id: float(np.median([r.values[p.id] for r in rows])) for p in definition.predictors}
    reference = np.array(
        [
            p.coding.code(reference_raw[p.id]) if p.coding is not None else round(reference_raw[p.id])
            for p in definition.predictors
        ]
    )
    model = fitting.fit_cox(design, reference)
    performance = fitting.validate_cox(design, model, resamples, options.seed)
    max_time = float(design.time.max())
    at = {_horizon_key(h): (model.baseline_survival(h) if h <= max_time else None) for h in definition.outcome.horizons}
    horizon = definition.validation.calibration_horizon
    risk = 1.0 - np.exp(-model.cumhaz(design.x, horizon))
    label = ", ".join(
        f"{_card_predictors(card)[p.id].label} {_short(reference_raw[p.id])}"
        + (f" {_unit(p, concepts)}" if _unit(p, concepts) else "")
        for p in definition.predictors
    )
    extra = {
        "baseline_survival": {
            "reference_label": f"{label} (the training medians)",
            "reference_raw": reference_raw,
            "reference_coded": {n: float(v) for n, v in zip(design.names, reference, strict=True)},
            "at": at,
        },
        "calibration": {
            "horizon": horizon if horizon <= max_time else None,
            "groups": fitting.calibration_groups(risk, design, horizon, CALIBRATION_GROUPS)
            if horizon <= max_time
            else [],
        },
        # expected events over each patient's own follow-up (censoring respected)
        "subgroups": _subgroups(rows, model.cumhaz(design.x, design.time), model.lp(design.x), definition),
    }
    return model, performance, extra


def _coefficients(model, definition: LearningDefinition, card: CardContent, concepts) -> list[dict]:
    units = {p.id: _unit(p, concepts) for p in definition.predictors}
    out = []
    ci = model.ci if definition.kind == "cox" else model.ci[1:]
    se = model.se if definition.kind == "cox" else model.se[1:]
    for i, p in enumerate(definition.predictors):
        published = None
        if p.id in card.model.coefficients:
            published = {"coefficient": card.model.coefficients[p.id], "ratio": math.exp(card.model.coefficients[p.id])}
        elif p.id in card.model.odds_ratios:
            published = {"coefficient": math.log(card.model.odds_ratios[p.id]), "ratio": card.model.odds_ratios[p.id]}
        if published is not None:
            published["source"] = card.source.label
            published["coding"] = "as in the source (not necessarily this coding)"
        beta = float(model.beta[i])
        out.append(
            {
                "predictor": p.id,
                "label": _card_predictors(card)[p.id].label,
                "coding": None if p.coding is None else {"scale": p.coding.scale, "offset": p.coding.offset},
                "coding_text": "yes = 1, no = 0" if p.coding is None else _coding_text(p, units.get(p.id)),
                "estimate": beta,
                "se": float(se[i]),
                "ci_low": float(ci[i, 0]),
                "ci_high": float(ci[i, 1]),
                "ratio": math.exp(beta),
                "ratio_ci_low": math.exp(float(ci[i, 0])),
                "ratio_ci_high": math.exp(float(ci[i, 1])),
                "published": published,
            }
        )
    return out


def _ranges(design: fitting.Design, rows: list[Row], definition: LearningDefinition, concepts) -> dict:
    out = {}
    for p in definition.predictors:
        values = np.array([r.values[p.id] for r in rows], dtype=float)
        if p.binary:
            out[p.id] = {"n": len(values), "present": int(values.sum()), "prevalence": float(values.mean())}
        else:
            out[p.id] = {
                "n": len(values),
                "min": float(values.min()),
                "max": float(values.max()),
                "p05": float(np.percentile(values, 5)),
                "p95": float(np.percentile(values, 95)),
                "unit": _unit(p, concepts),
                "coded_min": float(p.coding.code(values.min())),
                "coded_max": float(p.coding.code(values.max())),
            }
    return out


# ---------------------------------------------------------------------------- writing
def _write(report: dict, status: str, message: str, model, options: LearnOptions) -> LearnResult:
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    card = report["card"]["id"]
    json_path = out / f"{card}.report.json"
    html_path = out / f"{card}.report.html"
    overlay_path = out / f"{card}.overlay.toml" if model is not None else None
    report["status"] = status
    report["message"] = message
    report["minimums"]["passed"] = all(c["passed"] for c in report["minimums"]["checks"])
    report["provenance"]["generated_at"] = _now()
    report["files"] = {
        "report_json": json_path.name,
        "report_html": html_path.name,
        "overlay": overlay_path.name if overlay_path else None,
    }
    validated = build_report(report)  # the one format: what the reader would refuse is not written
    report = validated.model_dump(mode="json")
    svg = None
    if report["calibration"]["groups"]:
        svg = reporting.calibration_svg(report["calibration"]["groups"], f"Calibration of the {card} model")
    json_path.write_text(validated.to_json(), encoding="utf-8")
    html_path.write_text(reporting.report_html(validated, svg), encoding="utf-8")
    if overlay_path is not None:
        overlay_path.write_text(reporting.overlay_text(validated), encoding="utf-8")
    return LearnResult(status, message, report, json_path, html_path, overlay_path)


# ---------------------------------------------------------------------------- small helpers
def _check(name: str, value, required: str, passed: bool) -> dict:
    return {"name": name, "value": value, "required": required, "passed": bool(passed)}


def _ge(a: float, b: float) -> bool:
    return a is not None and not (isinstance(a, float) and math.isnan(a)) and a >= b


def _short(value) -> str:
    return significant(value)


def _horizon_key(h: float) -> str:
    return f"{h:g}"


def _unit(p, concepts) -> str | None:
    if p.read in DAYS_UNIT:
        return DAYS_UNIT[p.read]
    if p.concept and p.concept in concepts:
        spec = concepts.concept(p.concept).value
        if spec is not None and spec.unit and not spec.unit.startswith("{") and spec.unit != "1":
            return spec.unit
    return None


def _coding_text(p, unit: str | None) -> str:
    u = f" {unit}" if unit else ""
    text = f"per {p.coding.scale:g}{u}"
    return text + (f" above {p.coding.offset:g}{u}" if p.coding.offset else "")


def _card_predictors(card) -> dict:
    """The card's predictors by id. The card format is changing from a dict of predictors to
    a list with `predictor_by_id`; this reads either, so the learner follows the merge."""
    by_id = getattr(card, "predictor_by_id", None)
    return by_id if by_id is not None else card.predictors


def _shown_path(path: Path, cards_dir: Path) -> str:
    """The definition's path from the cards folder's parent ("cards/learning/x.toml")."""
    try:
        return str(Path(path).resolve().relative_to(Path(cards_dir).resolve().parent))
    except ValueError:
        return Path(path).name


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("hfs-cds-service", "lifelines", "statsmodels", "numpy", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions
