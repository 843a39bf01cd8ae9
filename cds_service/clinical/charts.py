"""Server-rendered SVG charts for the evidence page: chart data in, SVG text out.

Pure functions, no JavaScript, no front-end build. The chart data (a JSON-ready dict made
by clinical/evidence.py from a card's [figures] and the patient's inputs) holds only
published points; a curve is drawn through them and never beyond the last one. Each SVG
carries its text alternative (<title> and <desc>, naming the source) and `chart_table`
gives the same numbers as a data table. Colours come from PALETTE, whose contrast against
the white background passes WCAG AA for text (4.5:1), checked by a unit test.

Every chart is laid out for a width: WIDTH for a desktop, NARROW_WIDTH for a phone (the
page shows one or the other by CSS), both at 13 px text so that a phone shows the text at
about its size. Labels are placed by `_Labels`: each goes to the first of its candidate
spots that stays inside the drawing and overlaps no label, patient line or confidence
interval already drawn (text widths are estimated on the wide side); a label too long for
the width is wrapped. The drawing's height follows from what was placed.

Chart kinds:
- curve: published points on a numeric time axis (x from 0 to the last published point),
  with the patient's position marked (at the right edge, with a note, when past the end);
- points: categorical time points, series with optional 95 % CIs, an optional horizontal
  reference level (the patient's own value) and an optionally highlighted series;
- ratios: published hazard / odds ratios as a point on a log axis around 1, the 95 % CI
  drawn only where one was published ("CI not published" otherwise), and the patient's
  value of each factor written under it;
- counts: "n of N" outcomes of a series (bars of N patients, n filled);
- calibration: a learned site model's calibration groups (mean predicted risk against the
  observed risk, both in %) with the line of perfect calibration; its numbers come from
  the model's report, not from a publication.
"""

from __future__ import annotations

import itertools
import math
from html import escape
from typing import Any, TypedDict, cast

from cds_service import formatting

BACKGROUND = "#ffffff"


class _Palette(TypedDict):
    text: str
    axis: str
    grid: str
    series: tuple[str, ...]
    marker: str
    ci: str


PALETTE: _Palette = {
    "text": "#1a1a1a",
    "axis": "#595959",
    "grid": "#767676",
    "series": ("#1f4e79", "#8a4b08", "#1e6b3a", "#5b2c6f"),
    "marker": "#b0002a",
    "ci": "#1f4e79",
}
WIDTH = 640
NARROW_WIDTH = 360
FONT = 13  # px in the drawing's units
_CHAR = 0.62 * FONT  # estimated advance of one character (on the wide side)
_CHAR_BOLD = 0.68 * FONT
_LINE = 17  # distance between two lines of a wrapped label
_PLOT_HEIGHT = {WIDTH: 210, NARROW_WIDTH: 200}


def render_chart(chart: dict[str, Any], chart_id: str = "chart", width: int = WIDTH) -> str:
    """The chart as one standalone <svg> element (UTF-8 text), laid out for `width`."""
    kind = chart.get("kind")
    labels = _Labels(width)
    if kind == "curve":
        body = _curve(chart, labels)
    elif kind == "points":
        body = _points(chart, labels)
    elif kind == "ratios":
        body = _ratios(chart, labels)
    elif kind == "counts":
        body = _counts(chart, labels)
    elif kind == "calibration":
        body = _calibration(chart, labels)
    else:
        raise ValueError(f"unknown chart kind {kind!r}")
    height = math.ceil(labels.bottom + 10)
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    title = chart.get("title", "") + (f" (source: {chart['source']})" if chart.get("source") else "")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{_a(kind)}" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'aria-labelledby="{_a(title_id)} {_a(desc_id)}" font-family="system-ui, sans-serif" font-size="{FONT}">'
        f'<title id="{_a(title_id)}">{_t(title)}</title>'
        f'<desc id="{_a(desc_id)}">{_t(describe(chart))}</desc>'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="{BACKGROUND}"/>'
        f"{body}</svg>"
    )


def describe(chart: dict[str, Any]) -> str:
    """The chart in words (the SVG <desc>): every published point and the patient's marker."""
    parts = []
    kind = chart.get("kind")
    if kind == "calibration":
        for g in chart.get("groups", []):
            parts.append(f"{g['n']} patients: predicted {g['predicted_text']}, observed {g['observed_text']}.")
    elif kind == "ratios":
        for row in chart.get("rows", []):
            parts.append(
                f"{row['label']}: {chart.get('measure', 'ratio')} {row['text']} ({_ci_words(row)}); "
                f"this patient: {row['patient']}."
            )
    elif kind == "counts":
        for row in chart.get("rows", []):
            parts.append(f"{row['label']}: {row['text']}.")
    else:
        for s in chart.get("series", []):
            points = ", ".join(_point_words(p) for p in s["points"])
            parts.append(f"{s['label']}{' (this patient)' if s.get('highlight') else ''}: {points}.")
        for key in ("marker", "reference"):
            if chart.get(key):
                parts.append(chart[key]["text"] + ".")
    parts.extend(chart.get("notes", []))
    if chart.get("end_note"):
        parts.append(chart["end_note"])
    if chart.get("source"):
        parts.append(f"Source: {chart['source']}.")
    return " ".join(parts)


def chart_table(chart: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The chart's numbers as a table: (column headers, rows of cells)."""
    if chart.get("kind") == "calibration":
        return (
            ["Group", "Patients", chart.get("x_label") or "Predicted", chart.get("y_label") or "Observed"],
            [
                [str(i + 1), str(g["n"]), g["predicted_text"], g["observed_text"]]
                for i, g in enumerate(chart.get("groups", []))
            ],
        )
    if chart.get("kind") == "ratios":
        return (
            ["Factor", chart.get("measure", "Ratio"), "95 % CI", "This patient"],
            [[r["label"], r["text"], r.get("ci_text") or "not published", r["patient"]] for r in chart.get("rows", [])],
        )
    if chart.get("kind") == "counts":
        return (["Outcome", "Patients"], [[r["label"], r["text"]] for r in chart.get("rows", [])])
    labels: list[str] = []
    for s in chart.get("series", []):
        for p in s["points"]:
            if p["label"] not in labels:
                labels.append(p["label"])
    headers = [chart.get("x_label") or "Time", *(s["label"] for s in chart.get("series", []))]
    rows = []
    for label in labels:
        row = [label]
        for s in chart.get("series", []):
            match = next((p for p in s["points"] if p["label"] == label), None)
            row.append(_value_words(match) if match else "not published")
        rows.append(row)
    return headers, rows


# ---------------------------------------------------------------------------- labels
class _Labels:
    """The text and the obstacles of one drawing: where a label may go without covering
    another label, a patient line or an interval, and without leaving the drawing."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.boxes: list[tuple[float, float, float, float]] = []
        self.soft: list[tuple[float, float, float, float]] = []  # avoided when possible: a series' line
        self.bottom = 0.0

    @staticmethod
    def text_width(text: str, bold: bool = False) -> float:
        return len(text) * (_CHAR_BOLD if bold else _CHAR)

    def wrap(self, text: str, room: float, bold: bool = False) -> list[str]:
        """The text in lines no wider than `room` (a word longer than that stands alone)."""
        lines: list[str] = []
        for word in str(text).split():
            if lines and self.text_width(lines[-1] + " " + word, bold) <= room:
                lines[-1] += " " + word
            else:
                lines.append(word)
        return lines or [""]

    def box(self, x: float, y: float, lines: list[str], anchor: str, bold: bool) -> tuple[float, float, float, float]:
        w = max(self.text_width(line, bold) for line in lines)
        x0 = x - w / 2 if anchor == "middle" else x - w if anchor == "end" else x
        return (x0, y - FONT * 0.9, x0 + w, y + FONT * 0.3 + _LINE * (len(lines) - 1))

    def block(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """An obstacle labels keep clear of (a patient line, an interval, a bar)."""
        self.boxes.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        self.bottom = max(self.bottom, y0, y1)

    def avoid(self, x0: float, y0: float, x1: float, y1: float) -> None:
        """A place labels keep clear of when they can (a piece of a series' line)."""
        self.soft.append((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))

    def _free(self, b: tuple[float, float, float, float], soft: bool = False) -> bool:
        if b[0] < 2 or b[2] > self.width - 2 or b[1] < 2:
            return False
        others = self.boxes + self.soft if soft else self.boxes
        return all(b[2] <= o[0] or b[0] >= o[2] or b[3] <= o[1] or b[1] >= o[3] for o in others)

    def place(
        self,
        text: str | list[str],
        candidates: list[tuple[float, float, str]],
        *,
        bold: bool = False,
        fill: str = PALETTE["text"],
        css: str = "",
    ) -> str:
        """SVG <text> at the first free candidate (x, baseline y, anchor); if none is free,
        the first candidate moved down below everything placed so far."""
        lines = text if isinstance(text, list) else [text]
        for soft in (True, False):  # clear of the lines if possible, else only of the rest
            for x, y, anchor in candidates:
                x = self._inside(x, lines, anchor, bold)
                b = self.box(x, y, lines, anchor, bold)
                if self._free(b, soft):
                    return self._text(x, y, lines, anchor, bold, fill, css, b)
        x, _y, anchor = candidates[0]
        x = self._inside(x, lines, anchor, bold)
        y = max(o[3] for o in self.boxes) + FONT + 2 if self.boxes else FONT + 4
        return self._text(x, y, lines, anchor, bold, fill, css, self.box(x, y, lines, anchor, bold))

    def _inside(self, x: float, lines: list[str], anchor: str, bold: bool) -> float:
        """x moved so that the text stays inside the drawing's width."""
        w = max(self.text_width(line, bold) for line in lines)
        left = x - w / 2 if anchor == "middle" else x - w if anchor == "end" else x
        if left < 3:
            x += 3 - left
        elif left + w > self.width - 3:
            x -= left + w - (self.width - 3)
        return x

    def _text(
        self,
        x: float,
        y: float,
        lines: list[str],
        anchor: str,
        bold: bool,
        fill: str,
        css: str,
        b: tuple[float, float, float, float],
    ) -> str:
        self.boxes.append(b)
        self.bottom = max(self.bottom, b[3])
        weight = ' font-weight="bold"' if bold else ""
        cls = f' class="{_a(css)}"' if css else ""
        if len(lines) == 1:
            return (
                f'<text{cls} x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{fill}"{weight}>{_t(lines[0])}</text>'
            )
        # a space between the lines keeps the words apart in the text (screen readers, copy)
        spans = " ".join(
            f'<tspan x="{x:.1f}" y="{y + i * _LINE:.1f}">{_t(line)}</tspan>' for i, line in enumerate(lines)
        )
        return f'<text{cls} text-anchor="{anchor}" fill="{fill}"{weight}>{spans}</text>'


# ---------------------------------------------------------------------------- kinds
class _Plot:
    y_lines: list[str]  # the wrapped y-axis label, set by _layout

    def __init__(self, x0: float, x1: float, y_max: float, left: float, right: float, top: float, bottom: float):
        self.x0, self.x1, self.y_max = x0, x1, y_max
        self.left, self.right, self.top, self.bottom = left, right, top, bottom

    def x(self, value: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (value - self.x0) / span * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - value / self.y_max * (self.bottom - self.top)


def _layout(
    chart: dict[str, Any], labels: _Labels, x0: float, x1: float, y_max: float, marker_text: str | None
) -> tuple[list[str], _Plot, list[str]]:
    """Legend, then a band for the patient's label, then the plot: (svg parts, plot)."""
    width = labels.width
    plot_height = _PLOT_HEIGHT.get(width, 200)
    y_lines = labels.wrap(chart.get("y_label", ""), plot_height) if chart.get("y_label") else []
    tick_room = max(labels.text_width(_num(v)) for v in _y_ticks(y_max))
    left = 6 + _LINE * len(y_lines) + tick_room + 12
    right = width - (18 if width < WIDTH else 28)
    out, y = _legend(chart, labels, left, right)
    marker_lines: list[str] = []
    if marker_text:
        marker_lines = labels.wrap(marker_text, right - left, bold=True)
        y += _LINE * len(marker_lines) + 4
    top = y + 12
    plot = _Plot(x0, x1, y_max, left, right, top, top + plot_height)
    plot.y_lines = y_lines
    return out, plot, marker_lines


def _legend(chart: dict[str, Any], labels: _Labels, left: float, right: float) -> tuple[list[str], float]:
    out: list[str] = []
    x, y = left, 18.0
    for i, s in enumerate(chart.get("series", [])):
        colour = _colour(i)
        dash = "" if s.get("highlight") or not _any_highlight(chart) else ' stroke-dasharray="5 3"'
        label = s["label"] + (" (this patient)" if s.get("highlight") else "")
        w = 28 + labels.text_width(label) + 16
        if x > left and x + w > right:
            x, y = left, y + _LINE + 3
        out.append(
            f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 22:.1f}" y2="{y - 4:.1f}" stroke="{colour}" stroke-width="3"{dash}/>'
        )
        out.append(labels.place(label, [(x + 28, y, "start")], css="legend"))
        x += w
    return out, (y if chart.get("series") else 0.0)


def _frame(plot: _Plot, chart: dict[str, Any], labels: _Labels, y_ticks: list[float]) -> list[str]:
    out = []
    for v in y_ticks:
        py = plot.y(v)
        out.append(
            f'<line x1="{plot.left:.1f}" y1="{py:.1f}" x2="{plot.right:.1f}" y2="{py:.1f}" stroke="{PALETTE["grid"]}" '
            f'stroke-width="0.6" stroke-dasharray="2 3"/>'
        )
        out.append(labels.place(_num(v), [(plot.left - 8, py + 4, "end")], css="tick"))
    out.append(
        f'<line x1="{plot.left:.1f}" y1="{plot.bottom:.1f}" x2="{plot.right:.1f}" y2="{plot.bottom:.1f}" stroke="{PALETTE["axis"]}" stroke-width="1.5"/>'
        f'<line x1="{plot.left:.1f}" y1="{plot.top:.1f}" x2="{plot.left:.1f}" y2="{plot.bottom:.1f}" stroke="{PALETTE["axis"]}" stroke-width="1.5"/>'
    )
    lines = getattr(plot, "y_lines", [])
    if lines:  # rotated along the y axis, wrapped to its height, one line after the other
        middle = (plot.top + plot.bottom) / 2
        spans = " ".join(
            f'<tspan x="{middle:.1f}" dy="{0 if i == 0 else _LINE}">{_t(line)}</tspan>' for i, line in enumerate(lines)
        )
        # rotate(-90) about the origin, then down to the plot's middle: local x runs up the axis
        out.append(
            f'<text class="axis-label" transform="translate(0 {2 * middle:.1f}) rotate(-90)" y="{FONT + 2:.1f}" '
            f'text-anchor="middle" fill="{PALETTE["text"]}">{spans}</text>'
        )
        labels.block(0, plot.top, 6 + _LINE * len(lines), plot.bottom)
    return out


def _x_label(plot: _Plot, chart: dict[str, Any], labels: _Labels) -> str:
    text = chart.get("x_label", "")
    if not text:
        return ""
    lines = labels.wrap(text, plot.right - plot.left)
    below = max((b[3] for b in labels.boxes if b[1] >= plot.bottom), default=plot.bottom + 20)
    return labels.place(lines, [((plot.left + plot.right) / 2, below + FONT + 6, "middle")], css="axis-label")


def _x_ticks(plot: _Plot, ticks: list[tuple[float, str]], labels: _Labels) -> list[str]:
    """Tick labels under the axis, staggered to a second line where two would touch."""
    out = []
    for x, text in ticks:
        px = plot.x(x)
        out.append(
            f'<line x1="{px:.1f}" y1="{plot.bottom:.1f}" x2="{px:.1f}" y2="{plot.bottom + 5:.1f}" stroke="{PALETTE["axis"]}"/>'
        )
        out.append(
            labels.place(
                text,
                [(px, plot.bottom + 19, "middle"), (px, plot.bottom + 19 + _LINE, "middle")],
                css="tick",
            )
        )
    return out


def _curve(chart: dict[str, Any], labels: _Labels) -> str:
    series = chart.get("series", [])
    x_end = max(p["x"] for s in series for p in s["points"])
    y_max = _y_max(chart)
    marker: Any = chart.get("marker")  # the patient's mark (a JSON object from evidence.py), or None
    beyond = bool(marker) and marker["x"] > x_end
    marker_text = (marker["text"] + (" (past the last published point)" if beyond else "")) if marker else None
    out, plot, marker_lines = _layout(chart, labels, 0.0, x_end, y_max, marker_text)
    out += _frame(plot, chart, labels, _y_ticks(y_max))
    if marker:
        out.append(_vertical_marker(plot, labels, min(marker["x"], x_end), marker["x"], marker_lines, beyond))
    ticks = sorted({0.0, *(p["x"] for s in series for p in s["points"])})
    out += _x_ticks(plot, [(x, _num(x)) for x in ticks], labels)
    for i, s in enumerate(series):
        out.append(_series_path(s, i, plot, [(p["x"], p) for p in s["points"]], chart, labels))
    out.append(_x_label(plot, chart, labels))
    return "".join(out)


def _vertical_marker(
    plot: _Plot, labels: _Labels, at: float, x: float, lines: list[str], beyond: bool, px: float | None = None
) -> str:
    """The patient's time: a dashed line across the plot, its label in the band above it."""
    px = plot.x(at) if px is None else px
    colour = PALETTE["marker"]
    labels.block(px - 3, plot.top, px + 3, plot.bottom + 6)
    first = plot.top - 10 - _LINE * (len(lines) - 1)
    text = labels.place(lines, [(px, first, "middle")], bold=True, fill=colour)
    shape = (
        f'<path d="M{px - 8:.1f},{plot.top + 4:.1f} l8,-6 l0,12 z" fill="{colour}" transform="rotate(180 {px:.1f} {plot.top + 4:.1f})"/>'
        if beyond
        else f'<circle cx="{px:.1f}" cy="{plot.bottom:.1f}" r="5" fill="{colour}"/>'
    )
    return (
        f'<g class="patient-marker" data-x="{x:.3f}" data-beyond="{str(beyond).lower()}">'
        f'<line x1="{px:.1f}" y1="{plot.top:.1f}" x2="{px:.1f}" y2="{plot.bottom:.1f}" stroke="{colour}" '
        f'stroke-width="2.5" stroke-dasharray="6 4"/>{shape}{text}</g>'
    )


def _points(chart: dict[str, Any], labels: _Labels) -> str:
    series = chart.get("series", [])
    names: list[str] = []
    for s in series:
        for p in s["points"]:
            if p["label"] not in names:
                names.append(p["label"])
    y_max = _y_max(chart)
    marker: Any = chart.get("marker")  # the patient's mark (a JSON object from evidence.py), or None
    timeline = [
        (p["x"], names.index(p["label"])) for p in (series[0]["points"] if series else []) if p.get("x") is not None
    ]
    if not (marker and len(timeline) >= 2):
        marker = None
    beyond = bool(marker) and marker["x"] > timeline[-1][0]
    marker_text = (marker["text"] + (" (past the last published point)" if beyond else "")) if marker else None
    out, plot, marker_lines = _layout(chart, labels, -0.5, len(names) - 0.5, y_max, marker_text)
    out += _frame(plot, chart, labels, _y_ticks(y_max))
    if marker:
        out.append(
            _vertical_marker(
                plot, labels, 0.0, marker["x"], marker_lines, beyond, _category_x(marker["x"], timeline, plot)
            )
        )
    reference = chart.get("reference")
    if reference:
        out.append(_reference(plot, labels, reference, y_max))
    out += _x_ticks(plot, [(i, name) for i, name in enumerate(names)], labels)
    offset_step = 0.08 if len(series) > 1 else 0.0
    for i, s in enumerate(series):
        shift = (i - (len(series) - 1) / 2) * offset_step
        positions = [(names.index(p["label"]) + shift, p) for p in s["points"]]
        out.append(_series_path(s, i, plot, positions, chart, labels))
    out.append(_x_label(plot, chart, labels))
    return "".join(out)


def _category_x(x: float, timeline: list[tuple[float, int]], plot: _Plot) -> float:
    """The patient's time on a categorical axis: between the two published time points
    around it (by linear position), at the last one when past it."""
    position = float(timeline[-1][1]) if x > timeline[-1][0] else float(timeline[0][1])
    for (t0, i0), (t1, i1) in itertools.pairwise(timeline):
        if t0 <= x <= t1 and t1 > t0:
            position = i0 + (x - t0) / (t1 - t0) * (i1 - i0)
            break
    return plot.x(position)


def _reference(plot: _Plot, labels: _Labels, reference: dict[str, Any], y_max: float) -> str:
    """The patient's own level (a pain score, a dose): a dashed line with its label."""
    py = plot.y(min(reference["y"], y_max))
    colour = PALETTE["marker"]
    labels.block(plot.left, py - 2, plot.right, py + 2)
    lines = labels.wrap(reference["text"], (plot.right - plot.left) * 0.9, bold=True)
    up = py - 7 - _LINE * (len(lines) - 1)
    down = py + FONT + 6
    text = labels.place(
        lines,
        [
            (plot.right - 4, up, "end"),
            (plot.right - 4, down, "end"),
            (plot.left + 6, up, "start"),
            (plot.left + 6, down, "start"),
            ((plot.left + plot.right) / 2, up, "middle"),
            ((plot.left + plot.right) / 2, down, "middle"),
        ],
        bold=True,
        fill=colour,
    )
    return (
        f'<g class="patient-marker" data-y="{reference["y"]:.3f}">'
        f'<line x1="{plot.left:.1f}" y1="{py:.1f}" x2="{plot.right:.1f}" y2="{py:.1f}" stroke="{colour}" '
        f'stroke-width="2.5" stroke-dasharray="6 4"/>{text}</g>'
    )


def _series_path(
    s: dict[str, Any],
    index: int,
    plot: _Plot,
    positions: list[tuple[float, dict[str, Any]]],
    chart: dict[str, Any],
    labels: _Labels,
) -> str:
    colour = _colour(index)
    highlight = bool(s.get("highlight"))
    dimmed = _any_highlight(chart) and not highlight
    width = 3.5 if highlight else 2.5
    dash = ' stroke-dasharray="5 3"' if dimmed else ""
    coords = [(plot.x(x), plot.y(p["y"])) for x, p in positions]
    path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}" for i, (x, y) in enumerate(coords))
    out = [
        f'<g class="series" data-label="{_a(s["label"])}" data-highlight="{str(highlight).lower()}">',
        f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="{width}"{dash}/>',
    ]
    for (_x, p), (cx, cy) in zip(positions, coords):
        if p.get("low") is not None and p.get("high") is not None:
            y_low, y_high = plot.y(p["low"]), plot.y(p["high"])
            labels.block(cx - 5, y_high, cx + 5, y_low)
            out.append(
                f'<g class="ci" data-low="{p["low"]}" data-high="{p["high"]}" stroke="{colour}" stroke-width="1.5">'
                f'<line x1="{cx:.1f}" y1="{y_low:.1f}" x2="{cx:.1f}" y2="{y_high:.1f}"/>'
                f'<line x1="{cx - 5:.1f}" y1="{y_low:.1f}" x2="{cx + 5:.1f}" y2="{y_low:.1f}"/>'
                f'<line x1="{cx - 5:.1f}" y1="{y_high:.1f}" x2="{cx + 5:.1f}" y2="{y_high:.1f}"/></g>'
            )
        out.append(f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}" data-y="{p["y"]}"/>')
    for cx, cy in coords:
        labels.block(cx - 4.5, cy - 4.5, cx + 4.5, cy + 4.5)
    for (x0, y0), (x1, y1) in itertools.pairwise(coords):  # the line, in short pieces
        steps = max(1, int(math.hypot(x1 - x0, y1 - y0) / 6))
        for k in range(steps):
            xa, ya = x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps
            xb, yb = x0 + (x1 - x0) * (k + 1) / steps, y0 + (y1 - y0) * (k + 1) / steps
            labels.avoid(xa, ya - 1.5, xb, yb + 1.5)
    for (_x, p), (cx, cy) in zip(positions, coords):
        out.append(
            labels.place(
                p["text"],
                [
                    (cx, cy - 10, "middle"),
                    (cx + 9, cy + 4, "start"),
                    (cx - 9, cy + 4, "end"),
                    (cx, cy + FONT + 8, "middle"),
                    (cx, cy - 10 - _LINE, "middle"),
                    (cx, cy + FONT + 8 + _LINE, "middle"),
                    (cx + 9, cy - 10, "start"),
                    (cx - 9, cy - 10, "end"),
                ],
                css="value",
            )
        )
    out.append("</g>")
    return "".join(out)


def _ratios(chart: dict[str, Any], labels: _Labels) -> str:
    """Each factor: its name, the ratio and its CI (or that none was published), this
    patient's value, then the ratio as a point on a shared log axis around 1."""
    width = labels.width
    rows = chart.get("rows", [])
    values = [r["value"] for r in rows if r["value"] > 0]
    values += [v for r in rows for v in (r.get("low"), r.get("high")) if v]
    low = math.floor(math.log10(min([*values, 1.0]))) - (1 if min([*values, 1.0]) == 1.0 else 0)
    high = math.ceil(math.log10(max([*values, 1.0]))) + (1 if max([*values, 1.0]) == 1.0 else 0)
    left, right = 24, width - 24

    def px(v: float) -> float:
        return left + (math.log10(v) - low) / (high - low) * (right - left)

    measure = chart.get("measure", "")
    out = [
        labels.place(
            labels.wrap(f"{measure} (log scale)", right - left, bold=True), [(width / 2, 20, "middle")], bold=True
        )
    ]
    y = labels.bottom + 12
    one = px(1.0)
    strips = []
    for r in rows:
        name = labels.wrap(r["label"], right - left, bold=True)
        parts = [labels.place(name, [(left, y + FONT, "start")], bold=True)]
        y = labels.bottom + 4
        ratio_line = f"{' '.join(measure.split()[:2]) if measure else 'Ratio'} {r['text']}, {_ci_words(r)}"
        parts.append(labels.place(labels.wrap(ratio_line, right - left), [(left, y + FONT, "start")], css="ratio-text"))
        y = labels.bottom + 4
        patient = labels.wrap(f"This patient: {r['patient']}", right - left, bold=True)
        parts.append(
            labels.place(patient, [(left, y + FONT, "start")], bold=True, fill=PALETTE["marker"], css="patient-marker")
        )
        y = labels.bottom + 14
        x = px(r["value"])
        colour = PALETTE["series"][0]
        ci = ""
        if r.get("low") and r.get("high"):
            xl, xh = px(r["low"]), px(r["high"])
            ci = (
                f'<g class="ci" data-low="{r["low"]}" data-high="{r["high"]}" stroke="{colour}" stroke-width="2">'
                f'<line x1="{xl:.1f}" y1="{y:.1f}" x2="{xh:.1f}" y2="{y:.1f}"/>'
                f'<line x1="{xl:.1f}" y1="{y - 5:.1f}" x2="{xl:.1f}" y2="{y + 5:.1f}"/>'
                f'<line x1="{xh:.1f}" y1="{y - 5:.1f}" x2="{xh:.1f}" y2="{y + 5:.1f}"/></g>'
            )
        labels.block(left, y - 8, right, y + 8)
        strips.append(y)
        out.append(
            f'<g class="ratio" data-value="{r["value"]}">{"".join(parts)}'
            f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}" stroke="{PALETTE["grid"]}" stroke-width="0.6"/>'
            f'{ci}<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="{colour}"/></g>'
        )
        y = labels.bottom + 16
    axis = y
    top = (strips[0] - 10) if strips else axis
    for k in range(low, high + 1):
        x = px(10.0**k)
        out.append(
            f'<line x1="{x:.1f}" y1="{axis - 6:.1f}" x2="{x:.1f}" y2="{axis:.1f}" stroke="{PALETTE["axis"]}"/>'
            + labels.place(_num(10.0**k), [(x, axis + 16, "middle")], css="tick")
        )
    out.append(
        f'<line x1="{left:.1f}" y1="{axis:.1f}" x2="{right:.1f}" y2="{axis:.1f}" stroke="{PALETTE["axis"]}" stroke-width="1.5"/>'
        f'<line class="no-effect" x1="{one:.1f}" y1="{top:.1f}" x2="{one:.1f}" y2="{axis:.1f}" stroke="{PALETTE["axis"]}" stroke-width="1.5" stroke-dasharray="4 3"/>'
    )
    below = labels.bottom + FONT + 6
    out.append(labels.place("lower risk", [(one - 8, below, "end")], css="direction"))
    out.append(labels.place("higher risk", [(one + 8, below, "start")], css="direction"))
    return "".join(out)


def _counts(chart: dict[str, Any], labels: _Labels) -> str:
    """Outcomes as "n of N": a bar of N patients with n filled, one per outcome."""
    width = labels.width
    left, right = 16, width - 16
    rows = chart.get("rows", [])
    most = max([r["total"] for r in rows] + [1])
    out = []
    y = 8.0
    for r in rows:
        name = labels.wrap(r["label"], right - left)
        out.append(labels.place(name, [(left, y + FONT + 4, "start")]))
        y = labels.bottom + 6
        count_text = r["text"]
        bar_room = right - left - labels.text_width(count_text, True) - 12
        full = bar_room * r["total"] / most
        filled = bar_room * r["count"] / most
        colour = _colour(0)  # one series: one colour (a colour per row would read as a category)
        labels.block(left, y, left + full, y + 16)
        out.append(
            f'<g class="count" data-count="{r["count"]}" data-total="{r["total"]}">'
            f'<rect x="{left:.1f}" y="{y:.1f}" width="{full:.1f}" height="16" fill="none" stroke="{PALETTE["grid"]}"/>'
            f'<rect class="point" x="{left:.1f}" y="{y:.1f}" width="{filled:.1f}" height="16" fill="{colour}"/>'
            + labels.place(count_text, [(left + full + 8, y + 13, "start")], bold=True)
            + "</g>"
        )
        y = labels.bottom + 10
    return "".join(out)


def _calibration(chart: dict[str, Any], labels: _Labels) -> str:
    groups = [g for g in chart.get("groups", []) if g.get("observed") is not None]
    top = max([10.0, *(g["predicted"] for g in groups), *(g["observed"] for g in groups)])
    y_max = min(100.0, math.ceil(top * 1.1 / 10) * 10)
    out, plot, _ = _layout(chart, labels, 0.0, y_max, y_max, None)
    out += _frame(plot, chart, labels, _y_ticks(y_max))
    out += _x_ticks(plot, [(v, _num(v)) for v in _y_ticks(y_max)], labels)
    out.append(
        f'<line class="perfect" x1="{plot.x(0):.1f}" y1="{plot.y(0):.1f}" x2="{plot.x(y_max):.1f}" y2="{plot.y(y_max):.1f}" '
        f'stroke="{PALETTE["grid"]}" stroke-width="1.5" stroke-dasharray="6 4"/>'
    )
    colour = _colour(0)
    for g in groups:
        out.append(
            f'<circle class="point" cx="{plot.x(g["predicted"]):.1f}" cy="{plot.y(g["observed"]):.1f}" r="5" '
            f'fill="{colour}" data-predicted="{g["predicted"]:.2f}" data-observed="{g["observed"]:.2f}"/>'
        )
    out.append(_x_label(plot, chart, labels))
    return "".join(out)


# ---------------------------------------------------------------------------- pieces
def _any_highlight(chart: dict[str, Any]) -> bool:
    return any(s.get("highlight") for s in chart.get("series", []))


def _colour(index: int) -> str:
    series = PALETTE["series"]
    return series[index % len(series)]


def _y_max(chart: dict[str, Any]) -> float:
    if chart.get("y_max"):
        return float(chart["y_max"])
    values = [p.get("high") or p["y"] for s in chart.get("series", []) for p in s["points"]]
    if chart.get("reference"):
        values.append(chart["reference"]["y"])
    top = max([*values, 1.0]) * 1.15
    magnitude: float = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 2.5, 5, 10):
        if top <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _y_ticks(y_max: float) -> list[float]:
    raw = y_max / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(s * magnitude for s in (1, 2, 2.5, 5, 10) if s * magnitude >= raw)
    return [i * step for i in range(int(y_max / step + 1e-9) + 1)]


def _ci_words(row: dict[str, Any]) -> str:
    return f"95 % CI {row['ci_text']}" if row.get("ci_text") else "CI not published"


def _point_words(p: dict[str, Any]) -> str:
    words = f"{p['text']} at {p['label']}"
    if p.get("ci_text"):
        words += f" (95 % CI {p['ci_text']})"
    return words


def _value_words(p: dict[str, Any]) -> str:
    text: str = p["text"]
    return text + (f" (95 % CI {p['ci_text']})" if p.get("ci_text") else "")


def _num(x: float) -> str:
    return formatting.number(x)


def _t(text: Any) -> str:
    return escape(str(text), quote=False)


def _a(text: Any) -> str:
    return escape(str(text), quote=True)


def contrast_ratio(foreground: str, background: str = BACKGROUND) -> float:
    """WCAG 2.x contrast ratio of two #rrggbb colours."""

    def luminance(colour: str) -> float:
        channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    lighter, darker = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def palette_colours() -> list[str]:
    """Every colour the charts draw with (for the contrast check)."""
    colours: list[str] = []
    for value in PALETTE.values():
        colours.extend(value if isinstance(value, tuple) else [cast(str, value)])  # a tuple or a colour
    return colours
