"""HTML pages from Jinja2 templates shipped with the package (cds_service/templates): the
evidence page, its not-found and expired pages, and a learned model's report.

Autoescaping is on for every template: a value is text unless it was made HTML here (the
`markdown` filter) or by the chart code (SVG built with every text escaped). Card texts
are CommonMark with tables, rendered by markdown-it-py with raw HTML off (`html=False`):
a tag written in a card file or carried in from a patient's record shows as text.
"""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, select_autoescape
from markdown_it import MarkdownIt
from markupsafe import Markup

from cds_service import formatting


@cache
def _markdown() -> MarkdownIt:
    # CommonMark, tables on, raw HTML off (escaped), links checked by markdown-it's validator.
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")


def markdown(text: str | None) -> Markup:
    """Card Markdown as HTML (tables as tables, raw HTML escaped)."""
    return Markup(_markdown().render(text or ""))


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("cds_service", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["markdown"] = markdown
    env.filters["number"] = formatting.number
    env.filters["significant"] = formatting.significant
    env.filters["percent"] = formatting.percent
    return env


def render(template: str, **context: object) -> str:
    """A template of cds_service/templates filled with `context` (HTML text)."""
    return environment().get_template(template).render(**context)
