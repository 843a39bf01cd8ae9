"""What an evidence page shows for one card, as JSON-ready data (no patient identifiers).

`page_data(result, specs)` turns a CardResult into the page's content: the charts (the
card's published figures, resolved from the card file by the chart specs, and this
patient's marker), the inputs table (value, unit, date, how it was read), the caveats and
the sources. It keeps nothing that identifies the patient: no id, name, birth date or
resource id, only what the page shows. The store keeps this dict for the page's lifetime.

`evidence_link(result, specs, save, base_url)` is the render hook: it makes the page data,
hands it to `save` (the store; returns an unguessable token) and returns the CDS Hooks
link (type "absolute") to put in the card's `links`.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any, cast

from cds_service.clinical.evaluate import (
    INTRAOPERATIVE,
    MISSING,
    UNREADABLE,
    USED,
    CardResult,
    InputValue,
    holds,
    model_values,
    not_used_future,
)
from cds_service.clinical.input_values import is_number
from cds_service.clinical.render import chosen, lead_text, page_sections, strength_line
from cds_service.content.cards import Predictor, When
from cds_service.content.chart_specs import ChartSpec, MarkerSpec, PointSpec, parse_ci
from cds_service.content.templates import format_figure
from cds_service.formatting import percent

PAGE_VERSION = 1
LINK_LABEL = "Evidence page: charts, data used and sources"
STATUS_WORDS = {
    USED: "used",
    MISSING: "not recorded",
    UNREADABLE: "recorded but unreadable",
    INTRAOPERATIVE: "only known during surgery",
}


def page_data(
    result: CardResult, specs: Mapping[str, tuple[ChartSpec, ...]] | None = None, summary: str | None = None
) -> dict[str, Any]:
    """The evidence page's content for one evaluated card (JSON-ready)."""
    card = result.card
    figures = {name: format_figure(v) for name, v in card.figures.items()}
    return {
        "version": PAGE_VERSION,
        "card_id": card.id,
        "card_version": card.version,
        "title": card.title,
        "summary": summary or "",
        "situation": result.situation.id,
        "hook": result.hook,
        "lead": lead_text(result),
        "sections": page_sections(result),
        "strength": strength_line(result),
        "charts": [c for c in (chart_data(spec, result) for spec in (specs or {}).get(card.id, ())) if c is not None],
        "inputs": [_input_row(result, item) for item in result.inputs],
        "caveats": [_fill(c.text, figures) for c in (chosen(e.options, result) for e in card.caveats) if c is not None],
        "sources": _sources(result),
        # How the patient's story was read: each operation (records merged into it, its stated
        # reason, body site) and each record set aside, with why (EVIDENCE.md "The patient's story").
        "story": [dict(n) for n in result.story_notes],
    }


def evidence_link(
    result: CardResult,
    specs: Mapping[str, tuple[ChartSpec, ...]] | None,
    save: Callable[[dict[str, Any]], str],
    base_url: str,
    summary: str | None = None,
) -> dict[str, Any]:
    """Save the card's page data and return its CDS Hooks link (type "absolute")."""
    token = save(page_data(result, specs, summary))
    return page_link(token, base_url)


def page_link(token: str, base_url: str) -> dict[str, Any]:
    return {"label": LINK_LABEL, "url": f"{base_url.rstrip('/')}/evidence/{token}", "type": "absolute"}


# ---------------------------------------------------------------------------- charts
def chart_data(spec: ChartSpec, result: CardResult) -> dict[str, Any] | None:
    """One chart: the published points named by the spec, and this patient's marker (a
    calibration chart: the learned model's calibration groups; None without one)."""
    if spec.kind == "calibration":
        return calibration_chart(spec, result)
    if spec.when_any and not any(_holds(w, result) for w in spec.when_any):
        return None
    card = result.card
    figures = card.figures
    labels = {name: format_figure(v) for name, v in figures.items()}
    chart: dict[str, Any] = {
        "kind": spec.kind,
        "title": _fill(spec.title, labels),
        "source": _fill(spec.source, labels),
        "x_label": spec.x_label,
        "y_label": spec.y_label,
        "y_max": spec.y_max,
        "end_note": _fill(spec.end_note, labels),
        "notes": [],
    }
    if spec.kind == "ratios":
        chart["measure"] = spec.measure
        chart["rows"] = [
            {
                "label": row.label,
                "value": float(figures[row.figure]),
                "text": labels[row.figure],
                "patient": _patient_words(result, row.predictor),
                **_ratio_ci(figures, row.ci),
            }
            for row in spec.rows
        ]
        return chart
    if spec.kind == "counts":
        chart["rows"] = [
            {
                "label": _fill(c.label, labels),
                "count": int(figures[c.figure]),
                "total": int(figures[c.of]),
                "text": f"{labels[c.figure]} of {labels[c.of]}",
            }
            for c in spec.counts
        ]
        return chart
    highlight_value = _used_value(result, spec.highlight) if spec.highlight else None
    percent = "%" in spec.y_label
    chart["series"] = [
        {
            "label": _fill(s.label, labels),
            "highlight": s.when is not None and highlight_value == s.when,
            "points": [_point(p, figures, labels, percent) for p in s.points],
        }
        for s in spec.series
    ]
    if spec.highlight and highlight_value is None and _has(result, spec.highlight):
        item = result.input(spec.highlight)
        chart["notes"].append(f"{item.label}: {STATUS_WORDS.get(item.status, item.status)}.")
    if spec.marker:
        chart["marker"] = _marker(result, spec.marker, chart, "x")
    if spec.reference:
        chart["reference"] = _marker(result, spec.reference, chart, "y")
    return chart


def calibration_chart(spec: ChartSpec, result: CardResult) -> dict[str, Any] | None:
    """The learned site model's calibration (its report's groups) with N, events, C-statistic
    and calibration slope in the spec's notes; None when the card has no learned model."""
    site = result.site_model
    learned = site.learned if site is not None else None
    if learned is None or not learned.calibration_groups:
        return None
    labels = {name: format_figure(v) for name, v in result.card.figures.items()}
    labels.update(model_values(result))
    return {
        "kind": "calibration",
        "title": _fill(spec.title, labels),
        "source": _fill(spec.source, labels),
        "x_label": spec.x_label,
        "y_label": spec.y_label,
        "end_note": _fill(spec.end_note, labels),
        "notes": [],
        "groups": [
            {
                "n": g.n,
                "predicted": 100 * g.predicted,
                "observed": None if g.observed is None else 100 * g.observed,
                "predicted_text": percent(g.predicted),
                "observed_text": "not available" if g.observed is None else percent(g.observed),
            }
            for g in learned.calibration_groups
        ],
    }


def _point(p: PointSpec, figures: dict[str, Any], labels: dict[str, Any], percent: bool) -> dict[str, Any]:
    unit = " %" if percent else ""
    point = {"label": p.label, "x": p.at, "y": float(figures[p.figure]), "text": labels[p.figure] + unit}
    if p.ci:
        # chart_specs checked at load that a point's ci figure is a low-high range
        low, high = cast(tuple[float, float], parse_ci(figures[p.ci]))
        point.update(low=low, high=high, ci_text=f"{figures[p.ci]}{unit}")
    return point


def _ratio_ci(figures: dict[str, Any], ci: str | None) -> dict[str, Any]:
    """The published 95 % CI of a ratio, or nothing (the chart says "CI not published")."""
    if not ci:
        return {}
    low, high = cast(tuple[float, float], parse_ci(figures[ci]))  # checked at load (chart_specs)
    return {"low": low, "high": high, "ci_text": str(figures[ci])}


def _holds(when: When, result: CardResult) -> bool:
    """A chart's predicate; a predictor this situation does not read holds nothing."""
    if when.predictor and not _has(result, when.predictor):
        return False
    item = result.input(when.predictor) if when.predictor else None
    return holds(when, item, result.estimate is not None, result.today)


def _marker(result: CardResult, spec: MarkerSpec, chart: dict[str, Any], axis: str) -> dict[str, Any] | None:
    """This patient's mark on the chart, or None with the sentence that says why not."""
    if not _has(result, spec.predictor):
        if spec.absent_text:
            chart["notes"].append(spec.absent_text)
        return None
    if any(_holds(w, result) for w in spec.unless):
        chart["notes"].append(spec.unless_text)
        return None
    item = result.input(spec.predictor)
    if item.status != USED or not is_number(item.value):
        chart["notes"].append(f"{spec.label}: {item.label.lower()} {STATUS_WORDS.get(item.status, item.status)}.")
        return None
    dated = f" ({item.date_label} {item.date.isoformat()})" if item.date and axis == "y" else ""
    return {axis: float(item.value) / spec.per_x_unit, "text": f"{spec.label}: {item.display}{dated}"}


# ---------------------------------------------------------------------------- inputs, sources
def _input_row(result: CardResult, item: InputValue) -> dict[str, Any]:
    predictor = result.card.predictor_by_id.get(item.predictor)
    how = predictor.how if predictor is not None else ""
    return {
        "label": item.label,
        "status": STATUS_WORDS.get(item.status, item.status),
        "value": item.display if item.status == USED else "",
        "unit": _unit(item, predictor),
        "date": item.date.isoformat() if item.date else "",
        "date_label": item.date_label if item.date else "",
        "how": how,
        "note": "; ".join(x for x in (item.note, _free_text(item), _not_used(item)) if x),
    }


def _free_text(item: InputValue) -> str:
    return f'recorded as free text ("{item.matched_text}")' if item.by_text else ""


def _not_used(item: InputValue) -> str:
    notes = [f"a newer value{f' from {d.isoformat()}' if d else ''} could not be read" for d in item.newer_unreadable]
    if item.future:
        notes.append(not_used_future(item.future, item.future_what))
    return "; ".join(notes)


def _unit(item: InputValue, predictor: Predictor | None) -> str:
    """The predictor's unit, unless the value as shown already says its own ("52 days")."""
    unit = getattr(predictor, "unit", None) or ""
    shown = item.display.strip() if item.status == USED else ""
    if not shown or _is_number_text(shown):
        return unit
    return ""


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sources(result: CardResult) -> list[dict[str, Any]]:
    card, s = result.card, result.situation
    seen, out = set(), []
    for r in (getattr(s, "source", None), card.source, *card.references):
        if r is None:
            continue
        key = r.url or r.label
        if key not in seen:
            seen.add(key)
            out.append({"label": r.label, "url": r.url or ""})
    return out


def _patient_words(result: CardResult, predictor: str | None, dated: bool = True) -> str:
    if not predictor or not _has(result, predictor):
        return "not used at this point"
    item = result.input(predictor)
    if item.status != USED:
        return STATUS_WORDS.get(item.status, item.status)
    return item.display + (f" ({item.date_label} {item.date.isoformat()})" if item.date and dated else "")


def _used_value(result: CardResult, predictor: str) -> Any:
    if not _has(result, predictor):
        return None
    item = result.input(predictor)
    return item.value if item.status == USED else None


def _fill(text: str, values: dict[str, str]) -> str:
    return string.Formatter().vformat(text, (), values) if text else ""


def _has(result: CardResult, predictor: str) -> bool:
    return any(item.predictor == predictor for item in result.inputs)
