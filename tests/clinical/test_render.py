"""The card as CDS Hooks 2.0 shows it (issue 9): the detail is the lead, the inputs in
clinical words and one line of evidence strength; links to the primary source; suggestions
(real FHIR R4 resources) only where the card file declares the evidence supports an action;
coded override reasons on every card."""

from __future__ import annotations

import re

import pytest
from fhir.resources.R4B.servicerequest import ServiceRequest
from support.chart import CARBAMAZEPINE, MVD, Chart, all_cards, concepts

from cds_service.clinical.render import escape, issued_suggestions, render, suggestion_uuid

TODAY = "2025-06-01"
# FHIR resource types, element names and code-system names the engine must not put on a card.
FHIR_WORDS = re.compile(
    r"\b(ServiceRequest|MedicationRequest|MedicationStatement|Observation|Procedure|performedPeriod|"
    r"valueQuantity|clinicalStatus|SNOMED|LOINC|RxNorm|ICD-10)\b|matched by text only"
)


def mri_card_chart() -> Chart:
    # HFS recorded again 6 months after the MVD, no MRI result: card E, persistent after MVD
    return Chart().hfs(onset="2018-01-01").mvd("2024-02-01").hfs(onset=None, recorded="2024-08-10")


def persisted_amr_chart(mvd_day: str = "2025-05-20") -> Chart:
    chart = Chart().hfs().mvd(f"{mvd_day}T08:00:00Z", f"{mvd_day}T11:00:00Z")
    return chart.local_observation("amr-intraop-result", mvd_day, valueString="persisted")


def test_spasm_persisting_after_mvd_without_an_mri_result_suggests_an_mri_with_tof_mra():
    result = mri_card_chart().result("mvd-recurrence", "patient-view", TODAY)
    card = render(result, patient_id="pat-1", card_uuid="6f1c2b56-4d2e-4c36-9a43-0c0f6f6b2a11")
    assert card["selectionBehavior"] == "at-most-one"
    (suggestion,) = card["suggestions"]
    assert suggestion["uuid"] == suggestion_uuid(card["uuid"], "mri-tof-mra-root-exit-zone")
    assert "3D TOF MRA" in suggestion["label"]
    (action,) = suggestion["actions"]
    assert action["type"] == "create" and action["description"]
    resource = action["resource"]
    assert resource["subject"] == {"reference": "Patient/pat-1"}
    assert resource["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "24735-3",
        "display": "MR Internal auditory canal and Posterior fossa",
    }
    ServiceRequest.model_validate(resource)  # a valid FHIR R4 ServiceRequest


def test_no_mri_is_suggested_when_an_mri_result_is_recorded():
    chart = mri_card_chart().local_observation("mri-neurovascular-contact", "2024-09-01", valueString="yes")
    card = chart.show("mvd-recurrence", "patient-view", TODAY)
    assert "suggestions" not in card and "selectionBehavior" not in card


def test_no_mri_is_suggested_before_6_months_after_the_mvd():
    chart = Chart().hfs(onset="2018-01-01").mvd("2025-01-10").hfs(onset=None, recorded="2025-03-10")
    result = chart.result("mvd-recurrence", "patient-view", TODAY)
    if result is not None:  # the card may say residual spasm often resolves; it offers no MRI
        assert "suggestions" not in render(result)


def test_a_persisted_amr_suggests_a_follow_up_visit_about_3_months_after_the_mvd():
    result = persisted_amr_chart("2025-05-20").result("amr-persistence", "patient-view", TODAY)
    card = render(result, patient_id="p7")
    (suggestion,) = card["suggestions"]
    resource = suggestion["actions"][0]["resource"]
    assert resource["occurrenceDateTime"] == "2025-08-19"  # 3 months (91 days) after 2025-05-20
    assert resource["code"]["coding"][0]["code"] == "439740005"
    assert resource["subject"] == {"reference": "Patient/p7"}
    ServiceRequest.model_validate(resource)
    assert card["selectionBehavior"] == "at-most-one"


def test_a_resolved_amr_or_a_follow_up_already_past_suggests_nothing():
    chart = Chart().hfs().mvd("2025-05-20T08:00:00Z", "2025-05-20T11:00:00Z")
    chart.local_observation("amr-intraop-result", "2025-05-20", valueString="resolved")
    assert "suggestions" not in chart.show("amr-persistence", "patient-view", TODAY)
    late = persisted_amr_chart("2025-01-10").show("amr-persistence", "patient-view", TODAY)
    assert "suggestions" not in late


def test_a_suggestion_uuid_is_one_the_card_file_can_issue_with_that_card_uuid_only():
    card = render(mri_card_chart().result("mvd-recurrence", "patient-view", TODAY))
    content = mri_card_chart().result("mvd-recurrence", "patient-view", TODAY).card
    issued = issued_suggestions(content, card["uuid"])
    assert card["suggestions"][0]["uuid"] in issued
    assert card["suggestions"][0]["uuid"] not in issued_suggestions(content, "0d3a5f0e-6b9a-4f53-8d55-5f8a6a2b7c10")


@pytest.mark.parametrize("content", all_cards(), ids=lambda c: c.id)
def test_every_card_offers_coded_override_reasons_in_the_projects_local_code_system(content):
    local = concepts().local_system
    assert local == "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
    assert content.override_reasons
    for reason in content.override_reasons:
        assert reason.code and reason.display and reason.system == local


def test_every_card_links_its_primary_source_and_shows_coded_override_reasons():
    card = persisted_amr_chart().show("amr-persistence", "patient-view", TODAY)
    assert card["links"][-1] == {
        "label": f"Source: {card['source']['label']}",
        "url": card["source"]["url"],
        "type": "absolute",
    }
    assert {"code", "system", "display", "extension"} == set(card["overrideReasons"][0])  # + the HL7 category


def test_the_detail_is_lead_inputs_and_one_line_of_evidence_strength():
    chart = Chart().hfs(onset="2019-05-01").medication(CARBAMAZEPINE, authored="2019-06-01").order(MVD)
    detail = chart.show("amr-persistence", "order-select", TODAY)["detail"]
    headings = re.findall(r"^### (.+)$", detail, flags=re.M)
    assert headings == ["Patient data used", "Patient data missing or not yet known"]
    assert detail.count("**Strength of evidence:**") == 1
    lead = detail.split("\n\n### ", 1)[0]
    assert len(lead.split()) <= 120
    assert "Sources" not in detail and "https://" not in detail  # the sources are links


def test_a_value_dated_after_today_is_listed_as_not_used_with_its_date():
    chart = Chart().hfs().order(MVD).local_observation("cohen-spasm-grade", "2026-03-01", valueInteger=3)
    detail = chart.show("amr-persistence", "order-select", TODAY)["detail"]
    assert "- **Preoperative symptom severity (Cohen spasm grade 0-4)**: not used: dated after today (2026-03-01)" in (
        detail
    )


def test_a_newer_unreadable_value_is_named_with_the_value_used():
    chart = Chart().hfs().order(MVD)
    chart.local_observation("cohen-spasm-grade", "2025-03-01", valueInteger=2)
    chart.local_observation("cohen-spasm-grade", "2025-05-01", valueString="very strong, maybe")
    detail = chart.show("amr-persistence", "order-select", TODAY)["detail"]
    assert (
        "- **Preoperative symptom severity (Cohen spasm grade 0-4)**: 2, recorded 2025-03-01; a newer value from "
        "2025-05-01 could not be read; the value from 2025-03-01 was used" in detail
    )


@pytest.mark.parametrize(
    ("card_id", "hook", "chart"),
    [
        ("amr-persistence", "order-select", lambda: Chart().hfs().medication(text="Carbamazepine 200 mg").order(MVD)),
        ("mvd-recurrence", "patient-view", mri_card_chart),
        ("amr-persistence", "patient-view", persisted_amr_chart),
    ],
)
def test_the_engine_puts_no_fhir_element_or_code_system_name_on_the_card(card_id, hook, chart):
    card = chart().show(card_id, hook, TODAY)
    # what the engine writes: the order line, the inputs' notes, the not-used dates
    engine_lines = [line for line in card["detail"].splitlines() if line.startswith("- **")]
    for line in engine_lines:
        words = FHIR_WORDS.findall(line.split("; ", 1)[-1] if "looked for" in line else line)
        assert not [w for w in words if w and w not in ("Condition",)], line


def test_record_text_stays_escaped_on_the_card():
    chart = Chart().hfs().order(MVD).medication(text="Carbamazepine [click](https://evil.example) <b>")
    detail = chart.show("amr-persistence", "order-select", TODAY)["detail"]
    assert r"\[click\]" in detail and r"\<b\>" in detail


# -- rendering basics (from the test kit) --


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
    # issue 9: coded override reasons on every card, and links (the primary source last)
    assert list(card) == ["uuid", "summary", "indicator", "detail", "source", "overrideReasons", "links"]
    source = result.situation.source or result.card.source
    topic = {"system": result.card.topic.system, "code": result.card.topic.code, "display": result.card.topic.display}
    assert card["source"] == {"label": source.label, "url": source.url, "topic": topic}
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
    assert f"- **{during_surgery.label}**: not known before surgery" in detail
    assert during_surgery.status == "intraoperative" and during_surgery.value is None  # never assumed
    # how it is measured is on the evidence page now
    page = Chart().hfs(onset="2019-03-01").order(MVD).evidence("amr-persistence", "order-sign", TODAY)
    assert f"- {during_surgery.label}: {during_surgery.note}" in page and during_surgery.note
    assert result.input("disease_duration").display in detail


def test_patient_text_is_one_inert_markdown_line():
    assert escape("*bold* [link](https://x) <b>|~`_\\") == "\\*bold\\* \\[link\\](https://x) \\<b\\>\\|\\~\\`\\_\\\\"
    assert escape("two\n  lines\tand tabs") == "two lines and tabs"
    assert escape(3.5) == "3.5"


def test_long_patient_text_is_cut_with_an_ellipsis():
    shown = escape("x" * 500)
    assert len(shown) == 120 and shown.endswith("…")
