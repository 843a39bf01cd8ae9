"""Rendering a card result as a CDS Hooks card: patient-derived text is inert Markdown,
every input used or missing is listed, and each rendering is a new card (new uuid)."""

from __future__ import annotations

from support.chart import MVD, Chart

from cds_service.clinical.render import escape, render

TODAY = "2025-06-01"


def amr_result():
    return (
        Chart(patient_id="pt-render-1")
        .hfs(onset="2019-03-01")
        .order(MVD)
        .result("amr-persistence", "order-sign", TODAY)
    )


def test_a_rendered_card_has_the_cds_hooks_fields_and_the_cards_source():
    result = amr_result()
    card = render(result)
    assert list(card) == ["uuid", "summary", "indicator", "detail", "source"]
    source = result.situation.source or result.card.source
    assert card["source"] == {"label": source.label, "url": source.url}
    assert card["indicator"] == (result.situation.indicator or result.card.indicator)


def test_every_rendering_is_a_new_card():
    result = amr_result()
    assert render(result)["uuid"] != render(result)["uuid"]
    assert render(result)["detail"] == render(result)["detail"]


def test_used_and_missing_inputs_are_listed_and_a_missing_one_is_never_assumed():
    result = amr_result()
    detail = render(result)["detail"]
    missing = result.input("carbamazepine")
    assert f"- **{missing.label}**: not recorded (" in detail and "; not assumed" in detail
    during_surgery = result.input("retraction_depth")
    assert f"- **{during_surgery.label}**: not known before surgery (" in detail
    assert result.input("disease_duration").display in detail


def test_patient_text_is_one_inert_markdown_line():
    assert escape("*bold* [link](https://x) <b>|~`_\\") == "\\*bold\\* \\[link\\](https://x) \\<b\\>\\|\\~\\`\\_\\\\"
    assert escape("two\n  lines\tand tabs") == "two lines and tabs"
    assert escape(3.5) == "3.5"


def test_long_patient_text_is_cut_with_an_ellipsis():
    shown = escape("x" * 500)
    assert len(shown) == 120 and shown.endswith("…")
