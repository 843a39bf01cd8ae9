"""Render a CardResult as a CDS Hooks 2.0 card (JSON-ready dict).

The renderer computes no risk: it fills the card file's texts with the card's figures and
the patient's values as evaluate.py found them, and lays out the detail in Markdown:
situation, evidence sections, patient-specific estimate (or why there is none), inputs
used / missing / unreadable, evidence caveats, sources, and the reminder that the card
informs and does not replace clinical judgement. Text that comes from the patient record
is escaped, so a record cannot inject Markdown links or HTML into a card. No field is
empty or null.
"""

from __future__ import annotations

import re
import string
import uuid
from typing import Any

from cds_service.clinical.evaluate import (
    INTRAOPERATIVE,
    MISSING,
    UNREADABLE,
    USED,
    CardResult,
    Estimate,
    InputValue,
    holds,
    number,
    percent,
    ratio,
)
from cds_service.clinical.record import OrderFact
from cds_service.content.cards import Reference, When
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


def render(result: CardResult) -> dict:
    card, s = result.card, result.situation
    values = _values(result)
    source = s.source or card.source
    return {
        "uuid": str(uuid.uuid4()),
        "summary": _summary(result, values),
        "indicator": s.indicator or card.indicator,
        "detail": _detail(result, values),
        "source": {"label": source.label, "url": source.url},
    }


# ---------------------------------------------------------------------------- values
def _values(result: CardResult) -> dict[str, str]:
    card = result.card
    values = {name: format_figure(v) for name, v in card.figures.items()}
    for item in result.inputs:
        values[item.predictor] = escape(item.display) if item.status == USED else item.display
    for p in card.predictors:
        values.setdefault(p.id, "not assessed here")
    site = result.site_model
    values["site_label"] = escape(site.label) if site else "none"
    values["site_version"] = escape(site.version) if site else "none"
    values["estimate_headline"] = result.estimate.headline if result.estimate else "not available"
    values.update(result.estimate_values(values))  # issue 11: the estimate's provenance placeholders
    factors = [i for i in result.inputs if i.status != INTRAOPERATIVE and not card.predictor(i.predictor).context]
    values["factors_recorded"] = str(sum(1 for i in factors if i.status == USED))
    values["factors_total"] = str(len(factors))
    return values


def _fill(text: str, values: dict[str, str]) -> str:
    return string.Formatter().vformat(text, (), values)


def _holds(when: When | None, result: CardResult) -> bool:
    if when is None:
        return True
    item = result.input(when.predictor) if when.predictor else None
    return holds(when, item, result.estimate is not None, result.today)


def chosen(options: list, result: CardResult):
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
    card, s = result.card, result.situation
    parts = [_fill(s.lead, values)]
    for key in s.sections:
        section = chosen(card.sections[key].options, result)
        if section is not None:
            parts.append(f"### {_fill(section.heading, values)}\n\n{_fill(section.body, values)}")
    estimate_text = _estimate_section(result, values)
    if estimate_text:
        parts.append(estimate_text)
    parts.extend(_input_sections(result))
    caveats = [c for c in (chosen(entry.options, result) for entry in card.caveats) if c is not None]
    parts.append("### Strength of evidence\n\n" + "\n".join(f"- {_fill(c.text, values)}" for c in caveats))
    parts.append("### Sources\n\n" + "\n".join(f"- {_reference(r)}" for r in _sources(result)))
    parts.append(f"*{JUDGEMENT}*")
    return "\n\n".join(p.strip() for p in parts if p.strip())


def _sources(result: CardResult) -> list[Reference]:
    card, s = result.card, result.situation
    refs = [s.source or card.source, card.source, *card.references]
    seen, out = set(), []
    for r in refs:
        key = r.url or r.label  # one line per publication, the first label wins
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _reference(r: Reference) -> str:
    return f"{r.label}: <{r.url}>" if r.url else r.label


def _estimate_section(result: CardResult, values: dict[str, str]) -> str:
    card, s = result.card, result.situation
    heading = "### Patient-specific estimate\n\n"
    no_estimate = _fill(card.texts[s.no_estimate], values).strip() if s.no_estimate else ""
    if result.estimate is not None:
        return heading + _fill(card.texts["site_estimate"], values).strip() + "\n\n" + _estimate_lines(result.estimate)
    if result.site_model is not None and result.estimate_problem:
        site = result.site_model
        problem = (
            f'The site-configured model "{escape(site.label)}" (version {escape(site.version)}) '
            f"gives no estimate for this patient: {result.estimate_problem}."
        )
        return heading + problem + ("\n\n" + no_estimate if no_estimate else "")
    return heading + no_estimate if no_estimate else ""


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
    else:
        lines.append(f"- Estimated probability of {e.outcome}: **{percent(e.probability)}**")
        for label, p in e.alternatives:
            lines.append(f"- If {label.lower()} were present: {percent(p)}")
    coded = "; ".join(f"{label} = {number(round(x, 4))} ({coding})" for label, x, coding in e.coded_inputs)
    lines.append(f"- Inputs as coded by the site model: {coded}")
    if e.assumptions:
        lines.append(f"- Not recorded and taken as absent: {', '.join(e.assumptions)}")
    return "\n".join(lines)


def _input_sections(result: CardResult) -> list[str]:
    used = [i for i in result.inputs if i.status == USED]
    context = {i.predictor for i in result.inputs if result.card.predictor(i.predictor).context}
    missing = [i for i in result.inputs if i.status in (MISSING, INTRAOPERATIVE)]
    unreadable = [i for i in result.inputs if i.status == UNREADABLE]
    lines = [_order_line(result.order, result.hook)] if result.order is not None else []
    lines += [_used_line(i) for i in used if i.predictor not in context] or [
        "- None of this card's other inputs is recorded."
    ]
    lines += [_used_line(i) for i in used if i.predictor in context]
    parts = ["### Patient data used\n\n" + "\n".join(lines)]
    if missing:
        parts.append("### Patient data missing or not yet known\n\n" + "\n".join(_missing_line(i) for i in missing))
    lines = [f"- **{i.label}**: recorded but unreadable ({escape(i.note)})" for i in unreadable]
    covered = {i.note for i in unreadable}
    labels = {c: p.label for p in result.card.predictors for c in p.concepts}
    for u in result.unreadable:
        note = f"{u.resource_type}: {u.reason}"
        if note not in covered:
            lines.append(
                f"- **{labels.get(u.concept, (u.concept or 'input').replace('_', ' '))}**: recorded but "
                f"unreadable ({escape(note)})"
            )
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


def _order_line(order: OrderFact, hook: str) -> str:
    line = f"- **Order being {'signed' if hook == 'order-sign' else 'selected'}**: {order.resource_type}"
    if order.match.display:
        line += f' "{escape(order.match.display)}"'
    if order.match.code and not order.match.by_text:
        line += f", code {escape(order.match.code)}"
    if order.match.by_text:
        line += "; matched by text only, not by a code"
    return line


def _used_line(i: InputValue) -> str:
    line = f"- **{i.label}**: {escape(i.display)}"
    if i.date is not None:
        line += f", {i.date_label} {i.date.isoformat()}"
    if i.note:
        line += f"; {escape(i.note)}"
    if i.by_text:
        line += f'; matched by text only ("{escape(i.matched_text or "")}"), not by a code'
    return line


def _missing_line(i: InputValue) -> str:
    if i.status == INTRAOPERATIVE:
        return f"- **{i.label}**: {i.display} ({escape(i.note)})"
    return f"- **{i.label}**: not recorded ({escape(i.note)}); not assumed"


def escape(text: Any) -> str:
    """Patient-derived text as inert Markdown: one line, bounded, special characters escaped."""
    flat = " ".join(str(text).split())
    if len(flat) > _PATIENT_TEXT_LIMIT:
        flat = flat[: _PATIENT_TEXT_LIMIT - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", flat)
