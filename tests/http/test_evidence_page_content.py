"""What the evidence page says and draws for every card type and situation (issue 17):
card Markdown rendered (tables as tables, raw HTML escaped), every chart titled with its
source, ratios as points with "CI not published", the patient marked only where the figure
applies (and a sentence where not), Park's revision outcomes after a revision or with
spasm back after MVD, and no empty Unit column."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from support.chart import all_cards
from support.evidence_scenarios import scenarios

from cds_service.clinical.charts import NARROW_WIDTH, WIDTH, render_chart
from cds_service.clinical.evidence import page_data
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.chart_specs import load_chart_specs
from cds_service.http.evidence_page import render_page
from cds_service.pages import markdown

SCENARIOS = scenarios()


@pytest.fixture(scope="module")
def specs():
    return load_chart_specs(DEFAULT_CARDS_DIR, all_cards())


def page(specs, name: str) -> tuple[dict, str]:
    data = page_data(SCENARIOS[name].result(), specs, summary="S")
    return data, render_page(data)


def visible_text(html: str) -> str:
    body = re.sub(r"<(style|svg)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", body)


def charts_titled(data: dict, word: str) -> list[dict]:
    return [c for c in data["charts"] if word in c["title"]]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_page_renders_its_markdown_and_titles_every_chart_with_its_source(specs, name):
    data, html = page(specs, name)
    text = visible_text(html)
    assert "**" not in text and "|---" not in text and "| ---" not in text
    assert not re.search(r"^\s*[-*] ", text, flags=re.M)  # list markers became <li>
    assert not re.search(r"^#{1,6} ", text, flags=re.M)
    if any("|" in s["body"] for s in data["sections"]):
        assert "<table>" in html
    assert data["charts"], name
    for chart in data["charts"]:
        assert chart["source"], chart["title"]
        assert f"Source: {chart['source']}" in html.replace("&#39;", "'")
    assert ">Unit<" not in html  # the unit is written with the value


@pytest.mark.parametrize("name", list(SCENARIOS))
@pytest.mark.parametrize("width", [WIDTH, NARROW_WIDTH])
def test_every_chart_is_well_formed_svg_at_both_widths(specs, name, width):
    data, _html = page(specs, name)
    for chart in data["charts"]:
        root = ET.fromstring(render_chart(chart, "c", width=width))
        assert root.get("viewBox").startswith(f"0 0 {width} ")


def test_markdown_in_card_texts_is_rendered_and_raw_html_is_escaped():
    html = markdown("**bold** <script>alert(1)</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- item")
    assert "<strong>bold</strong>" in html and "&lt;script&gt;" in html and "<script>" not in html
    assert "<table>" in html and "<td>1</td>" in html and "<li>item</li>" in html


def test_ratios_are_points_with_ci_not_published(specs):
    for name in ("rfa-after", "btxa-order"):
        data, _html = page(specs, name)
        [ratios] = [c for c in data["charts"] if c["kind"] == "ratios"]
        svg = render_chart(ratios)
        assert "CI not published" in svg and 'class="ci"' not in svg
        root = ET.fromstring(svg)
        for group in root.iter("{http://www.w3.org/2000/svg}g"):
            if group.get("class") == "ratio":  # the point, and no line from 1 to it
                assert [e.tag.split("}")[1] for e in group if e.tag.endswith(("rect", "line"))] == ["line", "rect"]


def test_with_spasm_back_after_mvd_parks_outcomes_are_drawn_and_the_recurrence_curve_marks_no_patient(specs):
    for name in ("mvd-spasm-back", "mvd-revision-ordered", "mvd-after-revision"):
        data, html = page(specs, name)
        [park] = charts_titled(data, "revision MVD")
        assert [r["text"] for r in park["rows"]] == ["19 of 23", "20 of 23", "3 of 23"]
        assert data["charts"].index(park) == 0
        [chang] = charts_titled(data, "Delayed recurrence")
        assert "marker" not in chart_keys(chang) and any("No patient mark" in n for n in chang["notes"])
        assert 'class="patient-marker"' not in render_chart(chang)
        assert "20 of 23" in html


def test_after_a_first_mvd_without_spasm_the_patient_is_marked_and_park_is_not_drawn(specs):
    data, _html = page(specs, "mvd-spasm-free")
    assert not charts_titled(data, "revision MVD")
    [chang] = charts_titled(data, "Delayed recurrence")
    assert chang.get("marker") and not chang["notes"]


def test_the_mvd_order_page_says_why_no_patient_is_marked_and_names_the_meta_analysis(specs):
    data, html = page(specs, "amr-order")
    [chart] = data["charts"]
    assert not chart.get("marker") and any(n.startswith("No patient mark") for n in chart["notes"])
    assert "Thirumala" in chart["source"]
    assert "No patient mark" in html


def chart_keys(chart: dict) -> set[str]:
    return {k for k, v in chart.items() if v}
