"""Which figures of each card file the evidence page draws, and how (cards/evidence/charts.toml).

A chart spec holds no figure: it names the card's [figures] and, for a time axis, the
published time point of each one. The loader checks every name against the loaded cards
at start-up (a typo is a ContentError, never a chart that silently lacks a point).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cds_service.content.cards import CardContent, When
from cds_service.content.errors import ContentError
from cds_service.content.templates import MODEL_REPORT_NAMES

CHARTS_FILE = Path("evidence") / "charts.toml"
KINDS = ("curve", "points", "ratios", "counts", "calibration")
# A calibration chart draws a learned site model's report (no figure of the card file); its
# title and notes may name the report's numbers.
CALIBRATION_NAMES = MODEL_REPORT_NAMES
_CI = re.compile(r"\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*")


@dataclass(frozen=True)
class PointSpec:
    label: str
    figure: str
    at: float | None = None  # position on a numeric time axis (curve)
    ci: str | None = None  # figure holding the 95 % CI as "low-high"


@dataclass(frozen=True)
class SeriesSpec:
    label: str
    points: tuple[PointSpec, ...]
    when: str | None = None  # highlighted when the highlight predictor has this value


@dataclass(frozen=True)
class MarkerSpec:
    predictor: str
    label: str
    per_x_unit: float = 1.0
    # No patient mark when any of these holds (the figure does not apply to this patient),
    # and the sentence the page says instead.
    unless: tuple[When, ...] = ()
    unless_text: str = ""
    # The sentence said when the situation does not read the predictor at all (a chart of
    # outcomes after an operation, on the page of the order for it).
    absent_text: str = ""


@dataclass(frozen=True)
class RatioSpec:
    label: str
    figure: str
    predictor: str | None = None
    ci: str | None = None  # figure holding the published 95 % CI as "low-high"; none: "CI not published"


@dataclass(frozen=True)
class CountSpec:
    label: str
    figure: str  # the number of patients with the outcome
    of: str  # the figure of the series' size


@dataclass(frozen=True)
class ChartSpec:
    card: str
    kind: str
    title: str
    source: str = ""  # who published the figures drawn (shown with the title)
    x_label: str = ""
    y_label: str = ""
    y_max: float | None = None
    end_note: str = ""
    measure: str = ""
    series: tuple[SeriesSpec, ...] = ()
    rows: tuple[RatioSpec, ...] = ()
    counts: tuple[CountSpec, ...] = ()
    when_any: tuple[When, ...] = ()  # drawn only when one of these holds (none: always)
    marker: MarkerSpec | None = None  # a position on the x axis (curve)
    reference: MarkerSpec | None = None  # a level on the y axis (points)
    highlight: str | None = None  # predictor whose value selects the highlighted series


def parse_ci(text: object) -> tuple[float, float] | None:
    """'33-63' -> (33.0, 63.0); None when the text is not a low-high range."""
    match = _CI.fullmatch(str(text))
    if not match:
        return None
    low, high = float(match.group(1)), float(match.group(2))
    return (low, high) if low <= high else None


def load_chart_specs(
    cards_dir: Path, cards: list[CardContent] | tuple[CardContent, ...]
) -> dict[str, tuple[ChartSpec, ...]]:
    """Chart specs per card id; {} when the cards folder has no charts file."""
    path = Path(cards_dir) / CHARTS_FILE
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ContentError(f"{path}: cannot read ({exc})") from exc
    by_id = {c.id: c for c in cards}
    specs: dict[str, list[ChartSpec]] = {}
    for i, raw in enumerate(_list(data.get("charts", []), f"{path} charts")):
        where = f"{path} [[charts]] #{i + 1}"
        spec = _chart(_table(raw, where), where)
        card = by_id.get(spec.card)
        if card is None:
            continue  # a site without this card file: nothing to draw
        _check(spec, card, where)
        specs.setdefault(spec.card, []).append(spec)
    return {k: tuple(v) for k, v in specs.items()}


def _chart(raw: dict[str, Any], where: str) -> ChartSpec:
    allowed = {
        "card",
        "kind",
        "title",
        "source",
        "counts",
        "when_any",
        "x_label",
        "y_label",
        "y_max",
        "end_note",
        "measure",
        "series",
        "rows",
        "marker",
        "reference",
        "highlight",
    }
    unknown = set(raw) - allowed
    if unknown:
        raise ContentError(f"{where}: unknown keys {sorted(unknown)}")
    kind = _text(raw.get("kind"), f"{where} kind")
    if kind not in KINDS:
        raise ContentError(f"{where}: kind must be one of {', '.join(KINDS)}")
    series = tuple(
        SeriesSpec(
            label=_text(s.get("label"), f"{where} series label"),
            when=s.get("when"),
            points=tuple(
                PointSpec(
                    label=_text(p.get("label"), f"{where} point label"),
                    figure=_text(p.get("figure"), f"{where} point figure"),
                    at=_number(p["at"], f"{where} point at") if "at" in p else None,
                    ci=p.get("ci"),
                )
                for p in (_table(x, where) for x in _list(s.get("points", []), f"{where} points"))
            ),
        )
        for s in (_table(x, where) for x in _list(raw.get("series", []), f"{where} series"))
    )
    rows = tuple(
        RatioSpec(
            label=_text(r.get("label"), f"{where} row label"),
            figure=_text(r.get("figure"), f"{where} row figure"),
            predictor=r.get("predictor"),
            ci=r.get("ci"),
        )
        for r in (_table(x, where) for x in _list(raw.get("rows", []), f"{where} rows"))
    )
    counts = tuple(
        CountSpec(
            label=_text(r.get("label"), f"{where} count label"),
            figure=_text(r.get("figure"), f"{where} count figure"),
            of=_text(r.get("of"), f"{where} count of"),
        )
        for r in (_table(x, where) for x in _list(raw.get("counts", []), f"{where} counts"))
    )
    highlight = raw.get("highlight")
    spec = ChartSpec(
        card=_text(raw.get("card"), f"{where} card"),
        kind=kind,
        title=_text(raw.get("title"), f"{where} title"),
        source=_text(raw.get("source"), f"{where} source (who published what the chart draws)"),
        x_label=str(raw.get("x_label", "")),
        y_label=str(raw.get("y_label", "")),
        y_max=_number(raw["y_max"], f"{where} y_max") if "y_max" in raw else None,
        end_note=str(raw.get("end_note", "")),
        measure=str(raw.get("measure", "")),
        series=series,
        rows=rows,
        counts=counts,
        when_any=_whens(raw.get("when_any", []), f"{where} when_any"),
        marker=_marker(raw.get("marker"), f"{where} marker"),
        reference=_marker(raw.get("reference"), f"{where} reference"),
        highlight=_table(highlight, f"{where} highlight").get("predictor") if highlight is not None else None,
    )
    if kind == "ratios" and not rows:
        raise ContentError(f"{where}: a ratios chart needs rows")
    if kind == "counts" and not counts:
        raise ContentError(f"{where}: a counts chart needs counts")
    if kind not in ("ratios", "counts", "calibration") and not any(s.points for s in series):
        raise ContentError(f"{where}: a {kind} chart needs series with points")
    if kind == "curve" and any(p.at is None for s in series for p in s.points):
        raise ContentError(f"{where}: every point of a curve needs `at` (its published time point)")
    return spec


def _marker(raw: object, where: str) -> MarkerSpec | None:
    if raw is None:
        return None
    table = _table(raw, where)
    return MarkerSpec(
        predictor=_text(table.get("predictor"), f"{where} predictor"),
        label=_text(table.get("label", "This patient"), f"{where} label"),
        per_x_unit=_number(table.get("per_x_unit", 1), f"{where} per_x_unit"),
        unless=_whens(table.get("unless", []), f"{where} unless"),
        unless_text=str(table.get("unless_text", "")),
        absent_text=str(table.get("absent_text", "")),
    )


def _whens(raw: object, where: str) -> tuple[When, ...]:
    """Predicates in the card files' `when` language (one test of one predictor each)."""
    out = []
    for i, item in enumerate(_list(raw, where)):
        try:
            out.append(When.model_validate(_table(item, where)))
        except ValidationError as exc:
            raise ContentError(f"{where} #{i + 1}: {exc.errors()[0]['msg']}") from None
    return tuple(out)


def _check(spec: ChartSpec, card: CardContent, where: str) -> None:
    figures = card.figures

    def number_figure(name: str) -> None:
        value = figures.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ContentError(f"{where}: {card.id} has no numeric figure {name!r}")

    for s in spec.series:
        for p in s.points:
            number_figure(p.figure)
            if p.ci is not None and parse_ci(figures.get(p.ci, "")) is None:
                raise ContentError(f"{where}: {card.id} figure {p.ci!r} is not a 'low-high' range")
    for r in spec.rows:
        number_figure(r.figure)
        if r.ci is not None and parse_ci(figures.get(r.ci, "")) is None:
            raise ContentError(f"{where}: {card.id} figure {r.ci!r} is not a 'low-high' range")
    for c in spec.counts:
        number_figure(c.figure)
        number_figure(c.of)
    for m in (spec.marker, spec.reference):
        if m is not None and m.unless and not m.unless_text:
            raise ContentError(f"{where}: a marker with `unless` needs `unless_text` (what the page says instead)")
    predictors = [m.predictor for m in (spec.marker, spec.reference) if m]
    whens = [*spec.when_any, *(w for m in (spec.marker, spec.reference) if m for w in m.unless)]
    predictors += [w.predictor for w in whens if w.predictor]
    predictors += [r.predictor for r in spec.rows if r.predictor]
    predictors += [spec.highlight] if spec.highlight else []
    for pid in predictors:
        if pid not in card.predictor_by_id:
            raise ContentError(f"{where}: {card.id} has no predictor {pid!r}")
    allowed = set(figures) | (CALIBRATION_NAMES if spec.kind == "calibration" else set())
    for text in (
        spec.title,
        spec.source,
        spec.end_note,
        *(s.label for s in spec.series),
        *(c.label for c in spec.counts),
    ):
        for name in re.findall(r"\{([a-z0-9_]+)\}", text):
            if name not in allowed:
                raise ContentError(f"{where}: {card.id} has no figure {name!r} (placeholder in a label)")


def _table(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ContentError(f"{where}: expected a table")
    return value


def _list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ContentError(f"{where}: expected a list")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ContentError(f"{where}: expected a non-empty text")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContentError(f"{where}: expected a number")
    return float(value)
