"""The evidence page carries what moved off the card: the lead, the situation's sections
filled and in the card file's order, the patient-specific estimate (or why there is none),
the strength line, every caveat and source."""

from __future__ import annotations

from support.chart import MVD, Chart, card

from cds_service.clinical.evidence import page_data
from cds_service.clinical.render import chosen, render

TODAY = "2025-06-01"


def test_the_page_has_the_situations_sections_in_the_card_files_order_with_their_figures():
    result = Chart().hfs().order(MVD).result("amr-persistence", "order-sign", TODAY)
    page = page_data(result)
    content = card("amr-persistence")
    expected = [k for k in result.situation.sections if chosen(content.sections[k].options, result) is not None]
    assert [s["key"] for s in page["sections"]][: len(expected)] == expected
    assert page["sections"][-1]["key"] == "estimate"  # why there is no patient-specific figure
    assert "No patient-specific probability of a persistent AMR is shown" in page["sections"][-1]["body"]
    bodies = "\n".join(s["body"] for s in page["sections"])
    assert "{" not in bodies and "21.7" in bodies  # filled with the card's figures
    assert page["lead"] == render(result)["detail"].split("\n\n", 1)[0]


def test_the_page_keeps_every_caveat_and_source_and_the_cards_strength_line():
    result = Chart().hfs().order(MVD).result("amr-persistence", "order-sign", TODAY)
    page = page_data(result)
    assert len(page["caveats"]) == 3  # the child caveat is omitted for an adult
    assert page["strength"] in render(result)["detail"]
    assert [s["url"] for s in page["sources"]] == [
        "https://doi.org/10.3171/2025.6.FOCUS25327",
        "https://doi.org/10.1093/neuros/nyaa069",
    ]


def test_an_input_recorded_as_free_text_or_dated_after_today_says_so_in_the_inputs_table():
    chart = Chart().hfs().medication(text="Carbamazepine 200 mg tablet").order(MVD)
    chart.local_observation("cohen-spasm-grade", "2026-03-01", valueInteger=3)
    rows = {r["label"]: r for r in page_data(chart.result("amr-persistence", "order-sign", TODAY))["inputs"]}
    assert 'recorded as free text ("Carbamazepine 200 mg tablet")' in rows["Carbamazepine use"]["note"]
    assert (
        "not used: dated after today (2026-03-01)"
        in rows["Preoperative symptom severity (Cohen spasm grade 0-4)"]["note"]
    )
