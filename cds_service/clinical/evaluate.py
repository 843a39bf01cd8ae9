"""Evaluate one card for one hook call: does it concern this patient, which of its inputs
does the record hold, and (only with a complete site-supplied model) what patient-specific
estimate follows.

Data moves forward: PatientRecord + CardContent in, CardResult out. Nothing here knows
about FHIR JSON or HTTP, and nothing here writes text for the clinician (render.py does).
Which facts answer a question (latest procedure, observations in a window or after the
procedure, conditions after it, ...) is asked of the record's queries, not decided here.

Each predictor is read by the function registered in DERIVE under its derivation kind
(one per kind of content/derivations.py; clinical/predictors.py); `holds` is the one test of a predicate, used for
a situation's `requires` here and for text variants by render.py.

Rules kept here, for every card:
- a card fires only in one of its situations (hook + every predicate of `requires`); the
  first situation that matches wins, so a card file lists the most specific one first;
- every input is either used (value, unit, date, where it came from), missing (never
  silently defaulted), unreadable (recorded but could not be used), or only known during
  surgery;
- a patient-specific figure is computed only from a complete site model, and only when
  every numeric input is present. A yes/no condition that is not recorded is taken as
  absent for the site model, and the card says so;
- a learned model's figure is withheld when an input lies outside the values the model
  was fitted on (its report's predictor ranges): a numeric value below the training
  minimum or above the maximum, or a yes/no value no training patient had. The model's
  validation (C-statistic, calibration) says nothing about such a patient, so no figure
  is shown next to it; the card says which input and the training range (`outside_range`).
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypedDict

from cds_service.clinical.dates import months_between
from cds_service.clinical.input_values import (
    INTRAOPERATIVE,
    MISSING,
    UNREADABLE,
    USED,
    InputValue,
    Reading,
    is_number,
    not_used_future,
    ratio,
)
from cds_service.clinical.predictors import DERIVE, derive
from cds_service.clinical.record import OrderFact, PatientRecord, ProcedureFact, UnreadableInput
from cds_service.clinical.risk_models import ModelIncomplete, cox_model, logistic_model
from cds_service.clinical.story import reading_notes, story_of
from cds_service.content.cards import CardContent, Situation, When
from cds_service.content.site_models import LearnedFrom, SiteModel
from cds_service.formatting import fixed, number, percent, rounded

# The predictor readers moved to clinical/predictors.py; their names stay importable here.
__all__ = [
    "DERIVE",
    "INTRAOPERATIVE",
    "MISSING",
    "UNREADABLE",
    "USED",
    "CardResult",
    "Estimate",
    "InputValue",
    "OutsideRange",
    "Reading",
    "estimate_values",
    "evaluate",
    "holds",
    "model_values",
    "not_used_future",
    "number",
    "percent",
    "ratio",
]


@dataclass(frozen=True)
class Estimate:
    """A patient-specific figure from a site-supplied model (never from a published one)."""

    kind: str  # cox | logistic
    model_label: str
    model_version: str
    outcome: str
    relative_hazard: float | None = None  # Cox: vs the site's reference profile
    reference_label: str | None = None
    event_probabilities: tuple[tuple[float, float], ...] = ()  # Cox: (horizon, 1 - S(t|x))
    time_unit: str | None = None
    probability: float | None = None  # logistic
    coded_inputs: tuple[tuple[str, float, str], ...] = ()  # (label, coded value, coding text)
    assumptions: tuple[str, ...] = ()  # labels of yes/no inputs taken as absent
    alternatives: tuple[tuple[str, float], ...] = ()  # (label, probability if that input were present)
    learned: LearnedFrom | None = None  # the model's report summary; None: a hand-typed site model

    @property
    def headline(self) -> str:
        if self.kind == "logistic" and self.probability is not None:
            return percent(self.probability)
        if self.event_probabilities:
            horizon, p = self.event_probabilities[-1]
            return f"{percent(p)} by {number(horizon)} {self.time_unit}"
        return f"relative hazard {ratio(self.relative_hazard)} vs the site reference"


@dataclass(frozen=True)
class OutsideRange:
    """An input whose value lies outside the values a learned model was fitted on."""

    predictor: str
    label: str
    value: str  # as shown on the card
    low: float | None = None  # numeric: the training minimum and maximum, in `unit`
    high: float | None = None
    unit: str | None = None

    @property
    def training(self) -> str:
        """The training values in words: "20 to 60 min", or "no" / "yes" (all patients)."""
        if self.low is None or self.high is None:
            return "none" if self.value == "yes" else "all"
        u = f" {self.unit}" if self.unit else ""
        return f"{rounded(self.low, 2)} to {rounded(self.high, 2)}{u}"


@dataclass(frozen=True)
class CardResult:
    card: CardContent
    situation: Situation
    hook: str
    today: date
    inputs: tuple[InputValue, ...]
    unreadable: tuple[UnreadableInput, ...] = ()  # the record's unreadable inputs this card concerns
    unavailable: dict[str, str] = field(default_factory=dict)
    site_model: SiteModel | None = None
    estimate: Estimate | None = None
    estimate_problem: str | None = None  # why the site model gave no estimate
    procedure: ProcedureFact | None = None  # the situation's procedure, when it has one
    order: OrderFact | None = None  # the draft order that triggered the card
    order_note: str = ""  # why that order counts (an order predictor with an `indication`)
    outside_range: tuple[OutsideRange, ...] = ()  # inputs beyond a learned model's training data
    retired: str | None = None  # monitoring retired the site model: why, in one line (evidence only shown)
    # How the patient's story was read for this card (clinical/story.py reading_notes): for the
    # evidence page only (which records were merged, set aside, done for another condition).
    story_notes: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def card_id(self) -> str:
        return self.card.id

    def input(self, predictor_id: str) -> InputValue:
        for item in self.inputs:
            if item.predictor == predictor_id:
                return item
        raise KeyError(predictor_id)

    def estimate_values(self, values: dict[str, str]) -> dict[str, str]:
        """The estimate's placeholders (content/templates.py ESTIMATE_NAMES) for the card's texts."""
        return estimate_values(self, values)


# ---------------------------------------------------------------------------- entry point
def evaluate(
    card: CardContent, record: PatientRecord, hook: str, site_model: SiteModel | None = None
) -> CardResult | None:
    """The card's result for this hook call, or None when the card does not concern it.

    `site_model`: the deployment's complete model for this card; None uses the one loaded
    with the card (card.site_model), if any."""
    site_model = site_model if site_model is not None else card.site_model
    read: dict[tuple[str, int], InputValue] = {}  # shared by the situations: each predictor read once
    for situation in card.situations:
        if hook not in situation.hooks:
            continue
        values = _SituationValues(card, card.trigger_predictor(situation, "is_procedure"), record, hook, read)
        value = values.get
        tested = ((w, value(w.predictor) if w.predictor is not None else None) for w in situation.requires)
        if not all(holds(w, item, False, record.today) for w, item in tested):
            continue
        order_id = card.trigger_predictor(situation, "is_order")
        inputs = tuple(value(pid) for pid in card.situation_predictors(situation))
        estimate, problem, outside = _estimate(card, situation, site_model, {i.predictor: i for i in inputs})
        return CardResult(
            card=card,
            situation=situation,
            hook=hook,
            today=record.today,
            inputs=inputs,
            unreadable=tuple(record.unreadable_for(*card.situation_concepts(situation))),
            unavailable=dict(record.unavailable),
            site_model=site_model if situation.use_model else None,
            estimate=estimate,
            estimate_problem=problem,
            procedure=values.procedure,
            order=value(order_id).fact if order_id is not None else None,
            order_note=value(order_id).note if order_id is not None else "",
            outside_range=outside,
            story_notes=tuple(_story_notes(card, situation, record)),
        )
    return None


def _story_notes(card: CardContent, situation: Situation, record: PatientRecord) -> list[dict[str, Any]]:
    concepts = card.situation_concepts(situation)
    if not any(c in record.procedures for c in concepts) and not record.set_aside:
        return []
    conditions = [p.for_condition for p in card.predictors if p.for_condition]
    return reading_notes(story_of(record), concepts, conditions[0] if conditions else None)


def holds(when: When, item: InputValue | None, has_estimate: bool, today: date) -> bool:
    """Whether a predicate of the card language holds for a predictor's value (or the estimate).
    `item` None (a predicate of no predictor read here) holds nothing."""
    if when.estimate is not None:
        return has_estimate == when.estimate
    if item is None:
        return False
    if when.present is not None:
        return (item.status in (USED, UNREADABLE)) == when.present
    if when.newer_unreadable is not None:
        return (item.status == USED and bool(item.newer_unreadable)) == when.newer_unreadable
    if when.recorded is not None:
        return item.recorded == when.recorded
    if not item.recorded:
        return False
    if when.within_months is not None:
        return item.date is None or months_between(item.date, today) <= when.within_months
    if when.below is not None or when.at_least is not None:
        value = item.value
        if not is_number(value):
            return False
        # a threshold named by a figure was replaced by the figure's number when the card loaded
        if when.below is not None:
            return isinstance(when.below, (int, float)) and value < when.below
        return isinstance(when.at_least, (int, float)) and value >= when.at_least
    if isinstance(when.equals, bool) or isinstance(item.value, bool):
        return isinstance(when.equals, bool) and isinstance(item.value, bool) and item.value == when.equals
    return item.value == when.equals


class _SituationValues:
    """The predictors of one situation, each read once, when first asked for; the
    situation's procedure is looked up only when a predictor needs it."""

    def __init__(
        self,
        card: CardContent,
        procedure_id: str | None,
        record: PatientRecord,
        hook: str,
        read: dict[tuple[str, int], InputValue] | None = None,
    ) -> None:
        self.card, self.procedure_id, self.record, self.hook = card, procedure_id, record, hook
        self.values: dict[str, InputValue] = {}
        # Values already read by an earlier situation of the card in this call: a predictor's
        # value depends only on the record, the hook and the procedure it is read against.
        self.read = read if read is not None else {}

    def get(self, pid: str) -> InputValue:
        if pid not in self.values:
            p = self.card.predictor(pid)
            procedure = self.procedure if p.needs_procedure else None
            key = (pid, id(procedure))
            if key not in self.read:
                self.read[key] = derive(p, Reading(self.record, self.hook, procedure))
            self.values[pid] = self.read[key]
        return self.values[pid]

    @property
    def procedure(self) -> ProcedureFact | None:
        return self.get(self.procedure_id).fact if self.procedure_id is not None else None


# ---------------------------------------------------------------------------- site model
def _estimate(
    card: CardContent, s: Situation, site: SiteModel | None, inputs: dict[str, InputValue]
) -> tuple[Estimate | None, str | None, tuple[OutsideRange, ...]]:
    if not s.use_model or site is None:
        return None, None, ()
    estimate, problem = _site_estimate(card, site, inputs)
    outside = _outside_range(card, site, inputs) if estimate is not None else ()
    if outside:
        words = "; ".join(f"{o.label} {o.value} (fitted on: {o.training})" for o in outside)
        return None, f"the inputs lie outside the values the model was fitted on: {words}", outside
    return estimate, problem, ()


def _outside_range(card: CardContent, site: SiteModel, inputs: dict[str, InputValue]) -> tuple[OutsideRange, ...]:
    """The inputs of a learned model beyond its training data (report predictor_ranges)."""
    if site.learned is None:
        return ()
    out = []
    for name in site.names:
        seen = site.learned.ranges.get(name)
        item = inputs[name]
        if seen is None or item.status != USED:
            continue  # only recorded values are compared (a yes/no not recorded is taken as absent)
        if card.predictor(name).binary:
            never = (seen.prevalence == 0.0 and item.value) or (seen.prevalence == 1.0 and not item.value)
            if seen.prevalence is not None and never:
                out.append(OutsideRange(name, card.predictor(name).label, "yes" if item.value else "no"))
        elif is_number(item.value) and seen.min is not None and seen.max is not None:
            if not seen.min <= float(item.value) <= seen.max:
                out.append(OutsideRange(name, card.predictor(name).label, item.display, seen.min, seen.max, seen.unit))
    return tuple(out)


class _EstimateCommon(TypedDict):
    """The fields of an Estimate that do not depend on the kind of model."""

    model_label: str
    model_version: str
    outcome: str
    coded_inputs: tuple[tuple[str, float, str], ...]
    assumptions: tuple[str, ...]
    learned: LearnedFrom | None


def _site_estimate(
    card: CardContent, site: SiteModel, inputs: dict[str, InputValue]
) -> tuple[Estimate | None, str | None]:
    x: list[float] = []
    coded: list[tuple[str, float, str]] = []
    assumed: list[str] = []
    missing: list[str] = []
    for name in site.names:
        p = card.predictor(name)
        item = inputs[name]
        if p.binary:
            if item.status == USED:
                x.append(1.0 if item.value else 0.0)
            elif p.kind.absent_when_missing and item.status == MISSING:
                x.append(0.0)
                assumed.append(p.label)
            else:
                missing.append(p.label)
                continue
            coded.append((p.label, x[-1], "yes = 1, no = 0"))
        else:
            if item.status == USED and is_number(item.value):
                coding = site.coding[name]
                x.append(coding.code(float(item.value)))
                coded.append((p.label, x[-1], coding.describe(p.unit)))
            else:
                missing.append(p.label)
    if missing:
        return None, f"it needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not available"
    common: _EstimateCommon = {
        "model_label": site.label,
        "model_version": site.version,
        "outcome": card.model.outcome,
        "coded_inputs": tuple(coded),
        "assumptions": tuple(assumed),
        "learned": site.learned,
    }
    try:
        if site.kind == "cox":
            model = cox_model(site)
            if model.reference is None:  # what model.relative_hazard would raise
                raise ModelIncomplete("a relative hazard needs a reference covariate vector")
            difference = model.linear_predictor(x) - model.linear_predictor(model.reference)
            if not (math.isfinite(difference) and abs(difference) < 700):  # exp() would overflow
                return None, "the inputs lie outside what the site model can compute"
            return Estimate(
                kind="cox",
                relative_hazard=model.relative_hazard(x),
                reference_label=site.reference_label,
                event_probabilities=tuple((h, model.event_probability(x, h)) for h in sorted(site.baseline_survival)),
                time_unit=card.model.time_unit,
                **common,
            ), None
        logistic = logistic_model(site)
        if site.intercept is None:
            return None, "the site model gives no intercept, so no probability can be computed"
        alternatives = []
        for label in assumed:
            i = [c[0] for c in coded].index(label)
            flipped = list(x)
            flipped[i] = 1.0
            alternatives.append((label, logistic.probability(flipped)))
        return Estimate(
            kind="logistic", probability=logistic.probability(x), alternatives=tuple(alternatives), **common
        ), None
    except (ModelIncomplete, ValueError, OverflowError) as exc:
        return None, f"the site model could not be applied ({exc})"


# ---------------------------------------------------------------------------- estimate placeholders
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
NOT_AVAILABLE = "not available"


def estimate_values(result: CardResult, values: dict[str, str]) -> dict[str, str]:
    """Values of the estimate placeholders. The numbers come from the learned model's report;
    the wording from the card file's [texts], chosen by where the model comes from:
    `learned` (learned, its report passed and was approved), `unvalidated` (learned, its report
    did not pass or was not approved; deployed by the setting allow_unvalidated_site_models) or `configured` (typed by hand):
    [texts] estimate_by_<origin> fills {estimate_by} (short, for a summary) and
    estimate_<origin> fills {estimate_provenance}; estimate_outside_range fills
    {estimate_withheld} when a learned model's figure is withheld because an input lies
    outside its training data. A missing text, or no estimate: empty."""
    site = result.site_model
    learned = site.learned if site is not None else None
    out = model_values(result)
    filled = {**values, **out}
    texts = result.card.texts
    origin = None
    if result.estimate is not None:
        origin = "configured" if learned is None else ("learned" if learned.deployable else "unvalidated")
    out["estimate_by"] = _fill_text(texts.get(f"estimate_by_{origin}", ""), filled) if origin else ""
    out["estimate_provenance"] = _fill_text(texts.get(f"estimate_{origin}", ""), filled) if origin else ""
    out["estimate_withheld"] = (
        _fill_text(texts.get("estimate_outside_range", ""), filled) if result.outside_range else ""
    )
    return out


def model_values(result: CardResult) -> dict[str, str]:
    """The learned model's report figures and the inputs outside its training data, as text."""
    site = result.site_model
    learned = site.learned if site is not None else None
    return {
        "model_patients": str(learned.patients) if learned else NOT_AVAILABLE,
        "model_events": str(learned.events) if learned else NOT_AVAILABLE,
        "model_c_statistic": _two(learned.c_statistic) if learned else NOT_AVAILABLE,
        "model_calibration_slope": _two(learned.calibration_slope) if learned else NOT_AVAILABLE,
        "model_fitted_on": learned.generated_at[:10] if learned else NOT_AVAILABLE,
        "model_server": _inert(learned.fhir_host) if learned else NOT_AVAILABLE,
        "outside_range": "; ".join(f"{o.label} {_inert(o.value)} ({o.training})" for o in result.outside_range)
        or "none",
    }


def _inert(text: str) -> str:
    """Text from a record or a report as inert Markdown (as render.escape does)."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _fill_text(text: str, values: dict[str, str]) -> str:
    return " ".join(string.Formatter().vformat(text, (), values).split())


def _two(x: float | None) -> str:
    return NOT_AVAILABLE if x is None or not math.isfinite(x) else fixed(x, 2)
