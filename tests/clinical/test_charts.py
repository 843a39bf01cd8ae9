"""Evidence page charts: the published points of each card file, drawn as SVG with the
patient marked, a text alternative and a data table, in colours that pass WCAG AA."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from support.chart import HYPERTENSION, Chart, all_cards

from cds_service.clinical.charts import (
    BACKGROUND,
    chart_table,
    contrast_ratio,
    describe,
    palette_colours,
    render_chart,
)
from cds_service.clinical.evidence import evidence_link, page_data
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import ContentError
from cds_service.content.chart_specs import load_chart_specs, parse_ci

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def specs():
    return load_chart_specs(DEFAULT_CARDS_DIR, all_cards())


def svg(chart: dict) -> ET.Element:
    return ET.fromstring(render_chart(chart))


def points_of(root: ET.Element) -> list[float]:
    return [float(c.get("data-y")) for c in root.iter(f"{SVG}circle") if c.get("class") == "point"]


def marker(root: ET.Element) -> ET.Element | None:
    return next((g for g in root.iter() if g.get("class") == "patient-marker"), None)


# ---------------------------------------------------------------------------- palette
def test_every_chart_colour_passes_wcag_aa_contrast_for_text_on_the_white_background():
    for colour in palette_colours():
        assert contrast_ratio(colour, BACKGROUND) >= 4.5, colour


def test_the_contrast_formula_gives_the_wcag_reference_values():
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#767676", "#ffffff") == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio("#ffffff", "#ffffff") == pytest.approx(1.0)


# ---------------------------------------------------------------------------- RFA
def rfa_patient(today: str):
    chart = Chart().hfs(onset="2019-03-01").rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z")
    return chart.result("rfa-recurrence", "patient-view", today=today)


def test_the_rfa_curve_goes_through_the_published_points_only_and_marks_the_patients_months(specs):
    data = page_data(rfa_patient("2025-08-01"), specs)
    curve = data["charts"][0]
    root = svg(curve)
    assert points_of(root) == [20.2, 36.4, 71.9]
    path = next(p for p in root.iter(f"{SVG}path") if p.get("fill") == "none")
    assert path.get("d").count("L") == 2  # three points, no origin added
    mark = marker(root)
    assert mark is not None and 6.5 < float(mark.get("data-x")) < 7.0 and mark.get("data-beyond") == "false"
    assert "This patient: 6 months" in "".join(mark.itertext())


def test_past_12_months_the_marker_stays_at_the_last_point_and_says_so(specs):
    curve = page_data(rfa_patient("2026-03-01"), specs)["charts"][0]
    root = svg(curve)
    mark = marker(root)
    assert mark.get("data-beyond") == "true"
    assert "past the last published point" in "".join(mark.itertext())
    ticks = [t.text for t in root.iter(f"{SVG}text") if t.text and t.text.isdigit()]
    assert max(int(t) for t in ticks if int(t) <= 12) == 12 and "13" not in ticks and "18" not in ticks


def test_the_rfa_ratios_show_the_published_hazard_ratios_with_the_patients_values(specs):
    ratios = page_data(rfa_patient("2025-08-01"), specs)["charts"][1]
    assert [(r["text"], r["patient"]) for r in ratios["rows"]] == [
        ("0.538", "45 min (performed 2025-01-10)"),
        ("0.075", "not recorded"),
    ]
    root = svg(ratios)
    assert [g.get("data-value") for g in root.iter(f"{SVG}g") if g.get("class") == "ratio"] == ["0.538", "0.075"]


def test_every_chart_has_a_title_and_a_description_naming_every_published_point(specs):
    curve = page_data(rfa_patient("2025-08-01"), specs)["charts"][0]
    root = svg(curve)
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert root.get("role") == "img" and title.get("id") in root.get("aria-labelledby")
    assert "Kaplan-Meier" in title.text
    for text in ("20.2 % at 3 months", "36.4 % at 6 months", "71.9 % at 12 months", "This patient: 6 months"):
        assert text in desc.text
    headers, rows = chart_table(curve)
    assert headers == ["Months since the RFA", "Cohort (n = 99)"]
    assert rows == [["3 months", "20.2 %"], ["6 months", "36.4 %"], ["12 months", "71.9 %"]]


# ---------------------------------------------------------------------------- AMR, MVD
def amr_after_mvd(result: str):
    chart = Chart().hfs(onset="2018-01-01").mvd("2025-03-01T08:00:00Z", "2025-03-01T11:00:00Z")
    chart.local_observation("amr-intraop-result", "2025-03-01T10:30:00Z", valueString=result)
    return chart.result("amr-persistence", "patient-view", today="2025-05-01")


def test_a_persisted_amr_highlights_the_persisted_series_with_its_confidence_intervals(specs):
    result = amr_after_mvd("persisted")
    assert result is not None
    chart = page_data(result, specs)["charts"][0]
    persisted, resolved = chart["series"]
    assert persisted["highlight"] and not resolved["highlight"]
    assert [(p["y"], p["low"], p["high"]) for p in persisted["points"]] == [
        (47.8, 33.0, 63.0),
        (40.8, 23.0, 61.0),
        (24.4, 13.0, 41.0),
    ]
    assert [p["y"] for p in resolved["points"]] == [7.3, 4.2, 4.0]
    assert all("low" not in p for p in resolved["points"])  # no CI published for resolved
    root = svg(chart)
    assert len([g for g in root.iter(f"{SVG}g") if g.get("class") == "ci"]) == 3
    assert "47.8 % at Discharge (95 % CI 33-63 %)" in describe(chart)


def test_the_mvd_chart_marks_the_time_since_surgery_in_years(specs):
    chart = Chart().hfs(onset="2015-01-01").mvd("2023-05-01T08:00:00Z").condition(HYPERTENSION, onset="2010-01-01")
    result = chart.result("mvd-recurrence", "patient-view", today="2026-05-01")
    assert result is not None
    curve = page_data(result, specs)["charts"][0]
    assert [p["y"] for p in curve["series"][0]["points"]] == [1.0, 1.7, 2.9]
    assert [p["x"] for p in curve["series"][0]["points"]] == [1.0, 2.0, 5.0]
    assert curve["marker"]["x"] == pytest.approx(3.0, abs=0.01)
    assert float(marker(svg(curve)).get("data-x")) == pytest.approx(3.0, abs=0.01)


# ---------------------------------------------------------------------------- MWA, BTX-A
def test_the_mwa_charts_show_the_cohort_trajectories_and_the_patients_latest_pain_and_morphine(specs):
    chart = (
        Chart()
        .condition(("http://hl7.org/fhir/sid/icd-10-cm", "C79.51"), onset="2025-01-01")
        .pain("2025-05-20T09:00:00Z", 7)
    )
    result = chart.result("spinal-metastasis-mwa", "patient-view", today="2025-06-01")
    assert result is not None
    vas, morphine = page_data(result, specs)["charts"]
    assert [p["y"] for p in vas["series"][0]["points"]] == [6, 5, 4, 3, 3, 3]
    assert [p["y"] for p in morphine["series"][0]["points"]] == [77.8, 34.5, 28.7, 24.6, 21.7, 21.0]
    assert vas["reference"]["y"] == 7.0 and "2025-05-20" in vas["reference"]["text"]
    assert float(marker(svg(vas)).get("data-y")) == 7.0
    assert morphine.get("reference") is None and any("not recorded" in n for n in morphine["notes"])
    assert marker(svg(morphine)) is None


def test_the_btxa_chart_shows_the_odds_ratio_and_whether_the_patient_has_hypertension(specs):
    chart = Chart().hfs().condition(HYPERTENSION, onset="2015-06-01").order(("http://www.ama-assn.org/go/cpt", "64612"))
    result = chart.result("btxa-response", "order-select", today="2025-06-01")
    assert result is not None
    (ratios,) = page_data(result, specs)["charts"]
    assert ratios["rows"][0]["text"] == "5.847" and ratios["rows"][0]["patient"].startswith("yes")


# ---------------------------------------------------------------------------- page data
def test_the_page_data_holds_no_patient_identifier(specs):
    chart = Chart(patient_id="pat-SECRET-42", birth_date="1970-01-02").hfs(onset="2019-03-01")
    chart.rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z")
    data = page_data(chart.result("rfa-recurrence", "patient-view", today="2025-08-01"), specs)
    text = repr(data)
    assert "pat-SECRET-42" not in text and "1970-01-02" not in text
    assert {"charts", "inputs", "caveats", "sources"} <= set(data)
    assert data["sources"][0]["url"] == "https://pubmed.ncbi.nlm.nih.gov/36375197/"


def test_the_render_hook_saves_the_page_and_returns_an_absolute_link(specs):
    saved = []

    def save(data: dict) -> str:
        saved.append(data)
        return "tok-123"

    link = evidence_link(rfa_patient("2025-08-01"), specs, save, "https://cds.example.org/", summary="S")
    assert link == {
        "label": link["label"],
        "url": "https://cds.example.org/evidence/tok-123",
        "type": "absolute",
    }
    assert saved[0]["summary"] == "S" and saved[0]["card_id"] == "rfa-recurrence"


def test_every_card_file_has_a_chart(specs):
    assert {c.id for c in all_cards()} <= set(specs)


def test_a_chart_naming_a_figure_the_card_does_not_have_is_refused_at_start_up(tmp_path):
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "charts.toml").write_text(
        '[[charts]]\ncard = "rfa-recurrence"\nkind = "curve"\ntitle = "t"\nsource = "s"\n'
        'series = [{ label = "c", points = [{ at = 3, label = "3 months", figure = "recurrence_4m" }] }]\n'
    )
    with pytest.raises(ContentError, match="recurrence_4m"):
        load_chart_specs(tmp_path, all_cards())


def test_a_confidence_interval_is_read_as_low_high():
    assert parse_ci("33-63") == (33.0, 63.0)
    assert parse_ci("63-33") is None and parse_ci("about 40") is None


def test_the_amr_chart_places_the_patients_time_since_mvd_between_the_published_time_points(specs):
    chart = page_data(amr_after_mvd("persisted"), specs)["charts"][0]
    assert chart["marker"]["x"] == pytest.approx(2.0, abs=0.05)  # 2025-03-01 to 2025-05-01
    mark = marker(svg(chart))
    assert mark.get("data-beyond") == "false" and "This patient: " in "".join(mark.itertext())
    line_x = float(next(mark.iter(f"{SVG}line")).get("x1"))
    discharge, three_months = (
        float(c.get("cx")) for c in [c for c in svg(chart).iter(f"{SVG}circle") if c.get("class") == "point"][:2]
    )
    assert discharge < line_x < three_months


def test_record_text_drawn_in_a_chart_is_escaped_and_the_svg_stays_well_formed():
    hostile = '</text><script>alert(1)</script>&"'
    curve = {
        "kind": "curve",
        "title": hostile,
        "x_label": hostile,
        "series": [{"label": hostile, "points": [{"label": "3 months", "x": 3.0, "y": 20.2, "text": "20.2 %"}]}],
        "marker": {"x": 2.0, "text": hostile},
    }
    ratios = {
        "kind": "ratios",
        "measure": "HR",
        "rows": [{"label": hostile, "value": 0.5, "text": "0.5", "patient": hostile}],
    }
    for chart in (curve, ratios):
        text = render_chart(chart)
        assert "<script>" not in text
        ET.fromstring(text)  # well-formed XML
