"""Render a CardResult as a CDS Hooks 2.0 card (JSON-ready dict).

The renderer computes no risk: it fills the card file's texts with the card's figures and
the patient's values as evaluate.py found them. The card is made to be read at a glance:
the `detail` (Markdown) is the situation's lead, the inputs used and missing in clinical
words (value, unit, date; values not used because they are dated after today or a newer
one could not be read, with their dates), and one line of evidence strength. The sections,
the site model's estimate, every caveat and every source are for the evidence page
(clinical/evidence.py uses `page_sections`, `strength_line`, `lead_text`). `links` hold
the evidence page (added by hook_call) and the primary source; `suggestions` are the card
file's `[[suggestions]]` whose situation and `when` hold, each a FHIR resource to create,
with a uuid derived from the card's (`suggestion_uuid`), so feedback can be checked against
the suggestions issued with that card; `overrideReasons` are the card file's coded reasons.
Text that comes from the patient record is escaped, so a record cannot inject Markdown
links or HTML into a card. No field is empty or null.
"""

from __future__ import annotations

import copy
import re
import string
import uuid
from datetime import date, timedelta
from typing import Any, cast

from cds_service.clinical.dates import day_of
from cds_service.clinical.evaluate import (
    INTRAOPERATIVE,
    MISSING,
    UNREADABLE,
    USED,
    CardResult,
    Estimate,
    InputValue,
    holds,
    not_used_future,
    number,
    percent,
    ratio,
)
from cds_service.clinical.record import FUTURE, OrderFact
from cds_service.content.cards import CardContent, CodeSystemRef, OverrideReasonSpec, Reference, When
from cds_service.content.templates import SUMMARY_LIMIT, format_figure

JUDGEMENT = "This card informs and does not replace clinical judgement."
_UNAVAILABLE_LABELS = {
    "patient": "patient demographics",
    "conditions": "conditions",
    "procedures": "procedures",
    "observations": "observations",
    "medicationRequests": "medication orders",
    "medicationStatements": "medication statements",
}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")  # inline Markdown / HTML; "(" is inert without "]"
_PATIENT_TEXT_LIMIT = 120


def render(
    result: CardResult,
    *,
    links: list[dict[str, Any]] | tuple[dict[str, Any], ...] = (),
    patient_id: str | None = None,
    card_uuid: str | None = None,
) -> dict[str, Any]:
    """The CDS Hooks card. `links` come first (the evidence page), then the primary source;
    `patient_id` (context.patientId) is the subject of the suggested resources."""
    card, s = result.card, result.situation
    values = _values(result)
    source = s.source or card.source
    card_uuid = card_uuid or str(uuid.uuid4())
    out: dict[str, Any] = {
        "uuid": card_uuid,
        "summary": _summary(result, values),
        "indicator": s.indicator or card.indicator,
        "detail": _detail(result, values),
        "source": {"label": source.label, "url": source.url},
    }
    if card.topic is not None:
        out["source"]["topic"] = {"system": card.topic.system, "code": card.topic.code, "display": card.topic.display}
    suggestions = suggestions_for(result, card_uuid, patient_id)
    if suggestions:
        out["suggestions"] = suggestions
        out["selectionBehavior"] = "at-most-one"
    if card.override_reasons:
        out["overrideReasons"] = [override_reason(card, r) for r in card.override_reasons]
    out["links"] = [*links, {"label": f"Source: {source.label}", "url": source.url, "type": "absolute"}]
    return out


# ---------------------------------------------------------------------------- override reasons
# The extension (CDS Hooks "Extensions": reverse-domain name) that carries a reason's HL7
# non-adherence category beside the card's own coding, which 2.0 clients keep using.
REASON_CATEGORY_EXTENSION = "org.example.hfs-cds.non-adherence-reason"


def override_reason(card: CardContent, reason: OverrideReasonSpec) -> dict[str, Any]:
    """A card's override reason as a CDS Hooks Coding, with its HL7 category (issue 19)."""
    out: dict[str, Any] = {"code": reason.code, "system": reason.system, "display": reason.display}
    if reason.category is not None:
        # the card's validator requires [override_reason_categories] for a reason with a category
        categories = cast(CodeSystemRef, card.override_reason_categories)
        out["extension"] = {
            REASON_CATEGORY_EXTENSION: {
                "system": categories.system,
                "version": categories.version,
                "code": reason.category,
                "display": reason.category_display,
            }
        }
    return out


def offered_reasons(card: CardContent) -> frozenset[tuple[str, str]]:
    """(system, code) of every reason a client may send back for this card: the card's own
    codings and their HL7 categories."""
    offered = {(r.system, r.code) for r in card.override_reasons}
    if card.override_reason_categories is not None:
        system = card.override_reason_categories.system
        offered |= {(system, r.category) for r in card.override_reasons if r.category is not None}
    return frozenset(offered)


# ---------------------------------------------------------------------------- suggestions
def suggestion_uuid(card_uuid: str, suggestion_id: str) -> str:
    """The suggestion's uuid: derived from the card's, so feedback can be checked against the
    suggestions issued with that card without storing them."""
    return str(uuid.uuid5(uuid.UUID(card_uuid), suggestion_id))


def issued_suggestions(card: CardContent, card_uuid: str) -> dict[str, str]:
    """uuid -> suggestion id, for every suggestion the card file can issue with this card uuid."""
    return {suggestion_uuid(card_uuid, g.id): g.id for g in card.suggestions}


def suggestions_for(result: CardResult, card_uuid: str, patient_id: str | None) -> list[dict[str, Any]]:
    out = []
    for g in result.card.suggestions:
        if result.situation.id not in g.situations or not all(_holds(w, result) for w in g.when):
            continue
        resource = copy.deepcopy(g.resource)
        if patient_id:
            resource["subject"] = {"reference": f"Patient/{patient_id}"}
        if g.occurrence_months_after_procedure is not None:
            due = _due_date(result, g.occurrence_months_after_procedure)
            if due is None:
                continue
            resource["occurrenceDateTime"] = due.isoformat()
        out.append(
            {
                "label": g.label,
                "uuid": suggestion_uuid(card_uuid, g.id),
                "isRecommended": False,
                "actions": [{"type": "create", "description": g.description, "resource": resource}],
            }
        )
    return out


def _due_date(result: CardResult, months: float) -> date | None:
    procedure = result.procedure
    if procedure is None or procedure.performed is None:
        return None
    due = day_of(procedure.performed) + timedelta(days=round(months * 30.4375))
    return max(due, result.today)


# ---------------------------------------------------------------------------- values
def _values(result: CardResult) -> dict[str, str]:
    card = result.card
    values = {name: format_figure(v) for name, v in card.figures.items()}
    for item in result.inputs:
        values[item.predictor] = escape(item.display) if item.status == USED else item.display
        if item.date is not None:
            values[f"{item.predictor}_date"] = item.date.isoformat()
    for p in card.predictors:
        values.setdefault(p.id, "not assessed here")
        values.setdefault(f"{p.id}_date", "date not recorded")
    site = result.site_model
    values["site_label"] = escape(site.label) if site else "none"
    values["site_version"] = escape(site.version) if site else "none"
    values["estimate_headline"] = result.estimate.headline if result.estimate else "not available"
    values.update(result.estimate_values(values))  # issue 11: the estimate's provenance placeholders
    factors = [i for i in result.inputs if i.status != INTRAOPERATIVE and not card.predictor(i.predictor).context]
    recorded = sum(1 for i in factors if i.status == USED)
    values["factors_recorded"] = str(recorded)
    values["factors_are"] = "is" if recorded == 1 else "are"  # "1 of the 5 factors is recorded"
    values["factors_total"] = str(len(factors))
    return values


def _fill(text: str, values: dict[str, str]) -> str:
    return string.Formatter().vformat(text, (), values)


def _holds(when: When | None, result: CardResult) -> bool:
    if when is None:
        return True
    item = result.input(when.predictor) if when.predictor else None
    return holds(when, item, result.estimate is not None, result.today)


def chosen(options: list[Any], result: CardResult) -> Any:
    """The first variant whose `when` holds (the last one is `otherwise`); None when it is omitted."""
    for variant in options:
        if variant.otherwise or _holds(variant.when, result):
            return None if variant.omit else variant
    return None


# ---------------------------------------------------------------------------- summary
def _summary(result: CardResult, values: dict[str, str]) -> str:
    text = chosen(result.situation.summary_options, result).text
    summary = " ".join(_fill(text, values).split())
    if len(summary) >= SUMMARY_LIMIT:
        summary = summary[: SUMMARY_LIMIT - 2].rstrip() + "…"
    return summary


# ---------------------------------------------------------------------------- detail
def _detail(result: CardResult, values: dict[str, str]) -> str:
    """The lead, the inputs used and missing in clinical words, one line of evidence strength.
    Everything else (sections, estimate, all caveats, sources) is on the evidence page."""
    parts = [_lead(result, values)]
    if result.retired:
        parts.append(result.retired)  # the site model's estimate withdrawn by monitoring: why
    parts.extend(_input_sections(result))
    strength = strength_line(result, values)
    if strength:
        parts.append(f"**Strength of evidence:** {strength}")
    parts.append(f"*{JUDGEMENT}*")
    return "\n\n".join(p.strip() for p in parts if p.strip())


def strength_line(result: CardResult, values: dict[str, str] | None = None) -> str:
    """The card's one line of evidence strength: the situation's `strength` (its figures come
    from another source), else the card file's [strength] line, else the first caveat shown;
    then any caveat chosen for this patient by a `when` (a patient-specific caveat, such as
    the one for children, stays on the card)."""
    values = values if values is not None else _figure_values(result)
    card = result.card
    texts = []
    own = result.situation.strength or card.strength
    options = [own] if own is not None else list(card.caveats)
    for entry in options:
        picked = chosen(entry.options, result)
        if picked is not None:
            texts.append(_fill(picked.text, values))
            break
    for entry in card.caveats:
        picked = chosen(entry.options, result)
        if picked is not None and picked.when is not None:
            texts.append(_fill(picked.text, values))
    return " ".join(dict.fromkeys(texts))


def caveat_texts(result: CardResult) -> list[str]:
    values = _figure_values(result)
    return [_fill(c.text, values) for c in (chosen(e.options, result) for e in result.card.caveats) if c is not None]


def page_sections(result: CardResult) -> list[dict[str, Any]]:
    """The situation's sections, filled, in the order the card file gives them, then the
    patient-specific estimate (or why there is none): what the evidence page shows."""
    card, s = result.card, result.situation
    values = _values(result)
    out = []
    for key in s.sections:
        section = chosen(card.sections[key].options, result)
        if section is not None:
            out.append({"key": key, "heading": _fill(section.heading, values), "body": _fill(section.body, values)})
    estimate_text = _estimate_section(result, values)
    if estimate_text:
        out.append({"key": "estimate", "heading": "Patient-specific estimate", "body": estimate_text})
    return out


def lead_text(result: CardResult) -> str:
    # strip: a lead may end with placeholders that are empty for this patient
    # the page shows the sections themselves, `on_card` ones too
    return _fill(result.situation.lead, _values(result)).strip()


def _lead(result: CardResult, values: dict[str, str]) -> str:
    """The lead, then the bodies of the situation's `on_card` sections that apply."""
    parts = [_fill(result.situation.lead, values)]
    for key in result.situation.on_card:
        section = chosen(result.card.sections[key].options, result)
        if section is not None:
            parts.append(_fill(section.body, values))
    return "\n\n".join(p.strip() for p in parts if p.strip())


def _figure_values(result: CardResult) -> dict[str, str]:
    return {name: format_figure(v) for name, v in result.card.figures.items()}


def sources(result: CardResult) -> list[Reference]:
    card, s = result.card, result.situation
    refs = [s.source or card.source, card.source, *card.references]
    seen, out = set(), []
    for r in refs:
        key = r.url or r.label  # one line per publication, the first label wins
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _estimate_section(result: CardResult, values: dict[str, str]) -> str:
    card, s = result.card, result.situation
    no_estimate = _fill(card.texts[s.no_estimate], values).strip() if s.no_estimate else ""
    if result.estimate is not None:
        return _fill(card.texts["site_estimate"], values).strip() + "\n\n" + _estimate_lines(result.estimate)
    if result.site_model is not None and result.estimate_problem:
        site = result.site_model
        problem = (
            f'The site-configured model "{escape(site.label)}" (version {escape(site.version)}) '
            f"gives no estimate for this patient: {result.estimate_problem}."
        )
        return problem + ("\n\n" + no_estimate if no_estimate else "")
    return no_estimate


def _estimate_lines(e: Estimate) -> str:
    lines = []
    if e.kind == "cox":
        lines.append(
            f"- Relative hazard of {e.outcome}: **{ratio(e.relative_hazard)}** compared with the site's "
            f"reference profile ({escape(e.reference_label or 'not described')})"
        )
        for horizon, p in e.event_probabilities:
            lines.append(f"- Estimated {e.outcome} by {number(horizon)} {e.time_unit}: **{percent(p)}**")
        if not e.event_probabilities:
            lines.append("- No absolute risk: the site model gives no baseline survival.")
    elif e.probability is not None:  # a logistic estimate always has one (evaluate._site_estimate)
        lines.append(f"- Estimated probability of {e.outcome}: **{percent(e.probability)}**")
        for label, p in e.alternatives:
            lines.append(f"- If {label.lower()} were present: {percent(p)}")
    coded = "; ".join(f"{label} = {number(round(x, 4))} ({coding})" for label, x, coding in e.coded_inputs)
    lines.append(f"- Inputs as coded by the site model: {coded}")
    if e.assumptions:
        lines.append(f"- Not recorded and taken as absent: {', '.join(e.assumptions)}")
    return "\n".join(lines)


def _input_sections(result: CardResult) -> list[str]:
    card = result.card
    used = [i for i in result.inputs if i.status == USED]
    context = {i.predictor for i in result.inputs if card.predictor(i.predictor).context}
    missing = [i for i in result.inputs if i.status in (MISSING, INTRAOPERATIVE)]
    unreadable = [i for i in result.inputs if i.status == UNREADABLE]
    lines = [_order_line(result.order, result.hook, result.order_note)] if result.order is not None else []
    lines += [_used_line(i) for i in used if i.predictor not in context] or [
        "- None of this card's other inputs is recorded."
    ]
    lines += [_used_line(i) for i in used if i.predictor in context]
    parts = ["### Patient data used\n\n" + "\n".join(lines)]
    if missing:
        parts.append("### Patient data missing or not yet known\n\n" + "\n".join(_missing_line(i) for i in missing))
    lines = [_unreadable_line(i) for i in unreadable]
    shown = {i.predictor for i in result.inputs if i.status == UNREADABLE or i.future or i.newer_unreadable}
    # (looked up by an unreadable input's concept, which may be None)
    labels: dict[str | None, str] = {c: p.label for p in card.predictors for c in p.concepts}
    by_concept: dict[str | None, str] = {c: p.id for p in card.predictors for c in p.concepts}
    for u in result.unreadable:
        if u.kind == FUTURE or by_concept.get(u.concept) in shown:
            continue
        label = labels.get(u.concept, (u.concept or "input").replace("_", " "))
        lines.append(f"- **{label}**: recorded but unreadable ({escape(u.reason)})")
    if lines:
        parts.append("### Recorded but unreadable\n\n" + "\n".join(dict.fromkeys(lines)))
    if result.unavailable:
        parts.append(
            "### Data that could not be retrieved\n\n"
            + "\n".join(
                f"- {_UNAVAILABLE_LABELS.get(k, escape(k))}: {escape(v)}" for k, v in sorted(result.unavailable.items())
            )
        )
    return parts


def _order_line(order: OrderFact, hook: str, note: str = "") -> str:
    line = f"- **Order being {'signed' if hook == 'order-sign' else 'selected'}**"
    display = order.match.display or order.display  # an order sent without text: the concepts file's words
    shown = [f'"{escape(display)}"'] if display else []
    if order.match.code and not order.match.by_text:
        shown.append(f"code {escape(order.match.code)}")
    if shown:
        line += ": " + ", ".join(shown)
    if order.match.by_text:
        line += "; recorded as free text"
    if note:  # why the order counts (its stated reason, or the patient's record)
        line += f"; {escape_note(note)}"
    return line


def _dates_not_used(i: InputValue) -> str:
    """The input's values not used, said once each: newer ones that could not be read (with
    the value used instead) and ones dated after today (the words of `not_used_future`)."""
    notes = []
    if i.newer_unreadable:
        days = [d.isoformat() for d in i.newer_unreadable if d is not None]
        plural = len(days) > 1
        newer = f"{'newer values' if plural else 'a newer value'}{f' from {join_words(days)}' if days else ''}"
        newer += " could not be read"
        if i.status == USED and i.date is not None:
            newer += f"; the value from {i.date.isoformat()} was used"
        notes.append(newer)
    if i.future:
        notes.append(not_used_future(i.future, i.future_what))
    return "; ".join(notes)


def join_words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _used_line(i: InputValue) -> str:
    line = f"- **{i.label}**: {escape(i.display)}"
    if i.date is not None:
        line += f", {i.date_label} {i.date.isoformat()}"
    if i.note:
        line += f"; {escape_note(i.note)}"
    if i.by_text:
        line += f'; recorded as free text ("{escape(i.matched_text or "")}")'
    others = _dates_not_used(i)
    return line + (f"; {others}" if others else "")


def _missing_line(i: InputValue) -> str:
    others = _dates_not_used(i)
    if i.status == INTRAOPERATIVE:
        return f"- **{i.label}**: {i.display}"
    if i.future and not i.newer_unreadable:
        return f"- **{i.label}**: {others}"
    return f"- **{i.label}**: not recorded ({escape_note(i.note)}); not assumed" + (f"; {others}" if others else "")


def _unreadable_line(i: InputValue) -> str:
    if i.future and not i.note and not i.newer_unreadable:  # only values dated after the call
        return f"- **{i.label}**: {not_used_future(i.future, i.future_what)}"
    line = f"- **{i.label}**: recorded but unreadable"
    reason = i.note.split(": ", 1)[-1] if i.note else ""  # the reason, without the resource type
    if reason or i.date is not None:
        line += (
            f" ({', '.join(x for x in (escape(reason) if reason else '', i.date.isoformat() if i.date else '') if x)})"
        )
    others = _dates_not_used(i)
    return line + (f"; {others}" if others else "")


def escape_note(note: str) -> str:
    """A note of several parts ("a; b"): each part bounded and escaped on its own, so a long
    first part does not cut off the next (a daily dose and the opioids not converted)."""
    return "; ".join(escape(part) for part in note.split("; "))


def escape(text: Any) -> str:
    """Patient-derived text as inert Markdown: one line, bounded, special characters escaped."""
    flat = " ".join(str(text).split())
    if len(flat) > _PATIENT_TEXT_LIMIT:
        flat = flat[: _PATIENT_TEXT_LIMIT - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", flat)
