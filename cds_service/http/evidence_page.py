"""GET /evidence/<token>: the evidence page behind a card (HTML, server-rendered SVG charts).

The URL carries only an unguessable token; the page data (no patient identifiers) is read
from the store (storage/evidence_pages.py) and drawn here: the charts, each with its text
alternative and a data table, then the inputs table, the caveats and the sources. An
unknown token answers 404 and an expired one 410, both as a short HTML page. The page is
readable on a phone (responsive CSS), printable (print CSS), sends no referrer (the
token must not leak to the sources it links to) and is never cached.

`install_evidence_pages(app)` (one line in app.py) registers the blueprint and keeps the
page store and the chart specs (an EvidenceSetup) in `app.extensions["evidence_pages"]`.
"""

from __future__ import annotations

import logging
import re
from html import escape

from flask import Blueprint, Flask, Response, current_app

from cds_service import metrics
from cds_service.clinical.charts import PALETTE, chart_table, render_chart
from cds_service.storage.evidence_pages import EvidenceSetup, build_evidence_setup
from cds_service.storage.store import StoreError

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
    setup = getattr(rt, "evidence", None) or build_evidence_setup(rt.settings, rt.store.engine, rt.cards)
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


def _count_open(data: dict) -> None:
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
def render_page(data: dict) -> str:
    title = data.get("title", "Evidence")
    parts = [f'<header><p class="kicker">Evidence behind the card</p><h1>{_e(title)}</h1>']
    if data.get("summary"):
        parts.append(f'<p class="summary">{_e(data["summary"])}</p>')
    parts.append("</header><main>")
    for i, chart in enumerate(data.get("charts", [])):
        parts.append(_chart_section(chart, f"chart-{i + 1}"))
    if data.get("lead"):
        parts.append(f'<section id="lead"><p>{_e(data["lead"])}</p></section>')
    for section in data.get("sections", []):
        # The bodies are the card file's Markdown, shown as text (escaped), line breaks kept.
        parts.append(
            f'<section class="evidence-section"><h2>{_e(section.get("heading", ""))}</h2>'
            f'<div class="md">{_e(section.get("body", ""))}</div></section>'
        )
    parts.append(_inputs_section(data.get("inputs", [])))
    caveats = "".join(f"<li>{_e(c)}</li>" for c in data.get("caveats", []))
    parts.append(f'<section id="caveats"><h2>Strength of evidence and caveats</h2><ul>{caveats}</ul></section>')
    sources = "".join(_source_item(s) for s in data.get("sources", []))
    parts.append(f'<section id="sources"><h2>Sources</h2><ul class="sources">{sources}</ul></section>')
    parts.append(f'<p class="judgement">{_e(JUDGEMENT)}</p></main>')
    return _document(title, "".join(parts))


def _chart_section(chart: dict, chart_id: str) -> str:
    headers, rows = chart_table(chart)
    head = "".join(f'<th scope="col">{_e(h)}</th>' for h in headers)
    body = "".join(
        "<tr>" + f'<th scope="row">{_e(row[0])}</th>' + "".join(f"<td>{_e(c)}</td>" for c in row[1:]) + "</tr>"
        for row in rows
    )
    notes = [*chart.get("notes", []), *([chart["end_note"]] if chart.get("end_note") else [])]
    note_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    return (
        f'<section class="chart-block" id="{_e(chart_id)}"><figure>'
        f"<figcaption><h2>{_e(chart.get('title', ''))}</h2></figcaption>"
        f"{render_chart(chart, chart_id)}{note_html}</figure>"
        f'<details class="data-table" open><summary>The numbers in this chart</summary>'
        f'<div class="scroll"><table><caption>{_e(chart.get("title", ""))}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></details></section>"
    )


def _inputs_section(inputs: list[dict]) -> str:
    if not inputs:
        return '<section id="inputs"><h2>Patient data used</h2><p>This card reads no patient values.</p></section>'
    rows = []
    for item in inputs:
        date = f"{item['date_label']} {item['date']}" if item.get("date") else ""
        how = item.get("how", "")
        note = item.get("note", "")
        if note:
            how = note if (not how or how in note) else f"{how} ({note})"
        status_class = "used" if item.get("status") == "used" else "gap"
        rows.append(
            f'<tr class="{status_class}"><th scope="row" data-label="Input">{_e(item["label"])}</th>'
            f'<td data-label="Value">{_e(item.get("value") or item.get("status", ""))}</td>'
            f'<td data-label="Unit">{_e(item.get("unit", ""))}</td>'
            f'<td data-label="Date">{_e(date)}</td>'
            f'<td data-label="How it was read">{_e(how)}</td></tr>'
        )
    return (
        '<section id="inputs"><h2>Patient data used and missing</h2><div class="scroll"><table class="inputs">'
        '<thead><tr><th scope="col">Input</th><th scope="col">Value</th><th scope="col">Unit</th>'
        '<th scope="col">Date</th><th scope="col">How it was read from the record</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _source_item(source: dict) -> str:
    label, url = _e(source.get("label", "")), source.get("url") or ""
    if url.startswith(("https://", "http://")):
        return f'<li><a href="{_e(url)}" rel="noreferrer noopener">{label}</a> <span class="url">{_e(url)}</span></li>'
    return f"<li>{label}</li>"


def not_found_page() -> str:
    return _document(
        "Evidence page not found",
        "<main><h1>Evidence page not found</h1><p>This link does not open an evidence page. "
        "Links are only valid as written on the card; open the card again in the record to get a new one.</p></main>",
    )


def expired_page() -> str:
    return _document(
        "Evidence page expired",
        "<main><h1>This evidence page has expired</h1><p>Evidence pages stay open for a limited time and "
        "their data is then deleted. Open the card again in the record to get a new link.</p></main>",
    )


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer"><meta name="robots" content="noindex, nofollow">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def _e(text: object) -> str:
    return escape(str(text), quote=True)


CSS = f"""
:root {{ color-scheme: light; }}
* {{ box-sizing: border-box; }}
.md {{ white-space: pre-wrap; overflow-wrap: anywhere; }}
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
  details > summary {{ display: none; }}
  .url {{ display: inline; font-size: 9pt; }}
  a {{ color: {PALETTE["text"]}; text-decoration: none; }}
}}
"""
