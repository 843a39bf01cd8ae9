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

Without `coefficients` the published ones are used (Cox coefficients; ln(OR) for a
logistic model). Every numeric predictor a site model uses needs a coding; yes/no
predictors are coded 1 / 0. The format is declared once below (SiteModelFile); what it
must agree with in the card is checked with the card as validation context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, model_validator

from cds_service.content.cards import CardContent, Number, Table, Text
from cds_service.content.errors import ContentError, content_error


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

    @model_validator(mode="after")
    def _fits_the_card(self, info: ValidationInfo) -> SiteModelFile:
        card: CardContent = info.context["card"]
        kind = card.model.kind
        if kind == "evidence":
            raise ValueError(f"card {card.id} is evidence-only; it has no model a site can parameterise")
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


def site_model_from_data(card: CardContent, raw: object) -> SiteModel:
    where = f"site overlay [models.{card.id}]"
    try:
        spec = SiteModelFile.model_validate(raw, context={"card": card})
    except ValidationError as exc:
        raise content_error(exc, where, raw) from None
    names = spec.names(card)
    if spec.coefficients:
        coefficients = tuple(spec.coefficients[n] for n in names)
    elif card.model.kind == "cox":
        coefficients = tuple(card.model.coefficients[n] for n in names)
    else:
        coefficients = tuple(math.log(card.model.odds_ratios[n]) for n in names)
    coding = {
        name: Coding(cutoffs=tuple(c.cutoffs)) if c.cutoffs else Coding(scale=c.scale, offset=c.offset or 0.0)
        for name, c in spec.coding.items()
    }
    return SiteModel(
        card_id=card.id,
        kind=card.model.kind,
        label=spec.label,
        version=spec.version,
        names=names,
        coefficients=coefficients,
        coding=coding,
        intercept=spec.intercept,
        reference=spec.reference if card.model.kind == "cox" else None,
        reference_label=spec.reference_label,
        baseline_survival=dict(sorted((float(h), s) for h, s in spec.baseline_survival.items())),
        coefficients_from_site=bool(spec.coefficients),
    )


def attach_site_models(cards: list[CardContent], overlay: dict | None) -> list[CardContent]:
    """The cards, each with the overlay's model for it (if any) attached."""
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
        card.with_site_model(site_model_from_data(card, models[card.id])) if card.id in models else card
        for card in cards
    ]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
