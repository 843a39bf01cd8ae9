"""The card files as clinical content: every figure traceable to EVIDENCE.md, every source
cited by an identifier from the specification, and a loader that refuses broken content
(and broken site models) at start-up instead of during a hook call."""

import copy
import json
import math
import re
import tomllib
from datetime import date

import pytest
from support import evidence
from support.chart import Chart, all_cards
from support.paths import SCENARIOS_DIR, SYNTHEA_DIR

from cds_service.clinical.evaluate import evaluate
from cds_service.clinical.evidence import page_data
from cds_service.clinical.record import PatientRecord
from cds_service.clinical.render import render
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.cards import (
    ContentError,
    card_from_data,
    content_versions,
    load_cards,
)

CARD_FILES = sorted(p for p in DEFAULT_CARDS_DIR.glob("*.toml") if p.name not in ("concepts.toml", "services.toml"))
SYNTHEA = sorted(SYNTHEA_DIR.glob("*.json"))


def raw(card_id: str) -> dict:
    for path in CARD_FILES:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if data["id"] == card_id:
            return data
    raise KeyError(card_id)


def test_the_five_cards_load_with_their_ids_and_versions():
    cards = load_cards(DEFAULT_CARDS_DIR)
    assert sorted(c.id for c in cards) == sorted(evidence.CARD_SECTION)
    assert content_versions(cards) == ",".join(f"{i}@1.0.0" for i in sorted(evidence.CARD_SECTION))


@pytest.mark.parametrize("card_id", sorted(evidence.CARD_SECTION))
def test_every_figure_of_a_card_is_the_one_the_evidence_register_gives(card_id):
    data = raw(card_id)
    assert evidence.unregistered(card_id, data["figures"]) == {}
    letter = evidence.CARD_SECTION[card_id]
    not_published = {name: value for name, value in data["figures"].items() if not evidence.published(letter, value)}
    assert not_published == {}


@pytest.mark.parametrize("card_id", sorted(evidence.CARD_SECTION))
def test_every_model_number_is_the_published_one(card_id):
    letter = evidence.CARD_SECTION[card_id]
    model = raw(card_id)["model"]
    for value in list(model.get("coefficients", {}).values()) + list(model.get("odds_ratios", {}).values()):
        assert evidence.published(letter, value), value


def test_rfa_hazard_ratios_on_the_card_are_exp_of_the_published_coefficients():
    figures = raw("rfa-recurrence")["figures"]
    assert round(math.exp(figures["coef_operation_time"]), 3) == figures["hr_operation_time"] == 0.538
    assert round(math.exp(figures["coef_paralysis_grade"]), 3) == figures["hr_paralysis_grade"] == 0.075


@pytest.mark.parametrize("card_id", sorted(evidence.CARD_SECTION))
def test_sources_are_cited_with_identifiers_from_the_specification_or_seeds(card_id):
    card = next(c for c in all_cards() if c.id == card_id)
    urls = [card.source.url] + [r.url for r in card.references if r.url]
    urls += [s.source.url for s in card.situations if s.source]
    for url in urls:
        assert evidence.identifier_is_cited(url), url
        assert "term=" not in url and "search" not in url  # never an invented search URL


def test_cards_with_two_or_more_sources_list_them_all():
    amr = raw("amr-persistence")
    assert "10.1093/neuros/nyaa069" in json.dumps(amr["references"])  # Thirumala 2020
    mvd = raw("mvd-recurrence")
    labels = " ".join(r["label"] for r in mvd["references"])
    assert "Payner" in labels and "Chang" in labels and "Park" in labels
    assert "10.1016/j.wneu.2019.07.191" in json.dumps(mvd["references"])


def test_every_card_fires_somewhere_and_names_the_hooks_of_the_brief():
    hooks = {c.id: c.hooks for c in all_cards()}
    assert hooks["rfa-recurrence"] == {"order-select", "order-sign", "patient-view"}
    assert hooks["amr-persistence"] == {"order-select", "order-sign", "patient-view"}
    assert hooks["btxa-response"] == {"order-select", "order-sign"}
    # EVIDENCE.md E: a revision MVD ordered for HFS after an earlier MVD gets the revision guidance
    assert hooks["mvd-recurrence"] == {"order-select", "order-sign", "patient-view"}
    assert hooks["spinal-metastasis-mwa"] == {"order-select", "order-sign", "patient-view"}


# -- nothing fires for patients a card does not concern -----------------------------------------
@pytest.mark.parametrize("path", SYNTHEA, ids=lambda p: p.name.split("_")[0])
@pytest.mark.parametrize("hook", ["patient-view", "order-select", "order-sign"])
def test_no_card_fires_for_the_synthea_patients(path, hook):
    bundle = json.loads(path.read_text(encoding="utf-8"))
    chart = Chart.__new__(Chart)
    chart.resources = [e["resource"] for e in bundle["entry"]]
    chart.patient_id = next(r["id"] for r in chart.resources if r["resourceType"] == "Patient")
    chart.drafts, chart.selections = [], []
    if hook != "patient-view":
        # a routine order that none of the cards is about
        chart.drafts.append(
            {
                "resourceType": "ServiceRequest",
                "id": "sr-1",
                "status": "draft",
                "intent": "order",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "subject": {"reference": f"Patient/{chart.patient_id}"},
            }
        )
        chart.selections.append("ServiceRequest/sr-1")
    record = chart.record(hook, "2025-06-01")
    assert record.sex in ("male", "female") and record.observations  # the chart was read, yet:
    fired = [c.id for c in all_cards() if evaluate(c, record, hook) is not None]
    assert fired == []


def test_an_empty_record_fires_no_card_for_any_hook():
    record = PatientRecord(today=date(2025, 6, 1))
    for hook in ("patient-view", "order-select", "order-sign"):
        assert [c.id for c in all_cards() if evaluate(c, record, hook)] == []


def test_no_card_fires_for_a_hook_it_does_not_name():
    chart = Chart.from_bundle("hfs_after_rfa.json")
    assert chart.show("rfa-recurrence", "order-sign", "2025-06-01") is None  # no RFA order
    assert chart.show("btxa-response", "patient-view", "2025-06-01") is None


# -- the rendered cards as CDS Hooks 2.0 JSON ----------------------------------------------------
SCENARIOS = [
    ("hfs_after_rfa.json", "rfa-recurrence", "patient-view", "2025-06-01"),
    ("hfs_before_mvd.json", "amr-persistence", "order-sign", "2025-06-01"),
    ("hfs_after_mvd_amr.json", "amr-persistence", "patient-view", "2025-03-01"),
    ("hfs_after_mvd_amr.json", "mvd-recurrence", "patient-view", "2025-03-01"),
    ("hfs_recurrent_after_mvd.json", "mvd-recurrence", "patient-view", "2025-03-01"),
    ("vertebral_metastasis_pain.json", "spinal-metastasis-mwa", "patient-view", "2025-06-01"),
]


def _no_empty_values(value, where="card"):
    assert value is not None, where
    if isinstance(value, str):
        assert value.strip(), where
    elif isinstance(value, dict):
        assert value, where
        for k, v in value.items():
            _no_empty_values(v, f"{where}.{k}")
    elif isinstance(value, list):
        assert value, where
        for i, v in enumerate(value):
            _no_empty_values(v, f"{where}[{i}]")


@pytest.mark.parametrize("bundle,card_id,hook,today", SCENARIOS)
def test_rendered_cards_are_complete_cds_hooks_cards(bundle, card_id, hook, today):
    chart = Chart.from_bundle(bundle)
    if hook != "patient-view":
        chart.order(("http://www.cms.gov/Medicare/Coding/ICD10", "00NM0ZZ"))
    card = chart.show(card_id, hook, today)
    _no_empty_values(card)
    required = {"uuid", "summary", "indicator", "detail", "source", "links"}
    assert required <= set(card) <= required | {"suggestions", "selectionBehavior", "overrideReasons"}
    assert len(card["summary"]) < 140
    assert card["indicator"] == "info"  # advisory, unvalidated results (EVIDENCE.md conventions)
    assert set(card["source"]) == {"label", "url", "topic"} and card["source"]["url"].startswith("https://")
    detail = card["detail"]
    for heading in ("### Patient data used", "**Strength of evidence:**"):
        assert heading in detail
    # the sources are links (and on the evidence page)
    assert {"label": f"Source: {card['source']['label']}", "url": card["source"]["url"], "type": "absolute"} in card[
        "links"
    ]
    assert detail.rstrip().endswith("*This card informs and does not replace clinical judgement.*")
    json.dumps(card)  # JSON-serialisable as it is


@pytest.mark.parametrize("bundle,card_id,hook,today", SCENARIOS)
def test_a_card_shows_no_number_its_evidence_section_does_not_give(bundle, card_id, hook, today):
    chart = Chart.from_bundle(bundle)
    if hook != "patient-view":
        chart.order(("http://www.cms.gov/Medicare/Coding/ICD10", "00NM0ZZ"))
    result = chart.result(card_id, hook, today)
    card = render(result)
    shown = card["summary"] + "\n" + card["detail"] + "\n" + card["source"]["label"]
    # The patient's own values and dates are not evidence: take them out first.
    cut = shown.index("### Patient data used")
    end = shown.index("**Strength of evidence:**")
    shown = shown[:cut] + shown[end:]
    # ... and the evidence page's texts (without its inputs table) are checked the same way.
    page = page_data(result)
    shown += "\n".join(
        [page["lead"], page["strength"], *page["caveats"], *(s["heading"] + "\n" + s["body"] for s in page["sections"])]
    )
    shown += "\n".join(s["label"] for s in page["sources"])
    for item in result.inputs:
        shown = re.sub(rf"(?<![\w.]){re.escape(item.display)}(?![\w.])", " ", shown)
    # Scale names a card uses to label inputs (Cohen 0-4, pain 0-10, VAS 0-10).
    allowed = {"0", "4", "10"}
    assert evidence.unpublished_numbers(evidence.CARD_SECTION[card_id], shown, allowed) == set()


def test_uuids_are_new_for_every_card():
    chart = Chart.from_bundle("hfs_after_rfa.json")
    uuids = {chart.show("rfa-recurrence", "patient-view", "2025-06-01")["uuid"] for _ in range(5)}
    assert len(uuids) == 5


def test_patient_text_cannot_inject_markdown_links_or_html_into_a_card():
    chart = Chart(gender="male").hfs()
    chart.medication(text="carbamazepine [click here](https://evil.example) <img src=x onerror=alert(1)>")
    chart.order(("http://www.cms.gov/Medicare/Coding/ICD10", "00NM0ZZ"))
    detail = chart.show("amr-persistence", "order-sign", "2025-06-01")["detail"]
    assert "recorded as free text" in detail
    assert not re.search(r"(?<!\\)\]\(https://evil", detail)  # no live link
    assert not re.search(r"(?<!\\)<img", detail)  # no live HTML
    assert r"\[click here\]" in detail


# -- the loader refuses broken content ------------------------------------------------------------
def _predictor(data: dict, predictor_id: str) -> dict:
    return next(p for p in data["predictors"] if p["id"] == predictor_id)


def _broken(card_id: str, change) -> dict:
    data = copy.deepcopy(raw(card_id))
    change(data)
    return data


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d["sections"]["cohort_curve"].update(body="{recurence_3m} %"), "unknown placeholder"),
        (lambda d: d["situations"][0].update(hooks=["encounter-start"]), "hooks"),
        (lambda d: _predictor(d, "rfa_order").update(concept="no_such_concept"), "not defined in concepts.toml"),
        (lambda d: _predictor(d, "rfa_order").update(concept="hemifacial_spasm"), "is a condition"),
        (lambda d: d["situations"][1].update(summary="RFA " + "x" * 140), "summary"),
        (lambda d: d.update(indicator="danger"), "indicator"),
        (lambda d: d["source"].update(url="http://pubmed.example"), "https"),
        (lambda d: d["figures"].update(bad=True), "number or a text"),
        (lambda d: d["model"]["coefficients"].update(unknown=1.0), "not a predictor"),
        (lambda d: d.update(caveats=[]), "caveat"),
        (lambda d: d["situations"][1].pop("no_estimate"), "no_estimate"),
        (lambda d: d.update(colour="blue"), "unknown keys"),
        (lambda d: d["situations"][0].update(predictors=["months_since_rfa"]), "relative to a procedure"),
        # each section's variants are checked against what its situation reads (not only the last
        # section's, and not only in a situation with its own strength line)
        (lambda d: d["situations"][0]["sections"].append("facial_weakness"), "section facial_weakness"),
    ],
)
def test_broken_card_content_is_refused_with_the_place_named(change, message):
    from support.chart import concepts

    with pytest.raises(ContentError, match=message):
        card_from_data(_broken("rfa-recurrence", change), "rfa_recurrence.toml", concepts())


def test_the_same_card_id_in_two_files_is_refused(tmp_path):
    for name in ("concepts.toml", "rfa_recurrence.toml"):
        (tmp_path / name).write_text((DEFAULT_CARDS_DIR / name).read_text())
    (tmp_path / "rfa_copy.toml").write_text((DEFAULT_CARDS_DIR / "rfa_recurrence.toml").read_text())
    with pytest.raises(ContentError, match="more than one file"):
        load_cards(tmp_path)


def test_services_and_concepts_files_are_not_cards(tmp_path):
    for name in ("concepts.toml", "services.toml", "btxa_response.toml"):
        (tmp_path / name).write_text((DEFAULT_CARDS_DIR / name).read_text())
    assert [c.id for c in load_cards(tmp_path)] == ["btxa-response"]


RFA_SITE = {
    "label": "Example Hospital RFA model",
    "version": "2025.1",
    "reference_label": "operation time under 40 min, House-Brackmann grade I-II",
    "coding": {"operation_time": {"cutoffs": [40]}, "paralysis_grade_after": {"cutoffs": [3]}},
    "reference": {"operation_time": 0, "paralysis_grade_after": 0},
    "baseline_survival": {"3": 0.7, "6": 0.5, "12": 0.25},
}


@pytest.mark.parametrize(
    "models,message",
    [
        ({"no-such-card": {"label": "x", "version": "1"}}, "no card with this id"),
        ({"mvd-recurrence": {"label": "x", "version": "1"}}, "evidence-only"),
        ({"rfa-recurrence": {**RFA_SITE, "coding": {"operation_time": {"cutoffs": [40]}}}}, "needs a coding"),
        ({"rfa-recurrence": {**RFA_SITE, "intercept": -1.0}}, "no intercept"),
        ({"rfa-recurrence": {k: v for k, v in RFA_SITE.items() if k != "reference"}}, "reference"),
        ({"rfa-recurrence": {**RFA_SITE, "baseline_survival": {"12": 1.5}}}, "S0"),
        ({"rfa-recurrence": {**RFA_SITE, "coefficients": {"age": 0.1}}}, "not a predictor"),
        ({"btxa-response": {"label": "x", "version": "1", "coding": {"hypertension": {"scale": 1}}}}, "yes/no"),
        ({"btxa-response": {"label": "x", "version": "1", "baseline_survival": {"3": 0.5}}}, "Cox"),
        ({"btxa-response": {"version": "1", "intercept": -2.0}}, "label"),
    ],
)
def test_an_incomplete_or_wrong_site_model_is_refused_at_start_up(models, message):
    with pytest.raises(ContentError, match=message):
        load_cards(DEFAULT_CARDS_DIR, {"models": models})


def test_a_site_model_is_attached_to_its_card_and_named_in_the_content_versions():
    cards = load_cards(DEFAULT_CARDS_DIR, {"models": {"rfa-recurrence": RFA_SITE}})
    rfa = next(c for c in cards if c.id == "rfa-recurrence")
    assert rfa.site_model.label == "Example Hospital RFA model"
    assert rfa.site_model.coefficients == (-0.619, -2.589)  # the published ones, by default
    assert "rfa-recurrence@1.0.0+site:Example Hospital RFA model@2025.1" in content_versions(cards)


def test_the_example_site_overlay_file_loads_and_drives_both_site_models():
    overlay = tomllib.loads((SCENARIOS_DIR / "site_overlay.toml").read_text(encoding="utf-8"))
    cards = {c.id: c for c in load_cards(DEFAULT_CARDS_DIR, overlay)}
    assert cards["rfa-recurrence"].site_model.baseline_survival == {3.0: 0.7, 6.0: 0.5, 12.0: 0.25}
    assert cards["btxa-response"].site_model.coefficients == (math.log(5.847),)
    assert cards["amr-persistence"].site_model is None
    rfa = Chart.from_bundle("hfs_after_rfa.json").show("rfa-recurrence", "patient-view", "2025-06-01", overlay)
    rfa_page = Chart.from_bundle("hfs_after_rfa.json").evidence("rfa-recurrence", "patient-view", "2025-06-01", overlay)
    assert "Example Hospital RFA recurrence model" in rfa_page and "site model estimates" in rfa["summary"]
    # a local HFS code from the overlay makes the patient an HFS patient for the cards
    chart = Chart().condition(("https://hospital.example/fhir/CodeSystem/problems", "HFS-1"), onset="2020-01-01")
    chart.hypertension().order_medication(text="onabotulinumtoxinA 50 units")
    btxa = chart.show("btxa-response", "order-select", "2025-06-01", overlay)
    btxa_page = chart.evidence("btxa-response", "order-select", "2025-06-01", overlay)
    assert "Example Hospital BTX-A response model" in btxa_page and "22.5 %" in btxa["summary"]
    assert chart.show("btxa-response", "order-select", "2025-06-01") is None  # without the overlay's code
