"""Server-rendered SVG charts for the evidence page: chart data in, SVG text out.

Pure functions, no JavaScript, no front-end build. The chart data (a JSON-ready dict made
by clinical/evidence.py from a card's [figures] and the patient's inputs) holds only
published points; a curve is drawn through them and never beyond the last one. Each SVG
carries its text alternative (<title> and <desc>) and `chart_table` gives the same
numbers as a data table. Colours come from PALETTE, whose contrast against the white
background passes WCAG AA for text (4.5:1), checked by a unit test.

Chart kinds:
- curve: published points on a numeric time axis (x from 0 to the last published point),
  with the patient's position marked (at the right edge, with a note, when past the end);
- points: categorical time points, series with optional 95 % CIs, an optional horizontal
  reference level (the patient's own value) and an optionally highlighted series;
- ratios: published hazard / odds ratios on a log axis around 1, with the patient's value
  of each factor written beside it;
- calibration: a learned site model's calibration groups (mean predicted risk against the
  observed risk, both in %) with the line of perfect calibration; its numbers come from
  the model's report, not from a publication.
"""

from __future__ import annotations

import itertools
import math
from html import escape
from typing import Any

BACKGROUND = "#ffffff"
PALETTE = {
    "text": "#1a1a1a",
    "axis": "#595959",
    "grid": "#767676",
    "series": ("#1f4e79", "#8a4b08", "#1e6b3a", "#5b2c6f"),
    "marker": "#b0002a",
    "ci": "#1f4e79",
}
WIDTH = 640
HEIGHT = 340
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 28, 44, 64


def render_chart(chart: dict, chart_id: str = "chart") -> str:
    """The chart as one standalone <svg> element (UTF-8 text)."""
    kind = chart.get("kind")
    if kind == "curve":
        body, height = _curve(chart), HEIGHT
    elif kind == "points":
        body, height = _points(chart), HEIGHT
    elif kind == "ratios":
        body, height = _ratios(chart)
    elif kind == "calibration":
        body, height = _calibration(chart), HEIGHT
    else:
        raise ValueError(f"unknown chart kind {kind!r}")
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{_a(kind)}" role="img" '
        f'viewBox="0 0 {WIDTH} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        f'aria-labelledby="{_a(title_id)} {_a(desc_id)}" font-family="system-ui, sans-serif" font-size="13">'
        f'<title id="{_a(title_id)}">{_t(chart.get("title", ""))}</title>'
        f'<desc id="{_a(desc_id)}">{_t(describe(chart))}</desc>'
        f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="{BACKGROUND}"/>'
        f"{body}</svg>"
    )


def describe(chart: dict) -> str:
    """The chart in words (the SVG <desc>): every published point and the patient's marker."""
    parts = []
    if chart.get("kind") == "calibration":
        for g in chart.get("groups", []):
            parts.append(f"{g['n']} patients: predicted {g['predicted_text']}, observed {g['observed_text']}.")
        parts.extend(chart.get("notes", []))
        if chart.get("end_note"):
            parts.append(chart["end_note"])
        return " ".join(parts)
    if chart.get("kind") == "ratios":
        for row in chart.get("rows", []):
            parts.append(
                f"{row['label']}: {chart.get('measure', 'ratio')} {row['text']}; this patient: {row['patient']}."
            )
        return " ".join(parts)
    for s in chart.get("series", []):
        points = ", ".join(_point_words(p) for p in s["points"])
        parts.append(f"{s['label']}{' (this patient)' if s.get('highlight') else ''}: {points}.")
    for key in ("marker", "reference"):
        if chart.get(key):
            parts.append(chart[key]["text"] + ".")
    parts.extend(chart.get("notes", []))
    if chart.get("end_note"):
        parts.append(chart["end_note"])
    return " ".join(parts)


def chart_table(chart: dict) -> tuple[list[str], list[list[str]]]:
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
            ["Factor", chart.get("measure", "Ratio"), "This patient"],
            [[r["label"], r["text"], r["patient"]] for r in chart.get("rows", [])],
        )
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
            row.append(_value_words(match, chart) if match else "not published")
        rows.append(row)
    return headers, rows


# ---------------------------------------------------------------------------- kinds
def _curve(chart: dict) -> str:
    series = chart.get("series", [])
    x_end = max(p["x"] for s in series for p in s["points"])
    y_max = _y_max(chart)
    plot = _Plot(0.0, x_end, y_max, HEIGHT)
    out = [_frame(plot, chart, y_max)]
    ticks = sorted({0.0, *(p["x"] for s in series for p in s["points"])})
    for x in ticks:
        px = plot.x(x)
        out.append(
            f'<line x1="{px:.1f}" y1="{plot.bottom:.1f}" x2="{px:.1f}" y2="{plot.bottom + 5:.1f}" stroke="{PALETTE["axis"]}"/>'
            f'<text x="{px:.1f}" y="{plot.bottom + 19:.1f}" text-anchor="middle" fill="{PALETTE["text"]}">{_t(_num(x))}</text>'
        )
    for i, s in enumerate(series):
        out.append(_series_path(s, i, plot, [(p["x"], p) for p in s["points"]], chart))
    marker = chart.get("marker")
    if marker:
        beyond = marker["x"] > x_end
        px = plot.x(min(marker["x"], x_end))
        colour = PALETTE["marker"]
        anchor = "end" if px > plot.left + (plot.right - plot.left) * 0.6 else "start"
        dx = -6 if anchor == "end" else 6
        label = marker["text"] + (" (past the last published point)" if beyond else "")
        out.append(
            f'<g class="patient-marker" data-x="{marker["x"]:.3f}" data-beyond="{str(beyond).lower()}">'
            f'<line x1="{px:.1f}" y1="{plot.top:.1f}" x2="{px:.1f}" y2="{plot.bottom:.1f}" stroke="{colour}" '
            f'stroke-width="2.5" stroke-dasharray="6 4"/>'
            + (
                f'<path d="M{px - 8:.1f},{plot.top + 4:.1f} l8,-6 l0,12 z" fill="{colour}" transform="rotate(180 {px:.1f} {plot.top + 4:.1f})"/>'
                if beyond
                else f'<circle cx="{px:.1f}" cy="{plot.bottom:.1f}" r="5" fill="{colour}"/>'
            )
            + f'<text x="{px + dx:.1f}" y="{plot.top + 14:.1f}" text-anchor="{anchor}" fill="{colour}" font-weight="bold">{_t(label)}</text></g>'
        )
    return "".join(out)


def _points(chart: dict) -> str:
    series = chart.get("series", [])
    labels: list[str] = []
    for s in series:
        for p in s["points"]:
            if p["label"] not in labels:
                labels.append(p["label"])
    y_max = _y_max(chart)
    plot = _Plot(-0.5, len(labels) - 0.5, y_max, HEIGHT)
    out = [_frame(plot, chart, y_max)]
    for i, label in enumerate(labels):
        px = plot.x(i)
        out.append(
            f'<text x="{px:.1f}" y="{plot.bottom + 19:.1f}" text-anchor="middle" fill="{PALETTE["text"]}">{_t(label)}</text>'
        )
    offset_step = 0.08 if len(series) > 1 else 0.0
    for i, s in enumerate(series):
        shift = (i - (len(series) - 1) / 2) * offset_step
        positions = [(labels.index(p["label"]) + shift, p) for p in s["points"]]
        out.append(_series_path(s, i, plot, positions, chart))
    marker = chart.get("marker")
    timeline = [
        (p["x"], labels.index(p["label"])) for p in (series[0]["points"] if series else []) if p.get("x") is not None
    ]
    if marker and len(timeline) >= 2:
        out.append(_category_marker(marker, timeline, plot))
    reference = chart.get("reference")
    if reference:
        y = min(reference["y"], y_max)
        py = plot.y(y)
        colour = PALETTE["marker"]
        out.append(
            f'<g class="patient-marker" data-y="{reference["y"]:.3f}">'
            f'<line x1="{plot.left:.1f}" y1="{py:.1f}" x2="{plot.right:.1f}" y2="{py:.1f}" stroke="{colour}" '
            f'stroke-width="2.5" stroke-dasharray="6 4"/>'
            f'<text x="{plot.right - 4:.1f}" y="{py - 6:.1f}" text-anchor="end" fill="{colour}" font-weight="bold">'
            f"{_t(reference['text'])}</text></g>"
        )
    return "".join(out)


def _category_marker(marker: dict, timeline: list[tuple[float, int]], plot: _Plot) -> str:
    """The patient's time on a categorical axis: between the two published time points
    around it (by linear position), at the last one with a note when past it."""
    x = marker["x"]
    beyond = x > timeline[-1][0]
    position = float(timeline[-1][1]) if beyond else float(timeline[0][1])
    for (t0, i0), (t1, i1) in itertools.pairwise(timeline):
        if t0 <= x <= t1 and t1 > t0:
            position = i0 + (x - t0) / (t1 - t0) * (i1 - i0)
            break
    px = plot.x(position)
    colour = PALETTE["marker"]
    anchor = "end" if px > plot.left + (plot.right - plot.left) * 0.6 else "start"
    dx = -6 if anchor == "end" else 6
    label = marker["text"] + (" (past the last published point)" if beyond else "")
    return (
        f'<g class="patient-marker" data-x="{x:.3f}" data-beyond="{str(beyond).lower()}">'
        f'<line x1="{px:.1f}" y1="{plot.top:.1f}" x2="{px:.1f}" y2="{plot.bottom:.1f}" stroke="{colour}" '
        f'stroke-width="2.5" stroke-dasharray="6 4"/>'
        f'<circle cx="{px:.1f}" cy="{plot.bottom:.1f}" r="5" fill="{colour}"/>'
        f'<text x="{px + dx:.1f}" y="{plot.top + 14:.1f}" text-anchor="{anchor}" fill="{colour}" font-weight="bold">'
        f"{_t(label)}</text></g>"
    )


def _ratios(chart: dict) -> tuple[str, int]:
    rows = chart.get("rows", [])
    row_height = 58
    height = _TOP + 36 + row_height * len(rows) + 40
    values = [r["value"] for r in rows if r["value"] > 0]
    low = math.floor(math.log10(min([*values, 1.0]))) - (1 if min([*values, 1.0]) == 1.0 else 0)
    high = math.ceil(math.log10(max([*values, 1.0]))) + (1 if max([*values, 1.0]) == 1.0 else 0)
    left, right = _LEFT + 8, WIDTH - _RIGHT - 150
    top, bottom = _TOP + 20, height - 40

    def px(v: float) -> float:
        return left + (math.log10(v) - low) / (high - low) * (right - left)

    out = [
        f'<text x="{WIDTH / 2:.1f}" y="22" text-anchor="middle" font-weight="bold" fill="{PALETTE["text"]}">'
        f"{_t(chart.get('measure', ''))} (log scale)</text>",
        f'<text x="{right + 12:.1f}" y="{top - 4:.1f}" fill="{PALETTE["text"]}" font-weight="bold">This patient</text>',
    ]
    for k in range(low, high + 1):
        v = 10.0**k
        x = px(v)
        out.append(
            f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="{PALETTE["grid"]}" stroke-width="0.6" stroke-dasharray="2 3"/>'
            f'<text x="{x:.1f}" y="{bottom + 18:.1f}" text-anchor="middle" fill="{PALETTE["text"]}">{_t(_num(v))}</text>'
        )
    one = px(1.0)
    out.append(
        f'<line class="no-effect" x1="{one:.1f}" y1="{top:.1f}" x2="{one:.1f}" y2="{bottom:.1f}" stroke="{PALETTE["axis"]}" stroke-width="1.5"/>'
        f'<text x="{one - 6:.1f}" y="{bottom + 34:.1f}" text-anchor="end" fill="{PALETTE["text"]}">lower risk</text>'
        f'<text x="{one + 6:.1f}" y="{bottom + 34:.1f}" fill="{PALETTE["text"]}">higher risk</text>'
    )
    for i, r in enumerate(rows):
        y = top + 36 + i * row_height
        x = px(r["value"])
        colour = PALETTE["series"][0]
        out.append(
            f'<g class="ratio" data-value="{r["value"]}">'
            f'<text x="{left:.1f}" y="{y - 16:.1f}" fill="{PALETTE["text"]}">{_t(r["label"])}</text>'
            f'<line x1="{one:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>'
            f'<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="{colour}"/>'
            f'<text x="{x:.1f}" y="{y + 22:.1f}" text-anchor="middle" fill="{PALETTE["text"]}" font-weight="bold">{_t(r["text"])}</text>'
            f'<text class="patient-marker" x="{right + 12:.1f}" y="{y + 4:.1f}" fill="{PALETTE["marker"]}" font-weight="bold">'
            f"{_t(_short(r.get('patient_short') or r['patient']))}</text></g>"
        )
    return "".join(out), height


# ---------------------------------------------------------------------------- pieces
def _calibration(chart: dict) -> str:
    groups = [g for g in chart.get("groups", []) if g.get("observed") is not None]
    top = max([10.0, *(g["predicted"] for g in groups), *(g["observed"] for g in groups)])
    y_max = min(100.0, math.ceil(top * 1.1 / 10) * 10)
    plot = _Plot(0.0, y_max, y_max, HEIGHT)
    out = [_frame(plot, chart, y_max)]
    for v in _y_ticks(y_max):
        px = plot.x(v)
        out.append(
            f'<text x="{px:.1f}" y="{plot.bottom + 19:.1f}" text-anchor="middle" fill="{PALETTE["text"]}">{_t(_num(v))}</text>'
        )
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
    return "".join(out)


class _Plot:
    def __init__(self, x0: float, x1: float, y_max: float, height: int) -> None:
        self.x0, self.x1, self.y_max = x0, x1, y_max
        self.left, self.right = _LEFT, WIDTH - _RIGHT
        self.top, self.bottom = _TOP, height - _BOTTOM

    def x(self, value: float) -> float:
        span = (self.x1 - self.x0) or 1.0
        return self.left + (value - self.x0) / span * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - value / self.y_max * (self.bottom - self.top)


def _frame(plot: _Plot, chart: dict, y_max: float) -> str:
    out = []
    for v in _y_ticks(y_max):
        py = plot.y(v)
        out.append(
            f'<line x1="{plot.left:.1f}" y1="{py:.1f}" x2="{plot.right:.1f}" y2="{py:.1f}" stroke="{PALETTE["grid"]}" '
            f'stroke-width="0.6" stroke-dasharray="2 3"/>'
            f'<text x="{plot.left - 8:.1f}" y="{py + 4:.1f}" text-anchor="end" fill="{PALETTE["text"]}">{_t(_num(v))}</text>'
        )
    out.append(
        f'<line x1="{plot.left:.1f}" y1="{plot.bottom:.1f}" x2="{plot.right:.1f}" y2="{plot.bottom:.1f}" stroke="{PALETTE["axis"]}" stroke-width="1.5"/>'
        f'<line x1="{plot.left:.1f}" y1="{plot.top:.1f}" x2="{plot.left:.1f}" y2="{plot.bottom:.1f}" stroke="{PALETTE["axis"]}" stroke-width="1.5"/>'
        f'<text x="{(plot.left + plot.right) / 2:.1f}" y="{plot.bottom + 42:.1f}" text-anchor="middle" fill="{PALETTE["text"]}">'
        f"{_t(chart.get('x_label', ''))}</text>"
        f'<text x="16" y="{(plot.top + plot.bottom) / 2:.1f}" text-anchor="middle" fill="{PALETTE["text"]}" '
        f'transform="rotate(-90 16 {(plot.top + plot.bottom) / 2:.1f})">{_t(chart.get("y_label", ""))}</text>'
    )
    legend_x = plot.left
    for i, s in enumerate(chart.get("series", [])):
        colour = _colour(i)
        dash = "" if s.get("highlight") or not _any_highlight(chart) else ' stroke-dasharray="5 3"'
        label = s["label"] + (" (this patient)" if s.get("highlight") else "")
        out.append(
            f'<line x1="{legend_x:.1f}" y1="18" x2="{legend_x + 22:.1f}" y2="18" stroke="{colour}" stroke-width="3"{dash}/>'
            f'<text x="{legend_x + 28:.1f}" y="22" fill="{PALETTE["text"]}">{_t(label)}</text>'
        )
        legend_x += 40 + 7.2 * len(label)
    return "".join(out)


def _series_path(s: dict, index: int, plot: _Plot, positions: list[tuple[float, dict]], chart: dict) -> str:
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
            out.append(
                f'<g class="ci" data-low="{p["low"]}" data-high="{p["high"]}" stroke="{colour}" stroke-width="1.5">'
                f'<line x1="{cx:.1f}" y1="{y_low:.1f}" x2="{cx:.1f}" y2="{y_high:.1f}"/>'
                f'<line x1="{cx - 5:.1f}" y1="{y_low:.1f}" x2="{cx + 5:.1f}" y2="{y_low:.1f}"/>'
                f'<line x1="{cx - 5:.1f}" y1="{y_high:.1f}" x2="{cx + 5:.1f}" y2="{y_high:.1f}"/></g>'
            )
        text_x = cx + (8 if len(chart.get("series", [])) > 1 and index % 2 == 0 else 0)
        anchor = "start" if text_x != cx else "middle"
        out.append(
            f'<circle class="point" cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{colour}" data-y="{p["y"]}"/>'
            f'<text x="{text_x:.1f}" y="{cy - 9:.1f}" text-anchor="{anchor}" fill="{PALETTE["text"]}">{_t(p["text"])}</text>'
        )
    out.append("</g>")
    return "".join(out)


def _any_highlight(chart: dict) -> bool:
    return any(s.get("highlight") for s in chart.get("series", []))


def _colour(index: int) -> str:
    series = PALETTE["series"]
    return series[index % len(series)]


def _y_max(chart: dict) -> float:
    if chart.get("y_max"):
        return float(chart["y_max"])
    values = [p.get("high") or p["y"] for s in chart.get("series", []) for p in s["points"]]
    if chart.get("reference"):
        values.append(chart["reference"]["y"])
    top = max([*values, 1.0]) * 1.15
    magnitude = 10 ** math.floor(math.log10(top))
    for step in (1, 2, 2.5, 5, 10):
        if top <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _y_ticks(y_max: float) -> list[float]:
    raw = y_max / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(s * magnitude for s in (1, 2, 2.5, 5, 10) if s * magnitude >= raw)
    return [i * step for i in range(int(y_max / step + 1e-9) + 1)]


def _point_words(p: dict) -> str:
    words = f"{p['text']} at {p['label']}"
    if p.get("ci_text"):
        words += f" (95 % CI {p['ci_text']})"
    return words


def _value_words(p: dict, chart: dict) -> str:
    return p["text"] + (f" (95 % CI {p['ci_text']})" if p.get("ci_text") else "")


def _short(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(x: float) -> str:
    if float(x).is_integer():
        return str(int(x))
    return f"{x:g}"


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
    colours = []
    for value in PALETTE.values():
        colours.extend(value if isinstance(value, tuple) else [value])
    return colours
