"""Issue 11: with a learned site model the evidence page shows the model's calibration (its
report's groups, predicted against observed, as an SVG chart) with N, events, C-statistic
and calibration slope; without one it shows no such chart."""

from __future__ import annotations

from support.chart import Chart, all_cards
from support.learned_reports import learned_overlay, rfa_report
from support.site_overlays import RFA_SITE

from cds_service.clinical.charts import chart_table, render_chart
from cds_service.clinical.evidence import page_data
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.chart_specs import load_chart_specs
from cds_service.http.evidence_page import render_page

CARD = "rfa-recurrence"
TODAY = "2025-06-01"


def _page(overlay: dict) -> dict:
    result = Chart.from_bundle("hfs_after_rfa.json").result(CARD, "patient-view", TODAY, overlay=overlay)
    return page_data(result, load_chart_specs(DEFAULT_CARDS_DIR, all_cards(overlay)))


def test_a_learned_model_adds_its_calibration_chart_with_n_events_c_and_slope(tmp_path):
    page = _page(learned_overlay(tmp_path, rfa_report()))
    chart = next(c for c in page["charts"] if c["kind"] == "calibration")
    assert [(g["n"], g["predicted_text"], g["observed_text"]) for g in chart["groups"]] == [
        (206, "42.0 %", "40.0 %"),
        (206, "61.0 %", "63.0 %"),
    ]
    assert chart["end_note"] == (
        "Fitted on 412 of this hospital's patients (187 recurrences or repeat treatments); C-statistic 0.74, "
        "calibration slope 0.96 (both corrected for optimism); report of 2026-11-26."
    )
    svg = render_chart(chart, "cal")
    assert svg.startswith("<svg") and svg.count('class="point"') == 2 and 'class="perfect"' in svg
    assert "206 patients: predicted 42.0 %, observed 40.0 %." in svg  # the text alternative
    headers, rows = chart_table(chart)
    assert headers == ["Group", "Patients", "Predicted recurrence (%)", "Observed recurrence (%)"]
    assert rows[1] == ["2", "206", "61.0 %", "63.0 %"]
    html = render_page(page)
    assert (
        "Calibration of the site&#x27;s recurrence model" in html
        or "Calibration of the site's recurrence model" in html
    )
    assert "C-statistic 0.74" in html and "calibration slope 0.96" in html


def test_without_a_learned_model_there_is_no_calibration_chart():
    for overlay in (None, RFA_SITE):
        assert all(c["kind"] != "calibration" for c in _page(overlay)["charts"])


def test_a_calibration_chart_may_not_name_an_unknown_placeholder(tmp_path):
    import shutil

    import pytest

    from cds_service.content.errors import ContentError

    (tmp_path / "evidence").mkdir()
    shutil.copy(DEFAULT_CARDS_DIR / "evidence" / "charts.toml", tmp_path / "evidence" / "charts.toml")
    path = tmp_path / "evidence" / "charts.toml"
    path.write_text(path.read_text(encoding="utf-8").replace("{model_events} poor", "{model_eventz} poor"), "utf-8")
    with pytest.raises(ContentError, match="no figure 'model_eventz'"):
        load_chart_specs(tmp_path, all_cards())
