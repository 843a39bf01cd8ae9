"""GET /evidence/<token>: the evidence page behind a card (HTML, server-rendered SVG charts).

The URL carries only an unguessable token; the page data (no patient identifiers) is read
from the store (storage/evidence_pages.py) and drawn here with the templates of
cds_service/templates (pages.py): the charts, each titled with its source, drawn for a
desktop and for a phone, with its text alternative and a data table, then the card's
Markdown texts rendered, the inputs table, the caveats and the sources. An unknown token
answers 404 and an expired one 410, both as a short HTML page. The page is readable on a
phone (responsive CSS), printable (print CSS), sends no referrer (the token must not leak
to the sources it links to) and is never cached.

`install_evidence_pages(app)` (one line in app.py) registers the blueprint and keeps the
page store and the chart specs (an EvidenceSetup) in `app.extensions["evidence_pages"]`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from markupsafe import Markup

from cds_service import metrics, pages
from cds_service.clinical.charts import NARROW_WIDTH, PALETTE, chart_table, render_chart
from cds_service.storage.engine import StoreError
from cds_service.storage.evidence_pages import EvidenceSetup, build_evidence_setup

log = logging.getLogger(__name__)

blueprint = Blueprint("evidence_pages", __name__)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,200}")
_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
}
JUDGEMENT = "This page informs and does not replace clinical judgement."


def install_evidence_pages(app: Flask) -> EvidenceSetup:
    """Register GET /evidence/<token>, with the Runtime's page store (built here if the
    Runtime has none yet), kept in app.extensions["evidence_pages"]."""
    rt = app.extensions["cds_service"]
    setup = getattr(rt, "evidence", None) or build_evidence_setup(rt.settings, rt.store, rt.cards)
    app.extensions["evidence_pages"] = setup
    app.register_blueprint(blueprint)
    return setup


@blueprint.get("/evidence/<token>", provide_automatic_options=False)
def evidence_page(token: str) -> Response:
    setup: EvidenceSetup = current_app.extensions["evidence_pages"]
    if not _TOKEN.fullmatch(token):
        return _answer(not_found_page(), 404)
    found = setup.get(token)
    if found.data is not None:
        _count_open(found.data)
        return _answer(render_page(found.data), 200)
    if found.expired:
        return _answer(expired_page(), 410)
    return _answer(not_found_page(), 404)


def _count_open(data: dict[str, Any]) -> None:
    """The page was opened: counted for its card (the report's evidence-page open rate and a
    metric). Best effort: a store that cannot take it never keeps the page from the reader."""
    card_id = data.get("card_id")
    if isinstance(card_id, str):
        metrics.EVIDENCE_PAGES_OPENED.labels(card=card_id).inc()
    card_uuid = data.get("card_uuid")
    rt = current_app.extensions.get("cds_service")
    if isinstance(card_uuid, str) and rt is not None:
        try:
            rt.store.mark_evidence_opened(card_uuid)
        except StoreError:
            log.warning("the evidence page open could not be recorded (store unavailable)")


def redact_path(path: str) -> str:
    """A request path fit for an access log: an evidence page's token is a credential."""
    if path.startswith("/evidence/"):
        return "/evidence/<token>"
    return path


def _answer(html: str, status: int) -> Response:
    return Response(html, status=status, headers=_HEADERS)


# ---------------------------------------------------------------------------- HTML
def render_page(data: dict[str, Any]) -> str:
    """The evidence page (templates/evidence_page.html.j2): charts drawn twice, for a wide
    screen and re-laid out for a phone (CSS shows one), card Markdown rendered."""
    charts = []
    for i, chart in enumerate(data.get("charts", [])):
        chart_id = f"chart-{i + 1}"
        headers, rows = chart_table(chart)
        charts.append(
            {
                "id": chart_id,
                "title": chart.get("title", ""),
                "source": chart.get("source", ""),
                "svg_wide": Markup(render_chart(chart, f"{chart_id}-wide")),
                "svg_narrow": Markup(render_chart(chart, f"{chart_id}-narrow", width=NARROW_WIDTH)),
                "notes": [*chart.get("notes", []), *([chart["end_note"]] if chart.get("end_note") else [])],
                "headers": headers,
                "rows": rows,
            }
        )
    return pages.render(
        "evidence_page.html.j2",
        title=data.get("title", "Evidence"),
        css=CSS,
        summary=data.get("summary", ""),
        charts=charts,
        lead=data.get("lead", ""),
        sections=data.get("sections", []),
        inputs=[_input_row(item) for item in data.get("inputs", [])],
        story=data.get("story", []),
        caveats=data.get("caveats", []),
        sources=[{"label": s.get("label", ""), "url": s.get("url") or ""} for s in data.get("sources", [])],
        judgement=JUDGEMENT,
    )


def _input_row(item: dict[str, Any]) -> dict[str, Any]:
    """One row of the inputs table: the value with its unit in one cell (no column that is
    empty on most rows), the date with what it is, how it was read."""
    date = f"{item['date_label']} {item['date']}" if item.get("date") else ""
    how = item.get("how", "")
    note = item.get("note", "")
    if note:
        how = note if (not how or how in note) else f"{how} ({note})"
    value = item.get("value") or item.get("status", "")
    if item.get("value") and item.get("unit"):
        value = f"{value} {item['unit']}"
    return {
        "label": item["label"],
        "value": value,
        "date": date,
        "how": how,
        "css": "used" if item.get("status") == "used" else "gap",
    }


def not_found_page() -> str:
    return pages.render("not_found.html.j2", title="Evidence page not found", css=CSS)


def expired_page() -> str:
    return pages.render("expired.html.j2", title="Evidence page expired", css=CSS)


CSS = f"""
:root {{ color-scheme: light; }}
* {{ box-sizing: border-box; }}
.md {{ overflow-wrap: anywhere; }}
.md table {{ margin: .5rem 0; }}
.chart-source {{ margin: 0 0 .5rem; font-size: .9rem; color: {PALETTE["axis"]}; }}
.chart-narrow {{ display: none; }}
body {{ margin: 0 auto; max-width: 60rem; padding: 1rem; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: {PALETTE["text"]}; background: #ffffff; }}
h1 {{ font-size: 1.5rem; margin: .25rem 0 .5rem; }}
h2 {{ font-size: 1.15rem; margin: 1.5rem 0 .5rem; }}
figcaption h2 {{ margin-top: 0; }}
.kicker {{ margin: 0; text-transform: uppercase; letter-spacing: .05em; font-size: .8rem; color: {PALETTE["axis"]}; }}
.summary {{ font-size: 1.05rem; border-left: 4px solid {PALETTE["series"][0]}; padding-left: .75rem; }}
figure {{ margin: 0; }}
.chart-block {{ border-top: 1px solid #d0d0d0; padding-top: 1rem; margin-top: 1rem; }}
svg.chart {{ display: block; max-width: 100%; height: auto; }}
.chart-wide svg.chart {{ max-width: 760px; }}
.note {{ font-size: .9rem; color: {PALETTE["axis"]}; margin: .25rem 0; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; width: 100%; font-size: .95rem; }}
caption {{ text-align: left; font-size: .85rem; color: {PALETTE["axis"]}; padding: .25rem 0; }}
th, td {{ border: 1px solid #c8c8c8; padding: .35rem .5rem; text-align: left; vertical-align: top; }}
thead th {{ background: #f2f2f2; }}
tr.gap td {{ font-style: italic; }}
details summary {{ cursor: pointer; margin: .5rem 0; }}
a {{ color: {PALETTE["series"][0]}; }}
.url {{ display: none; }}
.judgement {{ font-style: italic; margin-top: 2rem; }}
@media (max-width: 500px) {{
  .chart-wide {{ display: none; }}
  .chart-narrow {{ display: block; }}
}}
@media (max-width: 40rem) {{
  body {{ padding: .75rem; font-size: 15px; }}
  table.inputs thead {{ display: none; }}
  table.inputs, table.inputs tbody, table.inputs tr, table.inputs th, table.inputs td {{ display: block; width: 100%; }}
  table.inputs tr {{ border: 1px solid #c8c8c8; margin-bottom: .75rem; }}
  table.inputs th, table.inputs td {{ border: none; border-bottom: 1px solid #e4e4e4; }}
  table.inputs td::before {{ content: attr(data-label) ": "; font-weight: 600; }}
}}
@media print {{
  body {{ max-width: none; padding: 0; font-size: 11pt; }}
  .chart-block, table, tr {{ break-inside: avoid; page-break-inside: avoid; }}
  .chart-narrow {{ display: none; }}
  .chart-wide {{ display: block; }}
  details > summary {{ display: none; }}
  .url {{ display: inline; font-size: 9pt; }}
  a {{ color: {PALETTE["text"]}; text-decoration: none; }}
}}
"""
