"""Card files (cards/<card>.toml): their format, declared once as pydantic models, and the
loader that checks them at start-up.

A card file is data a clinician can review: id, version, title, indicator, source(s), the
figures exactly as the evidence gives them, the predictors (what is read from the record,
how: see derivations.py), the model numbers, the situations in which the card fires, and
the texts with {placeholders} naming figures and predictors.

The card language:
- a predicate (`when`) tests one predictor: `{ predictor = "x", equals = ... }`, or
  `below`, `at_least` (a number, or the name of a numeric figure), `recorded` (a usable
  value: true / false), `present` (in the record, readable or not), `within_months` (recorded,
  and dated no more than N months before the call, when dated), `newer_unreadable` (a value
  is used and a newer one could not be read); or `{ estimate = true }`
  (a site-model estimate was computed).
- a situation fires when every predicate of its `requires` holds. A predictor of kind
  `procedure` in `requires` gives the situation its procedure (what `after_procedure`,
  `time_since_procedure`... are read against); one of kind `order` gives the draft order
  that triggers an order-select / order-sign card.
- a text is chosen by `variants`: `[{ when = ..., text = ... }, ..., { otherwise = true,
  text = ... }]`, the first that holds wins; a section's variant has `heading` and `body`,
  and a section or caveat variant may `omit = true` (the section or caveat is not shown).
- a predictor with `context = true` is read in every situation of the card and listed with
  its inputs, but is not one of the card's factors ({factors_total}).

Also declared per card (issue 9): `[strength]` (the one line of evidence strength on the
card; else the first caveat; a situation whose figures come from another source gives its
own `strength`), `[[suggestions]]` (an action where the evidence supports one:
situations, `when` predicates, a FHIR R4 resource template and where its codes come from)
and `[[override_reasons]]` (coded reasons for dismissing the card, each with its HL7
category from the CodeSystem named in `[override_reason_categories]`, issue 19).

Everything is checked at start-up: a typo in a placeholder, a predicate naming an unknown
predictor, a concept of the wrong kind, a summary without a point... raises ContentError with
the file, the card id and the place, so a mistake never reaches a hook call. The JSON Schema
of this format is cards/schema/card.schema.json (see `card_json_schema`).
"""

from __future__ import annotations

import math
import re
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cds_service import hooks
from cds_service.content.derivations import KINDS, ORDER_HOOKS, DerivationKind
from cds_service.content.errors import TAG_PREFIX, ContentError, content_error
from cds_service.content.templates import DYNAMIC_NAMES, TEXT_FILLED_NAMES, check_summary_length, check_template

HOOKS = hooks.HOOKS
NOT_CARD_FILES = frozenset({"concepts.toml", "services.toml"})

_ID = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_URL = re.compile(r"https://[^\s]+")


# ---------------------------------------------------------------------------- value types
def _non_empty_text(value: object) -> object:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty text")
    return value


def _finite_number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def _positive_whole(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _true_or_false(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _figure(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be a number or a text")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be finite")
    if isinstance(value, str) and not value.strip():
        raise ValueError("is empty")
    return value


Text = Annotated[str, BeforeValidator(_non_empty_text)]
Number = Annotated[float, BeforeValidator(_finite_number)]
PositiveWhole = Annotated[int, BeforeValidator(_positive_whole)]
Flag = Annotated[bool, BeforeValidator(_true_or_false)]
Figure = Annotated[StrictInt | StrictFloat | StrictStr, BeforeValidator(_figure)]
Threshold = Annotated[StrictInt | StrictFloat | StrictStr, Field(description="a number, or the name of a figure")]


class Table(BaseModel):
    """A TOML table: unknown keys are refused with the list of allowed ones."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = set(data) - set(cls.model_fields)
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)} (allowed: {sorted(cls.model_fields)})")
        return data


def _plain_or_table(value: Any) -> str:
    return f"{TAG_PREFIX}text" if isinstance(value, str) else f"{TAG_PREFIX}table"


# ---------------------------------------------------------------------------- the language
class Reference(Table):
    label: Text
    url: Text | None = None

    @field_validator("url")
    @classmethod
    def _https(cls, url: str | None) -> str | None:
        if url is not None and not _URL.fullmatch(url):
            raise ValueError(f"url {url!r} must be an https URL")
        return url


class When(Table):
    """A predicate: one test of one predictor, or whether a site-model estimate exists."""

    predictor: Text | None = None
    equals: StrictBool | StrictInt | StrictFloat | StrictStr | None = None
    below: Threshold | None = None
    at_least: Threshold | None = None
    recorded: Flag | None = Field(None, description="true: a usable value; false: missing or unreadable")
    present: Flag | None = Field(None, description="true: in the record, readable or not")
    within_months: Number | None = Field(None, description="recorded, and dated at most this many months ago")
    newer_unreadable: Flag | None = Field(
        None, description="true: a value is used and a newer one of the input could not be read"
    )
    estimate: Flag | None = Field(None, description="true: a site-model estimate was computed")

    @model_validator(mode="after")
    def _one_test(self) -> When:
        if self.estimate is not None:
            if self.predictor is not None or self.tests:
                raise ValueError("'estimate' cannot be combined with predictor tests")
            return self
        if self.predictor is None:
            raise ValueError("name the predictor it tests (or test the estimate)")
        if len(self.tests) != 1:
            raise ValueError(
                "give exactly one of equals / below / at_least / recorded / present / within_months / newer_unreadable"
            )
        if self.within_months is not None and self.within_months <= 0:
            raise ValueError("within_months must be a positive number")
        return self

    @property
    def tests(self) -> list[str]:
        return [
            k
            for k in ("equals", "below", "at_least", "recorded", "present", "within_months", "newer_unreadable")
            if getattr(self, k) is not None
        ]

    @property
    def positive(self) -> bool:
        """True when it holds only if the predictor has a value (what a trigger's fact needs)."""
        return self.recorded is True or self.present is True or self.within_months is not None or self.equals is True


class _Variant(Table):
    when: When | None = None
    otherwise: Flag = False
    omit: Flag = Field(False, description="nothing is shown in this case (sections and caveats only)")

    @model_validator(mode="after")
    def _when_or_otherwise(self) -> _Variant:
        if (self.when is None) == (not self.otherwise):
            raise ValueError("a variant has either `when` or `otherwise = true`")
        return self


class TextVariant(_Variant):
    text: Text | None = None

    @model_validator(mode="after")
    def _text_or_omit(self) -> TextVariant:
        if (self.text is None) != self.omit:
            raise ValueError("a variant has either `text` or `omit = true`")
        return self


class SectionVariant(_Variant):
    heading: Text | None = None
    body: Text | None = None

    @model_validator(mode="after")
    def _content_or_omit(self) -> SectionVariant:
        if self.omit and (self.heading or self.body):
            raise ValueError("an omitted variant has no heading or body")
        if not self.omit and not (self.heading and self.body):
            raise ValueError("a variant has `heading` and `body`, or `omit = true`")
        if self.body:
            self.body = self.body.strip()
        return self


def _check_variants(variants: list[Any]) -> list[Any]:
    if not variants:
        raise ValueError("variants must not be empty")
    for v in variants[:-1]:
        if v.otherwise:
            raise ValueError("`otherwise = true` must be the last variant")
    if not variants[-1].otherwise:
        raise ValueError("the last variant must be `otherwise = true` (what is shown when no `when` holds)")
    return variants


class TextChoice(Table):
    """A text, or variants choosing one: the first whose `when` holds, else `otherwise`."""

    text: Text | None = None
    variants: list[TextVariant] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> TextChoice:
        if (self.text is None) == (self.variants is None):
            raise ValueError("give either `text` or `variants`")
        if self.variants is not None:
            _check_variants(self.variants)
        return self

    @cached_property
    def options(self) -> list[TextVariant]:
        return self.variants if self.variants is not None else [TextVariant(otherwise=True, text=self.text)]


class Section(Table):
    heading: Text | None = None
    body: Text | None = None
    variants: list[SectionVariant] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Section:
        if self.variants is None:
            if not (self.heading and self.body):
                raise ValueError("a section has `heading` and `body`, or `variants`")
            self.body = self.body.strip()
        else:
            if self.heading or self.body:
                raise ValueError("a section has `heading` and `body`, or `variants`, not both")
            _check_variants(self.variants)
        return self

    @cached_property
    def options(self) -> list[SectionVariant]:
        if self.variants is not None:
            return self.variants
        return [SectionVariant(otherwise=True, heading=self.heading, body=self.body)]


class Predictor(Table):
    id: Text = Field(description="lower_snake_case; also the placeholder of the patient's value")
    label: Text
    derive: Text = Field(
        description="the derivation kind (content/derivations.py)",
        json_schema_extra={"enum": [*sorted(KINDS)]},
    )
    how: Text = Field(description="what is looked for, in words (shown when it is missing)")
    concept: Text | list[Text] | None = None
    unit: Text | None = None
    lookback_days: PositiveWhole | None = None
    after_procedure: Flag = False
    annotate_procedure: Flag = False
    values: list[Text] = Field(default_factory=list, description="a coded observation's allowed answers")
    site: Text | None = Field(None, description="condition_site: the body-site concept that is the site asked for")
    indication: Text | None = Field(
        None, description="order: the condition concept an order must be for (its stated reason, or the patient's)"
    )
    for_condition: Text | None = Field(
        None, description="operations / orders done for this condition concept only (stated reason)"
    )
    notes: dict[str, Text] = Field(default_factory=dict, description="the kind's notes, worded for this card")
    context: Flag = Field(False, description="read in every situation; listed, not counted as a factor")

    @model_validator(mode="after")
    def _fits_its_kind(self, info: ValidationInfo) -> Predictor:
        if not _NAME.fullmatch(self.id):
            raise ValueError(f"id {self.id!r} must be lower_snake_case (it is used as a placeholder)")
        where = f"predictor {self.id}"
        if self.derive not in KINDS:
            raise ValueError(f"{where}: derive {self.derive!r} is not one of {sorted(KINDS)}")
        kind = self.kind
        if kind.concept_kinds and not self.concept:
            raise ValueError(f"{where}: derive = {self.derive!r} needs a concept")
        if self.concept and not kind.concept_kinds:
            raise ValueError(f"{where}: derive = {self.derive!r} reads no concept")
        if isinstance(self.concept, list) and not (kind.several_concepts and self.concept):
            raise ValueError(f"{where}: derive = {self.derive!r} reads one concept")
        roles = kind.concept_roles
        if roles and len(self.concepts) < len(roles):
            raise ValueError(f"{where}: derive = {self.derive!r} needs concepts of kinds {', '.join(roles)}")
        for i, concept in enumerate(self.concepts):
            wanted = (roles[min(i, len(roles) - 1)],) if roles else kind.concept_kinds
            _check_concept(info.context, concept, wanted, where)
        options = (
            "lookback_days",
            "after_procedure",
            "annotate_procedure",
            "values",
            "site",
            "indication",
            "for_condition",
        )
        used = {k for k in options if getattr(self, k)}
        if used - kind.options:
            raise ValueError(
                f"{where}: {', '.join(sorted(used - kind.options))} do not apply to derive = {self.derive!r}"
            )
        if "site" in kind.options and not self.site:
            raise ValueError(f"{where}: derive = {self.derive!r} needs a site (a body_site concept)")
        if self.site:
            _check_concept(info.context, self.site, ("body_site",), where)
        if self.indication:
            _check_concept(info.context, self.indication, ("condition",), where)
        if self.for_condition:
            _check_concept(info.context, self.for_condition, ("condition",), where)
        unknown = set(self.notes) - set(kind.notes)
        if unknown:
            raise ValueError(
                f"{where}: notes {sorted(unknown)} are not notes of {self.derive!r} ({sorted(kind.notes)})"
            )
        if self.context and self.needs_procedure:
            raise ValueError(f"{where}: a context predictor cannot be read relative to a procedure")
        return self

    @property
    def kind(self) -> DerivationKind:
        return KINDS[self.derive]

    @property
    def binary(self) -> bool:
        return self.kind.yes_no

    @property
    def concepts(self) -> tuple[str, ...]:
        if self.concept is None:
            return ()
        return tuple(self.concept) if isinstance(self.concept, list) else (self.concept,)

    @property
    def single_concept(self) -> str:
        """The concept of a kind that reads one (the loader refuses a list or none for it)."""
        if not isinstance(self.concept, str):
            raise ValueError(f"predictor {self.id}: derive = {self.derive!r} reads one concept, not {self.concept!r}")
        return self.concept

    @property
    def needs_procedure(self) -> bool:
        return self.kind.needs_procedure or self.after_procedure or self.annotate_procedure

    def note(self, key: str) -> str:
        """The card's wording of one of its kind's notes, else the kind's generic wording."""
        return self.notes.get(key, self.kind.notes.get(key, ""))


Summary = Annotated[
    Annotated[Text, Tag(f"{TAG_PREFIX}text")] | Annotated[TextChoice, Tag(f"{TAG_PREFIX}table")],
    Discriminator(_plain_or_table),
]


class Situation(Table):
    """One way the card fires: the hooks, the facts that must hold, and what it then shows."""

    id: Text
    hooks: list[Text] = Field(json_schema_extra={"items": {"enum": list(HOOKS)}})
    requires: list[When] = Field(description="every predicate must hold for the card to fire")
    predictors: list[Text] = Field(description="the inputs shown (and used by the model), in order")
    summary: Summary
    lead: Text
    sections: list[Text]
    on_card: list[Text] = Field(
        default_factory=list,
        description="section keys whose chosen variant's body follows the lead on the card itself "
        "(a fact of the patient's story the clinician must see there, not only on the evidence page)",
    )
    use_model: Flag = False
    no_estimate: Text | None = Field(None, description="key in [texts]: why no patient-specific figure is shown")
    source: Reference | None = None
    indicator: Literal["info", "warning", "critical"] | None = None
    strength: TextChoice | None = Field(
        None,
        description="this situation's line of evidence strength, when its figures come from another source "
        "than the card's [strength] line describes",
    )

    @field_validator("hooks")
    @classmethod
    def _known_hooks(cls, hooks: list[str]) -> list[str]:
        if not hooks or any(h not in HOOKS for h in hooks):
            raise ValueError(f"hooks must be among {HOOKS}")
        return hooks

    @cached_property
    def summary_options(self) -> list[TextVariant]:
        if isinstance(self.summary, str):
            return [TextVariant(otherwise=True, text=self.summary)]
        return self.summary.options


class ModelSpec(Table):
    kind: Literal["cox", "logistic", "evidence"]
    outcome: Text
    time_unit: Text | None = None
    coefficients: dict[str, Number] = Field(default_factory=dict, description="published Cox coefficients")
    odds_ratios: dict[str, Number] = Field(default_factory=dict, description="published odds ratios (logistic)")
    site_model: Literal["logistic"] | None = Field(
        None, description="evidence-only card: the kind of model a site may learn for it (cds-service learn)"
    )
    site_predictors: list[Text] = Field(default_factory=list, description="with site_model: the predictor ids")

    @model_validator(mode="after")
    def _numbers_fit_the_kind(self) -> ModelSpec:
        if (self.site_model is not None or self.site_predictors) and (
            self.kind != "evidence" or self.site_model is None or not self.site_predictors
        ):
            raise ValueError("site_model and site_predictors go together, on an evidence-only card")
        if self.kind == "cox" and (not self.coefficients or self.odds_ratios):
            raise ValueError("a Cox model lists its published coefficients (and no odds_ratios)")
        if self.kind == "logistic" and (not self.odds_ratios or self.coefficients):
            raise ValueError("a logistic model lists its published odds_ratios (and no coefficients)")
        if self.kind == "evidence" and (self.coefficients or self.odds_ratios):
            raise ValueError("an evidence-only card has no coefficients")
        if any(v <= 0 for v in self.odds_ratios.values()):
            raise ValueError("odds ratios must be positive")
        if self.kind == "cox" and not self.time_unit:
            raise ValueError("a Cox model needs time_unit (the unit of baseline-survival horizons)")
        return self

    @property
    def predictor_ids(self) -> tuple[str, ...]:
        return tuple(self.coefficients) or tuple(self.odds_ratios) or tuple(self.site_predictors)

    @property
    def site_kind(self) -> str | None:
        """The kind of model a site may supply: the card's own, or an evidence-only card's
        site_model; None: the card takes no site model."""
        return self.kind if self.kind != "evidence" else self.site_model


class SuggestionSpec(Table):
    """An action the card offers where the evidence supports one: a FHIR R4 resource to create.

    Offered in the listed situations when every predicate of `when` holds. The engine adds
    the patient reference (`subject`) and, with `occurrence_months_after_procedure`, the
    due date counted from the situation's procedure; everything else is the template."""

    id: Text = Field(description="lower-case id, stable across versions (the report counts acceptances by it)")
    label: Text = Field(description="the suggestion's label as the clinician sees it")
    situations: list[Text] = Field(description="the situations in which it is offered")
    when: list[When] = Field(default_factory=list, description="every predicate must hold")
    description: Text = Field(description="the action's description")
    resource: dict[str, Any] = Field(description="the FHIR R4 resource to create (without subject)")
    occurrence_months_after_procedure: Number | None = Field(
        None, description="due date: this many months after the situation's procedure (occurrenceDateTime)"
    )
    codes_source: Text = Field(description="where the resource's codes were verified (published source)")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError(f"suggestion id {value!r} must be lower-case letters, digits, '-' or '_'")
        return value

    @field_validator("resource")
    @classmethod
    def _a_resource(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(value.get("resourceType"), str):
            raise ValueError("the resource needs a resourceType")
        if "subject" in value or "patient" in value:
            raise ValueError("the engine sets the patient reference; leave subject out of the template")
        return value


class OverrideReasonSpec(Table):
    """One coded reason a clinician may give for dismissing the card (CDS Hooks 2.0 Coding),
    with the standard category it belongs to (CDS Hooks 3.0.0-ballot: HL7 non-adherence
    reason codes, the CodeSystem named in `[override_reason_categories]`)."""

    code: Text
    system: Text = Field(description="the CodeSystem URI (the project's local CodeSystem of concepts.toml)")
    display: Text
    category: Text | None = Field(None, description="the HL7 non-adherence reason category code")
    category_display: Text | None = Field(None, description="that code's display, as the CodeSystem gives it")


class TopicSpec(Table):
    """The card's topic (CDS Hooks `source.topic`, a Coding): what the card is about, so an
    EHR can filter, group and count cards."""

    system: Text = Field(description="the CodeSystem URI (the project's local CodeSystem of concepts.toml)")
    code: Text
    display: Text


class CodeSystemRef(Table):
    """A published CodeSystem the card's codes are read from."""

    system: Text = Field(description="the CodeSystem's canonical URL")
    version: Text = Field(description="the version (of the CodeSystem, or of the guide publishing it)")
    source: Text = Field(description="where the codes were read: repository, path, commit")


# ---------------------------------------------------------------------------- the card
# A situation's reads: (predictors shown, concepts read, procedure predictor, order predictor).
_SituationReads = tuple[tuple[str, ...], frozenset[str], str | None, str | None]


class CardContent(Table):
    """One card file."""

    model_config = ConfigDict(
        extra="forbid",
        title="CDS card file",
        json_schema_extra={"description": "A clinical card of the CDS Hooks service (cards/<card>.toml)."},
    )

    id: Text = Field(description="lower-case letters, digits, '-' or '_'")
    version: Text = Field(description="like 1.0.0")
    title: Text
    indicator: Literal["info", "warning", "critical"]
    source: Reference
    topic: TopicSpec | None = Field(None, description="the card's topic, sent as source.topic")
    references: list[Reference] = Field(default_factory=list)
    figures: dict[str, Figure] = Field(description="numbers and texts exactly as the evidence gives them")
    model: ModelSpec
    predictors: list[Predictor]
    situations: list[Situation] = Field(description="tried in order: the first that fires wins")
    sections: dict[str, Section]
    texts: dict[str, Text] = Field(default_factory=dict)
    caveats: list[TextChoice] = Field(description="the strength of the evidence, one entry per caveat")
    strength: TextChoice | None = Field(
        None, description="the one line of evidence strength on the card (else the first caveat shown)"
    )
    suggestions: list[SuggestionSpec] = Field(default_factory=list)
    override_reasons: list[OverrideReasonSpec] = Field(
        default_factory=list, description="coded reasons offered when the card is dismissed"
    )
    override_reason_categories: CodeSystemRef | None = Field(
        None, description="the CodeSystem of the reasons' `category` codes (HL7 non-adherence reason codes)"
    )

    _path: str = PrivateAttr(default="")
    _site_model: Any = PrivateAttr(default=None)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError(f"id {value!r} must be lower-case letters, digits, '-' or '_'")
        return value

    @field_validator("version")
    @classmethod
    def _version_shape(cls, value: str) -> str:
        if not _VERSION.fullmatch(value):
            raise ValueError(f"version {value!r} must look like 1.0.0")
        return value

    @field_validator("source")
    @classmethod
    def _source_url(cls, value: Reference) -> Reference:
        if value.url is None:
            raise ValueError("the source needs a url")
        return value

    @field_validator("figures")
    @classmethod
    def _figure_names(cls, figures: dict[str, Any]) -> dict[str, Any]:
        for name in figures:
            if not _NAME.fullmatch(name):
                raise ValueError(f"figure name {name!r} must be lower_snake_case")
        return figures

    @model_validator(mode="after")
    def _consistent(self) -> CardContent:
        _check_card(self)
        return self

    # -- what the engine asks ------------------------------------------------------------
    @cached_property
    def predictor_by_id(self) -> dict[str, Predictor]:
        return {p.id: p for p in self.predictors}

    def predictor(self, predictor_id: str) -> Predictor:
        return self.predictor_by_id[predictor_id]

    @cached_property
    def context_predictors(self) -> tuple[str, ...]:
        return tuple(p.id for p in self.predictors if p.context)

    @property
    def path(self) -> str:
        return self._path

    @property
    def site_model(self) -> Any:
        """The deployment's complete model for this card (content.site_models.SiteModel), if any."""
        return self._site_model

    def with_site_model(self, site_model: Any) -> CardContent:
        card = self.model_copy()
        card._site_model = site_model
        return card

    @property
    def hooks(self) -> frozenset[str]:
        return frozenset(h for s in self.situations for h in s.hooks)

    @property
    def concepts(self) -> frozenset[str]:
        """Every concept the card reads (for matching unreadable inputs to it)."""
        return frozenset(c for p in self.predictors for c in p.concepts)

    def situation_predictors(self, s: Situation) -> tuple[str, ...]:
        """The predictors a situation reads and shows: its own, then the card's context ones."""
        return self.situation_reads[s.id][0]

    def situation_concepts(self, s: Situation) -> frozenset[str]:
        """The concepts a situation reads: its predictors' and its trigger's."""
        return self.situation_reads[s.id][1]

    def trigger_predictor(self, s: Situation, flag: str) -> str | None:
        """The predictor of `requires` whose fact is the situation's procedure (flag
        'is_procedure') or its triggering order ('is_order')."""
        reads = self.situation_reads[s.id]
        return reads[2] if flag == "is_procedure" else reads[3]

    @cached_property
    def situation_reads(self) -> dict[str, _SituationReads]:
        """Situation id -> (predictors shown, concepts read, procedure predictor, order predictor)."""
        out: dict[str, _SituationReads] = {}
        for s in self.situations:
            shown = tuple(dict.fromkeys([*s.predictors, *self.context_predictors]))
            ids = [*shown, *(w.predictor for w in s.requires if w.predictor)]
            concepts = frozenset(c for pid in ids for c in self.predictor(pid).concepts)
            triggers = [self.predictor(w.predictor) for w in s.requires if w.predictor]
            procedure = next((p.id for p in triggers if p.kind.is_procedure), None)
            order = next((p.id for p in triggers if p.kind.is_order), None)
            out[s.id] = (shown, concepts, procedure, order)
        return out


# ---------------------------------------------------------------------------- semantic checks
class _CheckWhen(Protocol):
    """The check of a `when` table, defined in the card's validator."""

    def __call__(self, w: When | None, readable: set[str], where: str, use_model: bool) -> None: ...


def _check_concept(context: Any, concept_id: str, kinds: tuple[str, ...], where: str) -> None:
    concepts = (context or {}).get("concepts")
    if concepts is None:
        return
    if concept_id not in concepts:
        raise ValueError(f"{where}: concept {concept_id!r} is not defined in concepts.toml")
    kind = concepts.concept(concept_id).kind
    if kinds and kind not in kinds:
        raise ValueError(f"{where}: concept {concept_id!r} is a {kind}, expected {' or '.join(kinds)}")


def _check_card(card: CardContent) -> None:
    """Cross-references of one card: everything a name points to exists and fits."""
    predictors = {}
    for p in card.predictors:
        if p.id in predictors:
            raise ValueError(f"predictor {p.id}: defined twice")
        predictors[p.id] = p
    for name in card.model.predictor_ids:
        if name not in predictors:
            raise ValueError(f"[model]: {name!r} is not a predictor of this card")
    context = set(card.context_predictors)

    def check_when(w: When | None, readable: set[str], where: str, use_model: bool) -> None:
        if w is None:
            return
        if w.estimate is not None:
            if not use_model:
                raise ValueError(f"{where}: tests the estimate, but the situation does not use the model")
            return
        if w.predictor not in predictors:
            raise ValueError(f"{where}: predictor {w.predictor!r} is not defined in this card")
        if w.predictor not in readable:
            raise ValueError(f"{where}: tests predictor {w.predictor}, which this situation does not read")
        for key in ("below", "at_least"):
            value = getattr(w, key)
            if isinstance(value, str):  # the name of a figure, so the threshold is written once
                figure = card.figures.get(value)
                if isinstance(figure, bool) or not isinstance(figure, (int, float)):
                    raise ValueError(f"{where}: {key} {value!r} is not a numeric figure of this card")
                setattr(w, key, figure)

    for key, section in card.sections.items():
        for sv in section.options:
            check_when(sv.when, set(predictors), f"[sections.{key}] variant", use_model=True)
    if not card.caveats:
        raise ValueError("[caveats]: at least one evidence caveat is required")
    for i, caveat in enumerate(card.caveats):
        for tv in caveat.options:
            check_when(tv.when, context, f"[[caveats]] #{i + 1} variant (a context predictor)", use_model=False)
    if card.strength is not None:
        for tv in card.strength.options:
            check_when(tv.when, context, "[strength] variant (a context predictor)", use_model=False)
            if tv.text is not None:
                check_template(tv.text, set(card.figures), "[strength]")
    if not card.situations:
        raise ValueError("at least one situation (trigger) is required")
    if len({s.id for s in card.situations}) != len(card.situations):
        raise ValueError("situation ids must be unique")
    for s in card.situations:
        _check_situation(card, s, predictors, context, check_when)

    _check_suggestions(card, check_when)
    if len({(r.system, r.code) for r in card.override_reasons}) != len(card.override_reasons):
        raise ValueError("[[override_reasons]]: a reason is listed twice")
    for r in card.override_reasons:
        if (r.category is None) != (r.category_display is None):
            raise ValueError(f"[[override_reasons]] {r.code}: give both category and category_display, or neither")
        if r.category is not None and card.override_reason_categories is None:
            raise ValueError(f"[[override_reasons]] {r.code}: a category needs [override_reason_categories]")

    # {<predictor>_date}: the date of the patient's value (the story's facts are stated with their date)
    names = set(card.figures) | set(predictors) | {f"{p}_date" for p in predictors} | DYNAMIC_NAMES
    clash = set(card.figures) & (set(predictors) | DYNAMIC_NAMES)
    if clash:
        raise ValueError(f"names used both as figure and predictor/dynamic value: {sorted(clash)}")
    for key, section in card.sections.items():
        for sv in section.options:  # an omitted variant has neither (SectionVariant)
            if sv.heading is not None:
                check_template(sv.heading, names, f"[sections.{key}] heading")
            if sv.body is not None:
                check_template(sv.body, names, f"[sections.{key}] body")
    for key, text in card.texts.items():
        # the texts that fill the estimate's placeholders cannot use those placeholders
        inner = key.startswith("estimate_") and key != "estimate_headline"
        check_template(text, names - TEXT_FILLED_NAMES if inner else names, f"[texts] {key}")
    for caveat in card.caveats:
        for tv in caveat.options:
            if tv.text is not None:
                check_template(tv.text, set(card.figures), "[caveats]")
    for s in card.situations:
        for tv in s.summary_options:
            if tv.text is not None:  # always: a summary is never omitted (_check_situation)
                check_template(tv.text, names, f"situation {s.id} summary")
                check_summary_length(tv.text, card.figures, f"situation {s.id}")
        check_template(s.lead, names, f"situation {s.id} lead")
    if (
        card.model.site_kind is not None
        and any(s.use_model for s in card.situations)
        and "site_estimate" not in card.texts
    ):
        raise ValueError(f"a card with a {card.model.site_kind} model needs [texts] site_estimate")


def _check_situation(
    card: CardContent, s: Situation, predictors: dict[str, Any], context: set[str], check_when: _CheckWhen
) -> None:
    where = f"situation {s.id}"
    if not s.requires:
        raise ValueError(f"{where}: a situation needs a trigger (requires = [...])")
    tested: list[tuple[When, str]] = []  # each predicate of requires, with the predictor it tests
    for i, w in enumerate(s.requires):
        check_when(w, set(predictors), f"{where} requires #{i + 1}", use_model=False)
        if w.predictor is not None:  # always: check_when refuses the estimate in requires
            tested.append((w, w.predictor))
    kinds = [predictors[pid].kind for _, pid in tested]
    for flag, what in (("is_procedure", "procedure"), ("is_order", "order")):
        found = [w for (w, _), k in zip(tested, kinds) if getattr(k, flag)]
        if len(found) > 1:
            raise ValueError(f"{where}: requires tests more than one {what}")
        if found and not found[0].positive:
            raise ValueError(f"{where}: the {what} of requires must be tested as found (recorded = true ...)")
    has_order = any(k.is_order for k in kinds)
    has_procedure = any(k.is_procedure for k in kinds)
    is_order_hook = [h in ORDER_HOOKS for h in s.hooks]
    if has_order and not all(is_order_hook):
        raise ValueError(f"{where}: orders trigger only on order-select / order-sign")
    if any(is_order_hook) and not has_order:
        raise ValueError(f"{where}: an order-select / order-sign situation names the orders that trigger it")

    reads = [*s.predictors, *context]
    for pid in s.predictors:
        if pid not in predictors:
            raise ValueError(f"{where}: predictor {pid!r} is not defined in this card")
    for pid in [*reads, *(pid for _, pid in tested)]:
        if predictors[pid].needs_procedure and not has_procedure:
            raise ValueError(f"{where}: predictor {pid} is read relative to a procedure, but the situation has none")
    for key in [*s.sections, *s.on_card]:
        if key not in card.sections:
            raise ValueError(f"{where}: section {key!r} is not defined under [sections]")
        for sv in card.sections[key].options:
            check_when(sv.when, set(reads), f"{where}: section {key}", use_model=s.use_model)
    if s.strength is not None:
        for v in s.strength.options:
            check_when(v.when, context, f"{where} strength variant (a context predictor)", use_model=False)
            if v.text is not None:
                check_template(v.text, set(card.figures), f"{where} strength")
    if s.use_model and card.model.site_kind is None:
        raise ValueError(f"{where}: use_model = true, but the card's model is evidence-only")
    if s.use_model:
        missing = [n for n in card.model.predictor_ids if n not in s.predictors]
        if missing:
            raise ValueError(f"{where}: use_model needs the model's predictors {missing} in the situation")
    if s.no_estimate is not None and s.no_estimate not in card.texts:
        raise ValueError(f"{where}: no_estimate {s.no_estimate!r} is not a key of [texts]")
    if card.model.kind != "evidence" and s.no_estimate is None:
        raise ValueError(f"{where}: say under no_estimate why no patient-specific figure is shown")
    for i, v in enumerate(s.summary_options):
        if v.omit:
            raise ValueError(f"{where} summary variant #{i + 1}: a summary is never omitted")
        check_when(v.when, set(reads), f"{where} summary variant #{i + 1}", use_model=s.use_model)


def _check_suggestions(card: CardContent, check_when: _CheckWhen) -> None:
    situations = {s.id: s for s in card.situations}
    if len({g.id for g in card.suggestions}) != len(card.suggestions):
        raise ValueError("[[suggestions]]: ids must be unique")
    for g in card.suggestions:
        where = f"suggestion {g.id}"
        if not g.situations:
            raise ValueError(f"{where}: name the situations in which it is offered")
        for sid in g.situations:
            s = situations.get(sid)
            if s is None:
                raise ValueError(f"{where}: situation {sid!r} is not defined in this card")
            if g.occurrence_months_after_procedure is not None and card.trigger_predictor(s, "is_procedure") is None:
                raise ValueError(f"{where}: a due date after the procedure needs a situation with a procedure")
            for i, w in enumerate(g.when):
                check_when(w, set(card.situation_predictors(s)), f"{where} when #{i + 1} in {sid}", use_model=False)


# ---------------------------------------------------------------------------- loading
def card_from_data(data: dict[str, Any], where: str = "card", concepts: Any = None) -> CardContent:
    """One card from the parsed TOML of its file. `concepts` (a ConceptIndex) enables
    checking that every concept id the card names exists and has the right kind."""
    card_id = data.get("id") if isinstance(data, dict) else None
    place = f"{where} [{card_id}]" if isinstance(card_id, str) else where
    try:
        card = CardContent.model_validate(data, context={"concepts": concepts})
    except ValidationError as exc:
        raise content_error(exc, place, data) from None
    card._path = place
    return card


def load_cards(
    cards_dir: Path, overlay: dict[str, Any] | None = None, concepts: Any = None, overlay_dir: Path | None = None
) -> list[CardContent]:
    """Every card file in cards_dir (not concepts.toml / services.toml), checked, with the
    overlay's site models attached. Without `concepts` the concepts file of cards_dir is
    loaded (when there is one) to check the concept ids the cards name."""
    from cds_service.content.site_models import attach_site_models

    cards_dir = Path(cards_dir)
    if concepts is None and (cards_dir / "concepts.toml").exists():
        from cds_service.terminology.concepts_file import load_concepts

        concepts = load_concepts(cards_dir, overlay)
    cards: list[CardContent] = []
    for path in sorted(cards_dir.glob("*.toml")):
        if path.name in NOT_CARD_FILES:
            continue
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ContentError(f"{path}: cannot read ({exc.strerror or exc})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ContentError(f"{path}: not valid TOML: {exc}") from exc
        cards.append(card_from_data(data, str(path), concepts))
    ids = [c.id for c in cards]
    for card_id in ids:
        if ids.count(card_id) > 1:
            raise ContentError(f"{cards_dir}: card id {card_id!r} is used by more than one file")
    return attach_site_models(cards, overlay, overlay_dir)


def content_versions(cards: list[CardContent]) -> str:
    """'amr-persistence@1.0.0,rfa-recurrence@1.0.0+site:Label@2025.1,...' for the audit trail."""
    parts = []
    for card in sorted(cards, key=lambda c: c.id):
        text = f"{card.id}@{card.version}"
        if card.site_model is not None:
            text += f"+site:{card.site_model.label}@{card.site_model.version}"
        parts.append(text)
    return ",".join(parts)


def card_json_schema() -> dict[str, Any]:
    """The JSON Schema of a card file, for editors (published as cards/schema/card.schema.json)."""
    schema = CardContent.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
