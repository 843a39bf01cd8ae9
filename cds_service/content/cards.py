"""Card content: load and check the clinical card files (cards/<card>.toml) and the site
overlay's model parameters.

A card file is data a clinician can review: id, version, title, indicator, source(s),
the figures exactly as the evidence gives them, the predictors (which concept, how it
is derived, look-back), the model numbers, the situations (triggers) in which the card
fires, and the texts with {placeholders} naming figures and predictors. Everything is
checked at start-up: a typo in a placeholder, a trigger naming an unknown concept, a
summary without a point, an overlay naming a predictor the card does not have... raises
ContentError with the file and the place, so a mistake never reaches a hook call.

Site overlay (TOML; path from the `site_overlay` setting). Besides `[concepts.*]` (local
codes, read by concepts.py), it may give a complete model for a card:

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
predictors are coded 1 / 0.
"""

from __future__ import annotations

import math
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cds_service import toml_checks
from cds_service.config import ConfigError

HOOKS = ("patient-view", "order-select", "order-sign")
INDICATORS = ("info", "warning", "critical")
NOT_CARD_FILES = frozenset({"concepts.toml", "services.toml"})
SUMMARY_LIMIT = 140  # CDS Hooks: summary SHOULD be under 140 characters
MODEL_KINDS = ("cox", "logistic", "evidence")

# How a predictor is read from the patient record (see evaluate.py).
DERIVATIONS = {
    "condition": "a Condition of the concept (yes / recorded as resolved / not recorded)",
    "condition_after_procedure": "a Condition of the concept present after the situation's procedure",
    "medication": "a MedicationRequest / MedicationStatement of the concept",
    "observation": "the latest Observation of the concept",
    "sex": "Patient.gender (male = yes)",
    "disease_duration": "years since the onset of the concept's Condition",
    "operation_time": "the procedure's performedPeriod, else an Observation on the procedure day",
    "time_since_procedure": "months since the situation's procedure",
    "intraoperative": "only known during surgery: always listed as unknown before it",
}
NEEDS_CONCEPT = {
    "condition",
    "condition_after_procedure",
    "medication",
    "observation",
    "disease_duration",
    "operation_time",
}
NEEDS_PROCEDURE = {"operation_time", "time_since_procedure", "condition_after_procedure"}
BINARY_DERIVATIONS = {"condition", "medication", "sex"}
# Placeholders every text may use besides figures and predictor ids.
DYNAMIC_NAMES = {"site_label", "site_version", "estimate_headline", "factors_recorded", "factors_total"}

_ID = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_VERSION = re.compile(r"\d+\.\d+\.\d+")
_URL = re.compile(r"https://[^\s]+")


class ContentError(ConfigError):
    """A card file or the overlay's model section cannot be used; raised at start-up."""


# ---------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class Reference:
    label: str
    url: str | None = None


@dataclass(frozen=True)
class When:
    """A condition on the evaluation: a predictor's value, or whether an estimate exists."""

    predictor: str | None = None
    equals: Any = None
    below: float | None = None
    at_least: float | None = None
    recorded: bool | None = None  # True: a usable value; False: missing / unreadable
    estimate: bool | None = None  # True: a site-model estimate was computed


@dataclass(frozen=True)
class Section:
    key: str
    heading: str
    body: str
    when: When | None = None


@dataclass(frozen=True)
class SummaryVariant:
    text: str
    when: When


@dataclass(frozen=True)
class Predictor:
    id: str
    label: str
    derive: str
    how: str
    concept: str | None = None
    unit: str | None = None
    lookback_days: int | None = None
    after_procedure: bool = False  # observation: only values recorded after the procedure
    annotate_procedure: bool = False  # observation: say when a value predates the procedure
    values: tuple[str, ...] = ()  # coded observation: the allowed answers

    @property
    def binary(self) -> bool:
        return self.derive in BINARY_DERIVATIONS


@dataclass(frozen=True)
class ObservationRequirement:
    concept: str
    at_least: float | None = None
    lookback_days: int | None = None
    after_procedure: bool = False


@dataclass(frozen=True)
class Situation:
    """One way the card fires: the hooks, the triggering facts, and what it then shows."""

    id: str
    hooks: tuple[str, ...]
    predictors: tuple[str, ...]
    summary: str
    lead: str
    sections: tuple[str, ...]
    orders: tuple[str, ...] = ()
    procedure: str | None = None
    within_months: float | None = None
    requires_conditions: tuple[str, ...] = ()
    requires_active_conditions: tuple[str, ...] = ()
    requires_observation: ObservationRequirement | None = None
    condition_after_procedure: str | None = None
    use_model: bool = False
    no_estimate: str | None = None  # key in [texts]
    summary_variants: tuple[SummaryVariant, ...] = ()
    source: Reference | None = None
    indicator: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # cox | logistic | evidence
    outcome: str
    time_unit: str | None = None
    coefficients: dict[str, float] = field(default_factory=dict)  # published (Cox)
    odds_ratios: dict[str, float] = field(default_factory=dict)  # published (logistic)

    @property
    def predictor_ids(self) -> tuple[str, ...]:
        return tuple(self.coefficients) or tuple(self.odds_ratios)


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
    """A complete model supplied by the deployment for one card."""

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


@dataclass(frozen=True)
class CardContent:
    id: str
    version: str
    title: str
    indicator: str
    source: Reference
    references: tuple[Reference, ...]
    figures: dict[str, Any]
    model: ModelSpec
    predictors: dict[str, Predictor]
    situations: tuple[Situation, ...]
    sections: dict[str, Section]
    texts: dict[str, str]
    caveats: tuple[str, ...]
    path: str = ""
    site_model: SiteModel | None = None

    @property
    def hooks(self) -> frozenset[str]:
        return frozenset(h for s in self.situations for h in s.hooks)

    @property
    def concepts(self) -> frozenset[str]:
        """Every concept the card reads (for matching unreadable inputs to it)."""
        found = {p.concept for p in self.predictors.values() if p.concept}
        for s in self.situations:
            found.update(s.orders, s.requires_conditions, s.requires_active_conditions)
            found.update(x for x in (s.procedure, s.condition_after_procedure) if x)
            if s.requires_observation:
                found.add(s.requires_observation.concept)
        return frozenset(found)


# ---------------------------------------------------------------------------- loading
def load_cards(cards_dir: Path, overlay: dict | None = None, concepts: Any = None) -> list[CardContent]:
    """Every card file in cards_dir (not concepts.toml / services.toml), checked, with the
    overlay's site models attached. `concepts` (a ConceptIndex) enables checking that every
    concept id a card names exists; without it the ids are checked when one is loaded here."""
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
    return attach_site_models(cards, overlay)


def attach_site_models(cards: list[CardContent], overlay: dict | None) -> list[CardContent]:
    if not overlay:
        return cards
    models = overlay.get("models", {})
    if not isinstance(models, dict):
        raise ContentError("site overlay: [models] must be a table of card ids")
    by_id = {c.id: c for c in cards}
    for card_id in models:
        if card_id not in by_id:
            raise ContentError(f"site overlay [models.{card_id}]: no card with this id (cards: {sorted(by_id)})")
    out = []
    for card in cards:
        if card.id in models:
            card = _replace(card, site_model=site_model_from_data(card, models[card.id]))
        out.append(card)
    return out


def content_versions(cards: list[CardContent]) -> str:
    """'amr-persistence@1.0.0,rfa-recurrence@1.0.0+site:Label@2025.1,...' for the audit trail."""
    parts = []
    for card in sorted(cards, key=lambda c: c.id):
        text = f"{card.id}@{card.version}"
        if card.site_model is not None:
            text += f"+site:{card.site_model.label}@{card.site_model.version}"
        parts.append(text)
    return ",".join(parts)


# ---------------------------------------------------------------------------- card files
_CARD_KEYS = {
    "id",
    "version",
    "title",
    "indicator",
    "source",
    "references",
    "figures",
    "model",
    "predictors",
    "situations",
    "sections",
    "texts",
    "caveats",
}
_PREDICTOR_KEYS = {
    "id",
    "label",
    "derive",
    "how",
    "concept",
    "unit",
    "lookback_days",
    "after_procedure",
    "annotate_procedure",
    "values",
}
_SITUATION_KEYS = {
    "id",
    "hooks",
    "predictors",
    "summary",
    "lead",
    "sections",
    "orders",
    "procedure",
    "within_months",
    "requires_conditions",
    "requires_active_conditions",
    "requires_observation",
    "condition_after_procedure",
    "use_model",
    "no_estimate",
    "summary_variants",
    "source",
    "indicator",
}
_CONCEPT_KIND = {
    "orders": ("procedure", "medication"),
    "procedure": ("procedure",),
    "requires_conditions": ("condition",),
    "requires_active_conditions": ("condition",),
    "condition_after_procedure": ("condition",),
}
_DERIVE_KIND = {
    "condition": "condition",
    "condition_after_procedure": "condition",
    "medication": "medication",
    "observation": "observation",
    "disease_duration": "condition",
    "operation_time": "observation",
}


def card_from_data(data: dict, where: str = "card", concepts: Any = None) -> CardContent:
    _keys(
        data,
        _CARD_KEYS,
        where,
        required={
            "id",
            "version",
            "title",
            "indicator",
            "source",
            "figures",
            "model",
            "predictors",
            "situations",
            "sections",
            "caveats",
        },
    )
    card_id = _text(data["id"], f"{where}: id")
    if not _ID.fullmatch(card_id):
        raise ContentError(f"{where}: id {card_id!r} must be lower-case letters, digits, '-' or '_'")
    where = f"{where} [{card_id}]"
    version = _text(data["version"], f"{where}: version")
    if not _VERSION.fullmatch(version):
        raise ContentError(f"{where}: version {version!r} must look like 1.0.0")
    indicator = _indicator(data["indicator"], f"{where}: indicator")
    source = _reference(data["source"], f"{where} [source]", url_required=True)
    references = tuple(
        _reference(r, f"{where} [[references]] #{i + 1}", url_required=False)
        for i, r in enumerate(_list(data.get("references", []), f"{where} references"))
    )
    figures = _figures(data["figures"], f"{where} [figures]")
    predictors = _predictors(data["predictors"], where, concepts)
    model = _model(data["model"], f"{where} [model]", predictors)
    sections = _sections(data["sections"], f"{where} [sections]", predictors)
    texts = {k: _text(v, f"{where} [texts] {k}") for k, v in _table(data.get("texts", {}), f"{where} [texts]").items()}
    caveats_table = _table(data["caveats"], f"{where} [caveats]")
    _keys(caveats_table, {"items"}, f"{where} [caveats]", required={"items"})
    caveats = tuple(_text(c, f"{where} [caveats]") for c in _list(caveats_table["items"], f"{where} [caveats] items"))
    if not caveats:
        raise ContentError(f"{where} [caveats]: at least one evidence caveat is required")
    situations = tuple(
        _situation(s, f"{where} [[situations]] #{i + 1}", predictors, sections, texts, figures, model, concepts)
        for i, s in enumerate(_list(data["situations"], f"{where} situations"))
    )
    if not situations:
        raise ContentError(f"{where}: at least one situation (trigger) is required")
    if len({s.id for s in situations}) != len(situations):
        raise ContentError(f"{where}: situation ids must be unique")

    names = set(figures) | set(predictors) | DYNAMIC_NAMES
    clash = set(figures) & (set(predictors) | DYNAMIC_NAMES)
    if clash:
        raise ContentError(f"{where}: names used both as figure and predictor/dynamic value: {sorted(clash)}")
    for key, section in sections.items():
        _check_template(section.heading, names, f"{where} [sections.{key}] heading")
        _check_template(section.body, names, f"{where} [sections.{key}] body")
    for key, text in texts.items():
        _check_template(text, names, f"{where} [texts] {key}")
    for caveat in caveats:
        _check_template(caveat, set(figures), f"{where} [caveats]")
    for s in situations:
        for text, what in [(s.summary, "summary"), (s.lead, "lead")] + [
            (v.text, "summary variant") for v in s.summary_variants
        ]:
            _check_template(text, names, f"{where} situation {s.id} {what}")
        _check_summary_length(s, figures, where)
    if model.kind in ("cox", "logistic") and any(s.use_model for s in situations) and "site_estimate" not in texts:
        raise ContentError(f"{where}: a card with a {model.kind} model needs [texts] site_estimate")

    return CardContent(
        id=card_id,
        version=version,
        title=_text(data["title"], f"{where}: title"),
        indicator=indicator,
        source=source,
        references=references,
        figures=figures,
        model=model,
        predictors=predictors,
        situations=situations,
        sections=sections,
        texts=texts,
        caveats=caveats,
        path=where,
    )


def _figures(raw: object, where: str) -> dict[str, Any]:
    table = _table(raw, where)
    figures: dict[str, Any] = {}
    for name, value in table.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ContentError(f"{where}: figure name {name!r} must be lower_snake_case")
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ContentError(f"{where}: {name} must be a number or a text")
        if isinstance(value, float) and not math.isfinite(value):
            raise ContentError(f"{where}: {name} must be finite")
        if isinstance(value, str) and not value.strip():
            raise ContentError(f"{where}: {name} is empty")
        figures[name] = value
    return figures


def _predictors(raw: object, where: str, concepts: Any) -> dict[str, Predictor]:
    out: dict[str, Predictor] = {}
    for i, entry in enumerate(_list(raw, f"{where} predictors")):
        w = f"{where} [[predictors]] #{i + 1}"
        entry = _table(entry, w)
        _keys(entry, _PREDICTOR_KEYS, w, required={"id", "label", "derive", "how"})
        pid = _text(entry["id"], f"{w} id")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", pid):
            raise ContentError(f"{w}: id {pid!r} must be lower_snake_case (it is used as a placeholder)")
        w = f"{where} predictor {pid}"
        derive = _text(entry["derive"], f"{w} derive")
        if derive not in DERIVATIONS:
            raise ContentError(f"{w}: derive {derive!r} is not one of {sorted(DERIVATIONS)}")
        concept = entry.get("concept")
        if derive in NEEDS_CONCEPT and not concept:
            raise ContentError(f"{w}: derive = {derive!r} needs a concept")
        if concept is not None:
            concept = _text(concept, f"{w} concept")
            _check_concept(concepts, concept, (_DERIVE_KIND[derive],) if derive in _DERIVE_KIND else None, w)
        lookback = entry.get("lookback_days")
        if lookback is not None and (not isinstance(lookback, int) or isinstance(lookback, bool) or lookback <= 0):
            raise ContentError(f"{w}: lookback_days must be a positive whole number")
        values = tuple(_text(v, f"{w} values") for v in _list(entry.get("values", []), f"{w} values"))
        after = _bool(entry.get("after_procedure", False), f"{w} after_procedure")
        annotate = _bool(entry.get("annotate_procedure", False), f"{w} annotate_procedure")
        if (after or annotate or values or lookback) and derive != "observation":
            raise ContentError(
                f"{w}: after_procedure / annotate_procedure / values / lookback_days "
                f"apply to derive = 'observation' only"
            )
        if pid in out:
            raise ContentError(f"{w}: defined twice")
        out[pid] = Predictor(
            id=pid,
            label=_text(entry["label"], f"{w} label"),
            derive=derive,
            how=_text(entry["how"], f"{w} how"),
            concept=concept,
            unit=_opt_text(entry.get("unit"), f"{w} unit"),
            lookback_days=lookback,
            after_procedure=after,
            annotate_procedure=annotate,
            values=values,
        )
    return out


def _model(raw: object, where: str, predictors: dict[str, Predictor]) -> ModelSpec:
    table = _table(raw, where)
    _keys(table, {"kind", "outcome", "time_unit", "coefficients", "odds_ratios"}, where, required={"kind", "outcome"})
    kind = _text(table["kind"], f"{where} kind")
    if kind not in MODEL_KINDS:
        raise ContentError(f"{where}: kind {kind!r} is not one of {MODEL_KINDS}")
    coefficients = _numbers(table.get("coefficients", {}), f"{where} coefficients")
    odds_ratios = _numbers(table.get("odds_ratios", {}), f"{where} odds_ratios")
    if kind == "cox" and (not coefficients or odds_ratios):
        raise ContentError(f"{where}: a Cox model lists its published coefficients (and no odds_ratios)")
    if kind == "logistic" and (not odds_ratios or coefficients):
        raise ContentError(f"{where}: a logistic model lists its published odds_ratios (and no coefficients)")
    if kind == "evidence" and (coefficients or odds_ratios):
        raise ContentError(f"{where}: an evidence-only card has no coefficients")
    if any(v <= 0 for v in odds_ratios.values()):
        raise ContentError(f"{where}: odds ratios must be positive")
    for name in (*coefficients, *odds_ratios):
        if name not in predictors:
            raise ContentError(f"{where}: {name!r} is not a predictor of this card")
    if kind == "cox" and not table.get("time_unit"):
        raise ContentError(f"{where}: a Cox model needs time_unit (the unit of baseline-survival horizons)")
    return ModelSpec(
        kind=kind,
        outcome=_text(table["outcome"], f"{where} outcome"),
        time_unit=_opt_text(table.get("time_unit"), f"{where} time_unit"),
        coefficients=coefficients,
        odds_ratios=odds_ratios,
    )


def _sections(raw: object, where: str, predictors: dict[str, Predictor]) -> dict[str, Section]:
    out = {}
    for key, entry in _table(raw, where).items():
        w = f"{where}.{key}"
        entry = _table(entry, w)
        _keys(entry, {"heading", "body", "when"}, w, required={"heading", "body"})
        when = _when(entry["when"], f"{w} when", predictors) if "when" in entry else None
        out[key] = Section(
            key=key,
            heading=_text(entry["heading"], f"{w} heading"),
            body=_text(entry["body"], f"{w} body").strip(),
            when=when,
        )
    return out


def _when(raw: object, where: str, predictors: dict[str, Predictor]) -> When:
    table = _table(raw, where)
    _keys(table, {"predictor", "equals", "below", "at_least", "recorded", "estimate"}, where)
    if "estimate" in table:
        if len(table) != 1:
            raise ContentError(f"{where}: 'estimate' cannot be combined with predictor tests")
        return When(estimate=_bool(table["estimate"], f"{where} estimate"))
    pid = table.get("predictor")
    if pid not in predictors:
        raise ContentError(f"{where}: predictor {pid!r} is not defined in this card")
    tests = [k for k in ("equals", "below", "at_least", "recorded") if k in table]
    if len(tests) != 1:
        raise ContentError(f"{where}: give exactly one of equals / below / at_least / recorded")
    for k in ("below", "at_least"):
        if k in table and (isinstance(table[k], bool) or not isinstance(table[k], (int, float))):
            raise ContentError(f"{where}: {k} must be a number")
    return When(
        predictor=pid,
        equals=table.get("equals"),
        below=table.get("below"),
        at_least=table.get("at_least"),
        recorded=_bool(table["recorded"], f"{where} recorded") if "recorded" in table else None,
    )


def _situation(
    raw: object,
    where: str,
    predictors: dict[str, Predictor],
    sections: dict[str, Section],
    texts: dict[str, str],
    figures: dict[str, Any],
    model: ModelSpec,
    concepts: Any,
) -> Situation:
    entry = _table(raw, where)
    _keys(entry, _SITUATION_KEYS, where, required={"id", "hooks", "predictors", "summary", "lead", "sections"})
    sid = _text(entry["id"], f"{where} id")
    where = f"{where} ({sid})"
    hooks = tuple(_text(h, f"{where} hooks") for h in _list(entry["hooks"], f"{where} hooks"))
    if not hooks or any(h not in HOOKS for h in hooks):
        raise ContentError(f"{where}: hooks must be among {HOOKS}")
    orders = tuple(_text(o, f"{where} orders") for o in _list(entry.get("orders", []), f"{where} orders"))
    is_order_hook = [h in ("order-select", "order-sign") for h in hooks]
    if orders and not all(is_order_hook):
        raise ContentError(f"{where}: orders trigger only on order-select / order-sign")
    if any(is_order_hook) and not orders:
        raise ContentError(f"{where}: an order-select / order-sign situation names the orders that trigger it")
    procedure = _opt_text(entry.get("procedure"), f"{where} procedure")
    within = entry.get("within_months")
    if within is not None:
        if isinstance(within, bool) or not isinstance(within, (int, float)) or within <= 0:
            raise ContentError(f"{where}: within_months must be a positive number")
        if procedure is None:
            raise ContentError(f"{where}: within_months needs a procedure")
    cap = _opt_text(entry.get("condition_after_procedure"), f"{where} condition_after_procedure")
    req_obs = None
    if "requires_observation" in entry:
        req_obs = _requirement(entry["requires_observation"], f"{where} requires_observation", figures, concepts)
        if req_obs.after_procedure and procedure is None:
            raise ContentError(f"{where}: requires_observation after_procedure needs a procedure")
    if cap and procedure is None:
        raise ContentError(f"{where}: condition_after_procedure needs a procedure")
    if (
        not orders
        and procedure is None
        and not entry.get("requires_active_conditions")
        and not entry.get("requires_conditions")
    ):
        raise ContentError(f"{where}: a situation needs a trigger (orders, procedure or conditions)")
    for key in ("requires_conditions", "requires_active_conditions"):
        for c in _list(entry.get(key, []), f"{where} {key}"):
            _check_concept(concepts, _text(c, f"{where} {key}"), _CONCEPT_KIND[key], f"{where} {key}")
    for o in orders:
        _check_concept(concepts, o, _CONCEPT_KIND["orders"], f"{where} orders")
    if procedure:
        _check_concept(concepts, procedure, _CONCEPT_KIND["procedure"], f"{where} procedure")
    if cap:
        _check_concept(concepts, cap, _CONCEPT_KIND["condition_after_procedure"], f"{where} condition_after_procedure")

    pids = tuple(_text(p, f"{where} predictors") for p in _list(entry["predictors"], f"{where} predictors"))
    for pid in pids:
        if pid not in predictors:
            raise ContentError(f"{where}: predictor {pid!r} is not defined in this card")
        p = predictors[pid]
        if (p.derive in NEEDS_PROCEDURE or p.after_procedure or p.annotate_procedure) and procedure is None:
            raise ContentError(f"{where}: predictor {pid} is read relative to a procedure, but the situation has none")
    section_keys = tuple(_text(s, f"{where} sections") for s in _list(entry["sections"], f"{where} sections"))
    for key in section_keys:
        if key not in sections:
            raise ContentError(f"{where}: section {key!r} is not defined under [sections]")
        when = sections[key].when
        if when and when.predictor and when.predictor not in pids:
            raise ContentError(
                f"{where}: section {key} tests predictor {when.predictor}, which this situation does not read"
            )
    use_model = _bool(entry.get("use_model", False), f"{where} use_model")
    if use_model and model.kind == "evidence":
        raise ContentError(f"{where}: use_model = true, but the card's model is evidence-only")
    if use_model:
        missing = [n for n in model.predictor_ids if n not in pids]
        if missing:
            raise ContentError(f"{where}: use_model needs the model's predictors {missing} in the situation")
    no_estimate = _opt_text(entry.get("no_estimate"), f"{where} no_estimate")
    if no_estimate is not None and no_estimate not in texts:
        raise ContentError(f"{where}: no_estimate {no_estimate!r} is not a key of [texts]")
    if model.kind != "evidence" and no_estimate is None:
        raise ContentError(f"{where}: say under no_estimate why no patient-specific figure is shown")
    variants = []
    for i, v in enumerate(_list(entry.get("summary_variants", []), f"{where} summary_variants")):
        w = f"{where} summary_variants #{i + 1}"
        v = _table(v, w)
        _keys(v, {"when", "text"}, w, required={"when", "text"})
        when = _when(v["when"], f"{w} when", predictors)
        if when.predictor and when.predictor not in pids:
            raise ContentError(f"{w}: tests predictor {when.predictor}, which this situation does not read")
        if when.estimate is not None and not use_model:
            raise ContentError(f"{w}: tests the estimate, but the situation does not use the model")
        variants.append(SummaryVariant(text=_text(v["text"], f"{w} text"), when=when))
    source = _reference(entry["source"], f"{where} source", url_required=True) if "source" in entry else None
    indicator = _indicator(entry["indicator"], f"{where} indicator") if "indicator" in entry else None
    return Situation(
        id=sid,
        hooks=hooks,
        predictors=pids,
        summary=_text(entry["summary"], f"{where} summary"),
        lead=_text(entry["lead"], f"{where} lead"),
        sections=section_keys,
        orders=orders,
        procedure=procedure,
        within_months=float(within) if within is not None else None,
        requires_conditions=tuple(entry.get("requires_conditions", [])),
        requires_active_conditions=tuple(entry.get("requires_active_conditions", [])),
        requires_observation=req_obs,
        condition_after_procedure=cap,
        use_model=use_model,
        no_estimate=no_estimate,
        summary_variants=tuple(variants),
        source=source,
        indicator=indicator,
    )


def _requirement(raw: object, where: str, figures: dict[str, Any], concepts: Any) -> ObservationRequirement:
    table = _table(raw, where)
    _keys(table, {"concept", "at_least", "lookback_days", "after_procedure"}, where, required={"concept"})
    concept = _text(table["concept"], f"{where} concept")
    _check_concept(concepts, concept, ("observation",), where)
    at_least = table.get("at_least")
    if isinstance(at_least, str):  # the name of a figure, so the threshold is written once
        if at_least not in figures or not isinstance(figures[at_least], (int, float)):
            raise ContentError(f"{where}: at_least {at_least!r} is not a numeric figure of this card")
        at_least = figures[at_least]
    elif at_least is not None and (isinstance(at_least, bool) or not isinstance(at_least, (int, float))):
        raise ContentError(f"{where}: at_least must be a number or a figure name")
    lookback = table.get("lookback_days")
    if lookback is not None and (not isinstance(lookback, int) or isinstance(lookback, bool) or lookback <= 0):
        raise ContentError(f"{where}: lookback_days must be a positive whole number")
    return ObservationRequirement(
        concept=concept,
        at_least=float(at_least) if at_least is not None else None,
        lookback_days=lookback,
        after_procedure=_bool(table.get("after_procedure", False), f"{where} after_procedure"),
    )


# ---------------------------------------------------------------------------- site models
_SITE_KEYS = {
    "label",
    "version",
    "coefficients",
    "intercept",
    "coding",
    "reference",
    "reference_label",
    "baseline_survival",
}


def site_model_from_data(card: CardContent, raw: object) -> SiteModel:
    where = f"site overlay [models.{card.id}]"
    table = _table(raw, where)
    _keys(table, _SITE_KEYS, where, required={"label", "version"})
    kind = card.model.kind
    if kind == "evidence":
        raise ContentError(f"{where}: card {card.id} is evidence-only; it has no model a site can parameterise")
    if not any(s.use_model for s in card.situations):
        raise ContentError(f"{where}: no situation of card {card.id} uses a model")
    label = _text(table["label"], f"{where} label")
    version = _text(
        str(table["version"]) if isinstance(table["version"], (int, float)) else table["version"], f"{where} version"
    )
    site_coefs = _numbers(table.get("coefficients", {}), f"{where} coefficients")
    if site_coefs:
        names = tuple(site_coefs)
        coefficients = tuple(site_coefs[n] for n in names)
    elif kind == "cox":
        names = tuple(card.model.coefficients)
        coefficients = tuple(card.model.coefficients[n] for n in names)
    else:
        names = tuple(card.model.odds_ratios)
        coefficients = tuple(math.log(card.model.odds_ratios[n]) for n in names)
    model_situations = [s for s in card.situations if s.use_model]
    for name in names:
        if name not in card.predictors:
            raise ContentError(
                f"{where} coefficients: {name!r} is not a predictor of card {card.id} "
                f"(predictors: {sorted(card.predictors)})"
            )
        if not all(name in s.predictors for s in model_situations):
            raise ContentError(f"{where} coefficients: predictor {name!r} is not read where the model is used")
        if card.predictors[name].derive == "intraoperative":
            raise ContentError(f"{where} coefficients: {name!r} is only known during surgery")
    coding_raw = _table(table.get("coding", {}), f"{where} coding")
    coding: dict[str, Coding] = {}
    for name, spec in coding_raw.items():
        if name not in names:
            raise ContentError(f"{where} coding: {name!r} is not a predictor of the model ({list(names)})")
        coding[name] = _coding(spec, f"{where} coding.{name}")
    for name in names:
        p = card.predictors[name]
        if p.binary:
            if name in coding:
                raise ContentError(f"{where} coding.{name}: a yes/no predictor is coded 1 / 0; remove its coding")
        elif name not in coding:
            raise ContentError(
                f"{where}: numeric predictor {name!r} needs a coding (scale/offset or cutoffs): "
                f"the published coding is unknown and is never guessed"
            )
    intercept = table.get("intercept")
    reference = None
    baseline: dict[float, float] = {}
    if kind == "logistic":
        for key in ("reference", "baseline_survival", "reference_label"):
            if key in table:
                raise ContentError(f"{where}: {key} applies to a Cox model only")
        if intercept is not None and (
            isinstance(intercept, bool) or not isinstance(intercept, (int, float)) or not math.isfinite(intercept)
        ):
            raise ContentError(f"{where}: intercept must be a finite number")
    else:
        if intercept is not None:
            raise ContentError(f"{where}: a Cox model has no intercept (give baseline_survival instead)")
        ref = _numbers(table.get("reference", {}), f"{where} reference")
        if set(ref) != set(names):
            raise ContentError(f"{where}: reference must give a coded value for each of {list(names)}")
        reference = ref
        if "reference_label" not in table:
            raise ContentError(f"{where}: reference_label must describe the reference profile in words")
        for horizon, survival in _table(table.get("baseline_survival", {}), f"{where} baseline_survival").items():
            try:
                h = float(horizon)
            except ValueError:
                raise ContentError(
                    f"{where} baseline_survival: horizon {horizon!r} must be a number ({card.model.time_unit})"
                ) from None
            if h <= 0 or isinstance(survival, bool) or not isinstance(survival, (int, float)) or not 0 < survival <= 1:
                raise ContentError(f"{where} baseline_survival: S0({horizon}) must be in (0, 1] at a positive horizon")
            baseline[h] = float(survival)
    return SiteModel(
        card_id=card.id,
        kind=kind,
        label=label,
        version=version,
        names=names,
        coefficients=coefficients,
        coding=coding,
        intercept=float(intercept) if intercept is not None else None,
        reference=reference,
        reference_label=_opt_text(table.get("reference_label"), f"{where} reference_label"),
        baseline_survival=dict(sorted(baseline.items())),
        coefficients_from_site=bool(site_coefs),
    )


def _coding(raw: object, where: str) -> Coding:
    table = _table(raw, where)
    _keys(table, {"scale", "offset", "cutoffs"}, where)
    if "cutoffs" in table:
        if "scale" in table or "offset" in table:
            raise ContentError(f"{where}: give either cutoffs or scale/offset")
        cutoffs = [_number(c, f"{where} cutoffs") for c in _list(table["cutoffs"], f"{where} cutoffs")]
        if not cutoffs or cutoffs != sorted(set(cutoffs)):
            raise ContentError(f"{where}: cutoffs must be increasing numbers")
        return Coding(cutoffs=tuple(cutoffs))
    if "scale" not in table:
        raise ContentError(f"{where}: give scale (and optionally offset) or cutoffs")
    scale = _number(table["scale"], f"{where} scale")
    if scale <= 0:
        raise ContentError(f"{where}: scale must be positive")
    return Coding(scale=scale, offset=_number(table.get("offset", 0), f"{where} offset"))


# ---------------------------------------------------------------------------- templates
def _check_template(text: str, names: set[str], where: str) -> None:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ContentError(f"{where}: broken placeholder ({exc}); write a literal brace as {{{{ or }}}}") from None
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if spec or conv:
            raise ContentError(f"{where}: placeholder {{{name}}} must be a plain name (no format spec)")
        if name not in names:
            raise ContentError(f"{where}: unknown placeholder {{{name}}}")


def _check_summary_length(s: Situation, figures: dict[str, Any], where: str) -> None:
    """The summary with figures filled in and typical dynamic values must stay short."""
    typical = {name: "xxxxxxxxxx" for name in DYNAMIC_NAMES}
    for text in [s.summary] + [v.text for v in s.summary_variants]:
        filled = string.Formatter().vformat(text, (), _Lookup(figures, typical))
        if len(filled) >= SUMMARY_LIMIT - 20:
            raise ContentError(
                f"{where} situation {s.id}: summary is {len(filled)} characters with typical "
                f"values; keep it under {SUMMARY_LIMIT - 20} to leave room for patient values"
            )


class _Lookup(dict):
    def __init__(self, figures: dict, dynamic: dict) -> None:
        super().__init__({**{k: format_figure(v) for k, v in figures.items()}, **dynamic})

    def __missing__(self, key: str) -> str:
        return "xxxxxxxxxx"


def format_figure(value: Any) -> str:
    """A figure exactly as written in the card file: 21.0 stays '21.0', 0.075 stays '0.075'."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


# ---------------------------------------------------------------------------- small checks
def _replace(card: CardContent, **changes) -> CardContent:
    import dataclasses

    return dataclasses.replace(card, **changes)


def _check_concept(concepts: Any, concept_id: str, kinds: tuple[str, ...] | None, where: str) -> None:
    if concepts is None:
        return
    if concept_id not in concepts:
        raise ContentError(f"{where}: concept {concept_id!r} is not defined in concepts.toml")
    if kinds is not None:
        kind = concepts.concept(concept_id).kind
        if kind not in kinds:
            raise ContentError(f"{where}: concept {concept_id!r} is a {kind}, expected {' or '.join(kinds)}")


def _reference(raw: object, where: str, url_required: bool) -> Reference:
    table = _table(raw, where)
    _keys(table, {"label", "url"}, where, required={"label", "url"} if url_required else {"label"})
    url = _opt_text(table.get("url"), f"{where} url")
    if url is not None and not _URL.fullmatch(url):
        raise ContentError(f"{where}: url {url!r} must be an https URL")
    return Reference(label=_text(table["label"], f"{where} label"), url=url)


def _indicator(raw: object, where: str) -> str:
    value = _text(raw, where)
    if value not in INDICATORS:
        raise ContentError(f"{where}: {value!r} is not one of {INDICATORS}")
    return value


def _numbers(raw: object, where: str) -> dict[str, float]:
    return {k: _number(v, f"{where} {k}") for k, v in _table(raw, where).items()}


def _number(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise ContentError(f"{where}: must be a finite number")
    return float(raw)


def _bool(raw: object, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ContentError(f"{where}: must be true or false")
    return raw


def _table(value: object, where: str) -> dict:
    return toml_checks.table(value, where, ContentError)


def _list(value: object, where: str) -> list:
    return toml_checks.listing(value, where, ContentError)


def _keys(entry: dict, allowed: set[str], where: str, required: set[str] = frozenset()) -> None:
    toml_checks.known_keys(entry, allowed, where, required, ContentError)


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ContentError(f"{where}: must be a non-empty text")
    return value


def _opt_text(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))
