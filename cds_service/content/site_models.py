"""The site overlay's models: a complete model a deployment supplies for a card.

Site overlay (TOML; path from the `site_overlay` setting). Besides `[concepts.*]` (local
codes, read by terminology/concepts_file.py), it may give a complete model for a card:

    [models.rfa-recurrence]                  # the card id
    label = "Example Hospital RFA recurrence model"
    version = "2025.1"
    reference_label = "operation time 20-29 min, House-Brackmann grade I"   # Cox
    coefficients = { operation_time = -0.619, paralysis_grade_after = -2.589 }  # optional
    intercept = -2.4                         # logistic only
    [models.rfa-recurrence.coding.operation_time]
    scale = 10                               # X = (value - offset) / scale, value in the
    offset = 0                               # predictor's unit; or cutoffs = [30, 60]:
                                             # X = number of cut-offs <= value
    [models.rfa-recurrence.reference]        # Cox: reference covariates, coded units
    operation_time = 2
    paralysis_grade_after = 1
    [models.rfa-recurrence.baseline_survival]   # Cox: S0(t) at the reference, by horizon
    "3" = 0.85                                  # in the card's time unit (months)
    "12" = 0.40

A model learned by `cds-service learn` names its report: `report = "rfa-recurrence.report.json"`
(a path relative to the overlay file). Its summary (status, patients, events, optimism-
corrected C-statistic and calibration slope, when and from which server, the predictor
ranges, the calibration groups) is loaded into the SiteModel (`learned`); the report must
be about this card and give the overlay's coefficients. Without `report` the model is
"site-configured" (typed by hand), as before. Start-up refuses a learned model whose
report did not pass (check_learned_models), unless `allow_unvalidated_site_models`.

Without `coefficients` the published ones are used (Cox coefficients; ln(OR) for a
logistic model). Every numeric predictor a site model uses needs a coding; yes/no
predictors are coded 1 / 0. The format is declared once below (SiteModelFile); what it
must agree with in the card is checked with the card as validation context.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, cast
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, model_validator

from cds_service.config import ConfigError
from cds_service.content.cards import CardContent, Number, Table, Text
from cds_service.content.errors import ContentError, content_error
from cds_service.content.model_report import ModelReport, MonitorRun, ReportCheck, ReportGroup, ReportRange
from cds_service.formatting import significant, toml_number


def _version_text(value: object) -> object:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# ---------------------------------------------------------------------------- the format
class CodingFile(Table):
    scale: Number | None = None
    offset: Number | None = None
    cutoffs: list[Number] | None = None

    @model_validator(mode="after")
    def _one_coding(self) -> CodingFile:
        if self.cutoffs is not None:
            if self.scale is not None or self.offset is not None:
                raise ValueError("give either cutoffs or scale/offset")
            if not self.cutoffs or self.cutoffs != sorted(set(self.cutoffs)):
                raise ValueError("cutoffs must be increasing numbers")
        elif self.scale is None:
            raise ValueError("give scale (and optionally offset) or cutoffs")
        elif self.scale <= 0:
            raise ValueError("scale must be positive")
        return self


class SiteModelFile(Table):
    """[models.<card id>] of the site overlay."""

    label: Text
    version: Annotated[Text, BeforeValidator(_version_text)]
    coefficients: dict[str, Number] = Field(default_factory=dict)
    intercept: Number | None = None
    coding: dict[str, CodingFile] = Field(default_factory=dict)
    reference: dict[str, Number] | None = None
    reference_label: Text | None = None
    baseline_survival: dict[str, Number] = Field(default_factory=dict)
    report: Text | None = None  # a learned model's report (JSON), relative to the overlay file

    @model_validator(mode="after")
    def _fits_the_card(self, info: ValidationInfo) -> SiteModelFile:
        card: CardContent = cast(dict[str, Any], info.context)["card"]  # site_model_from_data passes it
        kind = card.model.site_kind
        if kind is None:
            raise ValueError(f"card {card.id} is evidence-only; it has no model a site can parameterise")
        if card.model.kind == "evidence" and set(self.coefficients) != set(card.model.predictor_ids):
            raise ValueError(
                f"coefficients: card {card.id} publishes none, so give one for each of "
                f"{list(card.model.predictor_ids)} (its [model] site_predictors)"
            )
        if not any(s.use_model for s in card.situations):
            raise ValueError(f"no situation of card {card.id} uses a model")
        names = self.names(card)
        model_situations = [s for s in card.situations if s.use_model]
        for name in names:
            if name not in card.predictor_by_id:
                raise ValueError(
                    f"coefficients: {name!r} is not a predictor of card {card.id} "
                    f"(predictors: {sorted(card.predictor_by_id)})"
                )
            if not all(name in s.predictors for s in model_situations):
                raise ValueError(f"coefficients: predictor {name!r} is not read where the model is used")
            if card.predictor(name).derive == "intraoperative":
                raise ValueError(f"coefficients: {name!r} is only known during surgery")
        for name in self.coding:
            if name not in names:
                raise ValueError(f"coding: {name!r} is not a predictor of the model ({list(names)})")
        for name in names:
            if card.predictor(name).binary:
                if name in self.coding:
                    raise ValueError(f"coding.{name}: a yes/no predictor is coded 1 / 0; remove its coding")
            elif name not in self.coding:
                raise ValueError(
                    f"numeric predictor {name!r} needs a coding (scale/offset or cutoffs): "
                    f"the published coding is unknown and is never guessed"
                )
        if kind == "logistic":
            for key in ("reference", "baseline_survival", "reference_label"):
                if key in self.model_fields_set:
                    raise ValueError(f"{key} applies to a Cox model only")
            return self
        if self.intercept is not None:
            raise ValueError("a Cox model has no intercept (give baseline_survival instead)")
        if set(self.reference or {}) != set(names):
            raise ValueError(f"reference must give a coded value for each of {list(names)}")
        if self.reference_label is None:
            raise ValueError("reference_label must describe the reference profile in words")
        for horizon, survival in self.baseline_survival.items():
            try:
                h = float(horizon)
            except ValueError:
                raise ValueError(
                    f"baseline_survival: horizon {horizon!r} must be a number ({card.model.time_unit})"
                ) from None
            if h <= 0 or not 0 < survival <= 1:
                raise ValueError(f"baseline_survival: S0({horizon}) must be in (0, 1] at a positive horizon")
        return self

    def names(self, card: CardContent) -> tuple[str, ...]:
        return tuple(self.coefficients) or card.model.predictor_ids


# ---------------------------------------------------------------------------- a learned model's report
@dataclass(frozen=True)
class LearnedFrom:
    """The summary of a learned model's report that the card and the evidence page show."""

    report_path: str
    status: str  # passed | failed | refused
    failed_checks: tuple[str, ...]  # "name = value, needs required" of each minimum not met
    patients: int
    events: int
    c_statistic: float | None  # optimism-corrected
    calibration_slope: float | None  # optimism-corrected
    generated_at: str
    fhir_host: str  # the FHIR server's host only (no path, user or query)
    ranges: dict[str, ReportRange]
    calibration_horizon: float | None = None
    calibration_groups: tuple[ReportGroup, ...] = ()
    approved_by: str | None = None  # the person who approved deployment (`cds-service approve`)
    monitoring: MonitorRun | None = None  # the latest `cds-service monitor` run in the report

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def deployable(self) -> bool:
        """Passed its minimums and approved by a person."""
        return self.passed and bool(self.approved_by)


def _check_words(c: ReportCheck) -> str:
    return f"{c.name} = {significant(c.value)}, needs {c.required}"


def read_report(
    path: Path, card: CardContent, names: tuple[str, ...], coefficients: tuple[float, ...], intercept: float | None
) -> LearnedFrom:
    """The report's summary; ContentError when it cannot be read, is about another card, or
    does not give the overlay's coefficients (then it does not describe this model)."""
    where = f"site overlay [models.{card.id}] report {path}"
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ContentError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContentError(f"{where}: not valid JSON ({exc})") from None
    try:
        report = ModelReport.model_validate(raw)
    except ValidationError as exc:
        raise content_error(exc, where, raw) from None
    if report.card.id != card.id:
        raise ContentError(f"{where}: the report is about card {report.card.id!r}, not {card.id!r}")
    if report.status == "refused":
        raise ContentError(f"{where}: the report says no model was fitted ({report.message})")
    learned = {c.predictor: c.estimate for c in report.coefficients}
    for name, value in zip(names, coefficients, strict=True):
        if name not in learned or not math.isclose(learned[name], value, rel_tol=1e-5, abs_tol=1e-6):
            raise ContentError(
                f"{where}: coefficient {name!r} of the overlay ({value}) is not the report's "
                f"({learned.get(name, 'none')}): the report does not describe this model"
            )
    if intercept is not None and (
        report.intercept is None or not math.isclose(report.intercept.estimate, intercept, rel_tol=1e-5, abs_tol=1e-6)
    ):
        raise ContentError(
            f"{where}: the overlay's intercept is not the report's: the report does not describe this model"
        )
    server = urlsplit(report.provenance.fhir_server)
    return LearnedFrom(
        report_path=str(path),
        status=report.status,
        failed_checks=tuple(_check_words(c) for c in report.minimums.checks if not c.passed),
        patients=report.counts.included,
        events=report.counts.events,
        c_statistic=report.performance.c_statistic_optimism_corrected,
        calibration_slope=report.performance.calibration_slope_optimism_corrected,
        generated_at=report.provenance.generated_at,
        fhir_host=server.hostname or "unknown server",
        ranges=dict(report.predictor_ranges),
        calibration_horizon=report.calibration.horizon,
        calibration_groups=tuple(report.calibration.groups),
        approved_by=report.approval.approved_by if report.approval else None,
        monitoring=report.latest_monitoring,
    )


def check_learned_models(cards: Iterable[CardContent], allow_unvalidated: bool) -> list[str]:
    """Start-up rule: a learned model whose report did not pass its minimums, or that no
    person approved (`cds-service approve`), stops the service (ConfigError naming the card
    and why), unless the setting allow_unvalidated_site_models allows it; then the warnings
    to log are returned."""
    warnings = []
    for card in cards:
        site = card.site_model
        if site is None or site.learned is None:
            continue
        learned = site.learned
        if learned.deployable:
            continue
        if not learned.passed:
            failed = "; ".join(learned.failed_checks) or "no minimum is named as failed"
            text = (
                f"site overlay [models.{card.id}]: the learned model's report ({learned.report_path}) has status "
                f"{learned.status!r}, not 'passed': {failed}"
            )
            advice = (
                ". The service does not start with a learned model that failed its validation minimums: "
                "review the report and learn again, remove the model from the overlay, or set "
                "allow_unvalidated_site_models = true to deploy it anyway."
            )
        else:
            text = (
                f"site overlay [models.{card.id}]: the learned model's report ({learned.report_path}) "
                "has not been approved by a person"
            )
            advice = (
                ". Review the report and approve it (cds-service approve <report.json> --by <name>), "
                "or set allow_unvalidated_site_models = true to deploy it anyway."
            )
        if not allow_unvalidated:
            raise ConfigError(text + advice)
        warnings.append(
            "UNVALIDATED SITE MODEL IN USE (allow_unvalidated_site_models = true): " + text + "; the card labels it."
        )
    return warnings


# ---------------------------------------------------------------------------- what the engine uses
@dataclass(frozen=True)
class Coding:
    """How a site codes a numeric predictor: linear (value - offset) / scale, or cut-offs."""

    scale: float = 1.0
    offset: float = 0.0
    cutoffs: tuple[float, ...] = ()

    def code(self, value: float) -> float:
        if self.cutoffs:
            return float(sum(1 for c in self.cutoffs if value >= c))
        return (value - self.offset) / self.scale

    def describe(self, unit: str | None) -> str:
        u = f" {unit}" if unit else ""
        if self.cutoffs:
            return "category: number of cut-offs reached (" + ", ".join(f"{_num(c)}{u}" for c in self.cutoffs) + ")"
        text = f"per {_num(self.scale)}{u}" if self.scale != 1 else f"per 1{u}"
        return text + (f" above {_num(self.offset)}{u}" if self.offset else "")


@dataclass(frozen=True)
class SiteModel:
    """A complete model supplied by the deployment for one card (published numbers filled in)."""

    card_id: str
    kind: str  # cox | logistic
    label: str
    version: str
    names: tuple[str, ...]  # predictor ids, in coefficient order
    coefficients: tuple[float, ...]
    coding: dict[str, Coding]  # numeric predictors only
    intercept: float | None = None
    reference: dict[str, float] | None = None  # Cox, coded units
    reference_label: str | None = None
    baseline_survival: dict[float, float] = field(default_factory=dict)
    coefficients_from_site: bool = False
    learned: LearnedFrom | None = None  # from the report of `cds-service learn`; None: typed by hand

    @property
    def origin(self) -> str:
        return "learned" if self.learned is not None else "site-configured"


def site_model_from_data(card: CardContent, raw: object, overlay_dir: Path | None = None) -> SiteModel:
    where = f"site overlay [models.{card.id}]"
    try:
        spec = SiteModelFile.model_validate(raw, context={"card": card})
    except ValidationError as exc:
        raise content_error(exc, where, raw) from None
    names = spec.names(card)
    kind = cast(str, card.model.site_kind)  # SiteModelFile refused a card without one
    if spec.coefficients:
        coefficients = tuple(spec.coefficients[n] for n in names)
    elif card.model.kind == "cox":
        coefficients = tuple(card.model.coefficients[n] for n in names)
    else:
        coefficients = tuple(math.log(card.model.odds_ratios[n]) for n in names)
    # (CodingFile's validator gives every coding without cutoffs its scale)
    coding = {
        name: Coding(cutoffs=tuple(c.cutoffs))
        if c.cutoffs
        else Coding(scale=cast(float, c.scale), offset=c.offset or 0.0)
        for name, c in spec.coding.items()
    }
    learned = None
    if spec.report is not None:
        report_path = Path(overlay_dir or ".") / spec.report
        learned = read_report(report_path, card, names, coefficients, spec.intercept)
    return SiteModel(
        card_id=card.id,
        kind=kind,
        label=spec.label,
        version=spec.version,
        names=names,
        coefficients=coefficients,
        coding=coding,
        intercept=spec.intercept,
        reference=spec.reference if kind == "cox" else None,
        reference_label=spec.reference_label,
        baseline_survival=dict(sorted((float(h), s) for h, s in spec.baseline_survival.items())),
        coefficients_from_site=bool(spec.coefficients),
        learned=learned,
    )


def attach_site_models(
    cards: list[CardContent], overlay: dict[str, Any] | None, overlay_dir: Path | None = None
) -> list[CardContent]:
    """The cards, each with the overlay's model for it (if any) attached. `overlay_dir`: the
    overlay file's folder, against which a model's `report` path is read."""
    if not overlay:
        return cards
    models: Any = overlay.get("models", {})
    if not isinstance(models, dict):
        raise ContentError("site overlay: [models] must be a table of card ids")
    by_id = {c.id: c for c in cards}
    for card_id in models:
        if card_id not in by_id:
            raise ContentError(f"site overlay [models.{card_id}]: no card with this id (cards: {sorted(by_id)})")
    return [
        card.with_site_model(site_model_from_data(card, models[card.id], overlay_dir)) if card.id in models else card
        for card in cards
    ]


def _num(x: float) -> str:
    return toml_number(x)
