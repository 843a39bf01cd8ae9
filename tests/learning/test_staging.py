"""`learn`'s staging holds only what is read: each exported line is decoded once into the
declared elements (fhir/decode.py `Line`), stored without the rest and read back as the
`Resource` Structs the bedside's record builder reads. The record built from staged
resources is the record built from the whole JSON; an element of the wrong shape never
fails its line; a line that is not a JSON object is judged as without the decoder; shared
Medication resources still reach the patients that reference them."""

from __future__ import annotations

import json
from datetime import date

import orjson
import pytest
from support.chart import CARBAMAZEPINE, LOCAL, Chart
from support.elements_asked import elements_asked
from support.fhir import medication_request
from support.paths import DATA_DIR, REPO_ROOT, SCENARIOS_DIR, SYNTHEA_DIR
from support.staged import filed, line_of, staged, staged_patient

from cds_service.clinical.fhir_elements import LEARN_READS, PATIENT_REFERENCES, declared_elements
from cds_service.clinical.record_build import build_record
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.fhir.bulk import BulkClient, BulkError
from cds_service.learning import cohort
from cds_service.learning.cohort import Row, patient_row
from cds_service.learning.definition import definition_path, load_definition
from cds_service.learning.staging import Staging, line_decoding
from cds_service.terminology.concepts_file import load_concepts

TODAY = date(2026, 6, 1)
CONCEPTS = load_concepts(REPO_ROOT / "cards")
CHARTS = sorted(
    [*(DATA_DIR / "record").glob("*.json"), *SCENARIOS_DIR.glob("*.json"), *SYNTHEA_DIR.glob("*.json")],
    key=lambda p: p.name,
)
CAPABILITY = {
    "resourceType": "CapabilityStatement",
    "rest": [
        {"mode": "server", "operation": [{"name": "export", "definition": "http://x/OperationDefinition/export"}]}
    ],
}


def _record(resources):
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
    return build_record({"patient": bundle}, concepts=CONCEPTS, today=TODAY)


def _chart_resources(path) -> list[dict]:
    """A chart's resources as an export gives them: its Patient first, and every other
    resource naming it by a Patient reference (a bundle may use urn:uuid references)."""
    resources = [e["resource"] for e in json.loads(path.read_text())["entry"]]
    patient = next((r for r in resources if r["resourceType"] == "Patient"), {"resourceType": "Patient", "id": "p"})
    patient = {**patient, "id": patient.get("id", "p")}
    others = [
        {**r, "subject": {"reference": f"Patient/{patient['id']}"}} if r["resourceType"] != "Medication" else r
        for r in resources
        if r["resourceType"] != "Patient"
    ]
    return [patient, *others]


def _stored_bodies(staging: Staging) -> list[bytes]:
    staging._flush()
    return [row[0] for row in staging._db.execute("SELECT body FROM r UNION ALL SELECT body FROM shared")]


# ---------------------------------------------------------------------------- what is kept
@pytest.mark.parametrize("path", CHARTS, ids=lambda p: p.stem[:24])
def test_a_staged_chart_gives_the_record_of_the_whole_json(path, tmp_path):
    resources = _chart_resources(path)
    (back,) = staged(resources, tmp_path)
    assert all(type(r) in line_decoding().classes for r in back), "read back as the bedside's Structs"
    assert _record(back) == _record(resources)


def test_a_resource_with_many_unread_elements_is_staged_without_them(tmp_path):
    observation = {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "3", "lastUpdated": "2025-01-01T00:00:00Z", "profile": ["http://example.org/p"]},
        "text": {"status": "generated", "div": "<div>" + "narrative " * 2000 + "</div>"},
        "identifier": [{"system": "urn:oid:1.2.3", "value": "A-123"}],
        "extension": [{"url": "http://example.org/x", "valueString": "y" * 500}],
        "category": [{"coding": [{"code": "exam"}]}],
        "subject": {"reference": "Patient/p1", "display": "A Person"},
        "encounter": {"reference": "Encounter/e1"},
        "performer": [{"reference": "Practitioner/1"}],
        "note": [{"text": "z" * 1000}],
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": "cohen-spasm-grade"}]},
        "effectiveDateTime": "2024-02-20",
        "valueInteger": 3,
    }
    line = orjson.dumps(observation)
    with Staging(tmp_path) as staging:
        staging.add(line_of({"resourceType": "Patient", "id": "p1", "name": [{"family": "Person"}], "gender": "male"}))
        staging.add(line_of(observation))
        (stored_patient, stored_observation) = sorted(_stored_bodies(staging), key=len)
        (back,) = list(staging.patients())
    kept = {"resourceType", "id", "status", "code", "effectiveDateTime", "valueInteger"}
    assert set(orjson.loads(stored_observation)) == kept
    assert len(stored_observation) < len(line) / 20
    assert set(orjson.loads(stored_patient)) == {"resourceType", "id", "gender"}
    by_type = {r["resourceType"]: r for r in back}
    assert dict(by_type["Observation"].items()) == {k: observation[k] for k in kept}
    for unread in ("meta", "text", "identifier", "extension", "note", *PATIENT_REFERENCES):
        assert unread not in by_type["Observation"]


def test_an_element_of_the_wrong_shape_keeps_the_lines_other_elements_readable(tmp_path):
    chart = Chart().hfs(onset="2019-03-01")
    chart.rfa("2024-10-01T08:00:00Z", "2024-10-01T08:40:00Z")
    broken = chart.resources[1]
    broken["clinicalStatus"] = "active"  # a string where R4 has a CodeableConcept
    broken["onsetDateTime"] = 2019  # a number where R4 has a dateTime
    broken["bodySite"] = {"text": "left face"}  # an object where R4 has a list
    back = staged_patient(chart.resources, tmp_path)
    condition = next(r for r in back if r["resourceType"] == "Condition")
    assert condition["clinicalStatus"] == "active" and condition["onsetDateTime"] == 2019  # kept as sent
    assert condition["code"] == broken["code"] and condition["verificationStatus"] == broken["verificationStatus"]
    staged_record, whole_record = _record(back), _record(chart.resources)
    assert staged_record == whole_record  # the same input unreadable, the rest read
    assert staged_record.procedures and any(u.resource_type == "Condition" for u in staged_record.unreadable)


def test_a_resource_whose_text_is_not_unicode_is_not_staged_and_the_others_are(tmp_path):
    """A lone surrogate escape is JSON that UTF-8 cannot hold: the generic parser reads it,
    the resource cannot be stored; it is counted and left out, never the run."""
    line = b'{"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "code": {"text": "\\ud800"}}'
    assert line_decoding().resource(line) is None
    with Staging(tmp_path) as staging:
        staging.add(json.loads(line))
        staging.add(line_of({"resourceType": "Patient", "id": "p1"}))
        assert staging.unstorable == 1
        assert [[r["resourceType"] for r in p] for p in staging.patients()] == [["Patient"]]


def test_a_resource_of_a_type_fhir_does_not_define_is_read_back_all_the_same(tmp_path):
    """Read back as the Struct of its type (a tagged decode, which refuses an unknown type):
    a resource of a type FHIR R4 to R5 does not name is read back as the line it was."""
    odd = {"resourceType": "CustomFinding", "id": "x1", "subject": {"reference": "Patient/p1"}, "status": "final"}
    with Staging(tmp_path) as staging:
        staging.add(line_of({"resourceType": "Patient", "id": "p1"}))
        staging.add(line_of(odd))
        (patient,) = staging.patients()
    assert sorted((r["resourceType"], r.get("status")) for r in patient) == [
        ("CustomFinding", "final"),
        ("Patient", None),
    ]


def test_a_resource_parsed_whole_is_staged_as_the_same_decoded_line(tmp_path):
    """The search fallback hands JSON objects parsed whole: they are reduced the same way."""
    resource = {"resourceType": "Patient", "id": "p1", "gender": "female", "name": [{"family": "X"}]}
    with Staging(tmp_path) as staging:
        staging.add(resource)
        staging.add(line_of({**resource, "id": "p2"}))
        bodies = sorted(_stored_bodies(staging))
        assert [[type(r).__name__ for r in p] for p in staging.patients()] == [["Patient"]] * 2
        assert all(type(r) in line_decoding().classes for p in staging.patients() for r in p)
    assert [orjson.loads(b) for b in bodies] == [
        {"resourceType": "Patient", "id": "p1", "gender": "female"},
        {"resourceType": "Patient", "id": "p2", "gender": "female"},
    ]


# ---------------------------------------------------------------------------- shared Medications
def test_a_shared_medication_reaches_each_patient_that_references_it(tmp_path):
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "meta": {"lastUpdated": "2024-01-01T00:00:00Z"},
        "code": {"coding": [{"system": CARBAMAZEPINE[0], "code": CARBAMAZEPINE[1]}]},
    }
    requests_ = [
        medication_request(
            id="mr-a", patient="a", authored="2023-06-01", medicationReference={"reference": "Medication/m1"}
        ),
        medication_request(
            id="mr-b",
            patient="b",
            authored="2023-06-01",
            medicationReference={"reference": "https://x/fhir/Medication/m1/_history/2"},
        ),
        medication_request(id="mr-c", patient="c", authored="2023-06-01", medicationReference="Medication/m1"),
    ]
    for r in requests_:
        r.pop("medicationCodeableConcept")
    people = [{"resourceType": "Patient", "id": p} for p in ("a", "b", "c", "d")]
    patients = staged([medication, *people, *requests_], tmp_path)
    by_patient = {next(r["id"] for r in p if r["resourceType"] == "Patient"): p for p in patients}
    kinds = {pid: sorted(r["resourceType"] for r in p) for pid, p in by_patient.items()}
    assert kinds == {
        "a": ["Medication", "MedicationRequest", "Patient"],
        "b": ["Medication", "MedicationRequest", "Patient"],
        "c": ["MedicationRequest", "Patient"],  # a reference of the wrong shape: read as none, not a failure
        "d": ["Patient"],
    }
    for pid in ("a", "b"):
        assert "carbamazepine" in _record(by_patient[pid]).medications
        shared = next(r for r in by_patient[pid] if r["resourceType"] == "Medication")
        assert type(shared) in line_decoding().classes and "meta" not in shared
    assert not _record(by_patient["c"]).medications


# ---------------------------------------------------------------------------- what learn reads
def _rfa_chart() -> Chart:
    day = "2024-10-01"
    chart = Chart().hfs(onset="2019-03-01").rfa(f"{day}T08:00:00Z", f"{day}T08:50:00Z").rfa(day)
    chart.observation((LOCAL, "house-brackmann-grade"), "2024-10-03", valueInteger=2)
    chart.resources.append(
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "period": {"start": "2025-04-19"}}
    )
    return chart


def test_the_same_row_from_staged_resources_as_from_the_whole_json(tmp_path):
    chart = _rfa_chart()
    definition = load_definition(definition_path(DEFAULT_CARDS_DIR, "rfa-recurrence"))[0]
    whole = patient_row(filed(chart.resources, chart.patient_id), definition, CONCEPTS, TODAY)
    from_staging = patient_row(staged_patient(chart.resources, tmp_path), definition, CONCEPTS, TODAY)
    assert isinstance(whole, Row) and whole.event is False  # censored at the last contact (the Encounter)
    assert from_staging == whole
    assert round(whole.time * cohort.DAYS_PER_MONTH) == 200  # days from the RFA to the Encounter


def test_every_element_learn_asks_a_staged_resource_for_is_declared(tmp_path):
    """Run `learn`'s reading (the record, the story, the last contact) on staged resources
    and note each element asked for: one not declared would read as absent, silently."""
    charts = [_rfa_chart().resources, *(_chart_resources(p) for p in CHARTS[:8])]
    staged_charts = [staged_patient(c, tmp_path) for c in charts]
    with elements_asked(line_decoding()) as asked:
        for card in ("rfa-recurrence", "amr-persistence", "btxa-response"):
            definition = load_definition(definition_path(DEFAULT_CARDS_DIR, card))[0]
            for resources in staged_charts:
                patient_row(resources, definition, CONCEPTS, TODAY)
    assert {"period", "effectiveDateTime"} <= asked, "the last contact was not read: the test does not test"
    assert asked <= line_decoding().elements, sorted(asked - line_decoding().elements)


def test_the_dates_of_contact_are_declared_elements():
    declared = declared_elements()
    assert {path[0] for paths in cohort._CONTACT_DATES.values() for path in paths} <= declared
    assert set(LEARN_READS["Encounter"]) <= declared


# ---------------------------------------------------------------------------- export lines
def _export(stub, text: str | bytes) -> BulkClient:
    base = stub.url_for("/fhir")
    stub.expect_request("/fhir/metadata").respond_with_json(CAPABILITY)
    stub.expect_request("/fhir/$export").respond_with_data(
        "", status=202, headers={"Content-Location": f"{base}/status/1"}
    )
    manifest = {"transactionTime": "2026-01-01T00:00:00Z", "output": [{"type": "Condition", "url": f"{base}/f.ndjson"}]}
    stub.expect_request("/fhir/status/1", method="GET").respond_with_json(manifest)
    stub.expect_request("/fhir/status/1", method="DELETE").respond_with_data("", status=202)
    stub.expect_request("/fhir/f.ndjson").respond_with_data(text)
    return BulkClient(base, None, poll_initial_s=0.01, decoding=line_decoding())


def test_each_export_line_is_decoded_once_into_the_declared_elements(fhir_stub):
    lines = [
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p"}, "note": [{"text": "x"}]},
        ["a", "list"],  # not an object: skipped, as before
        {"resourceType": "Observation", "id": "o1"},  # a type not asked for: skipped
        {"resourceType": "Condition", "id": "c2", "code": "a string", "onsetDateTime": {"an": "object"}},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n"
    text += '{"resourceType": "Condition", "id": "c3", "onsetDateTime": NaN}\n'  # read by the generic parser
    extraction = _export(fhir_stub, text).extract(("Patient", "Condition"))
    resources = list(extraction.resources)
    assert [r["id"] for r in resources] == ["c1", "c2", "c3"]
    assert extraction.counts == {"Condition": 3}
    c1, c2, c3 = resources
    assert type(c1) is line_decoding().Line and "note" not in c1 and c1["subject"] == {"reference": "Patient/p"}
    assert c2["code"] == "a string" and c2["onsetDateTime"] == {"an": "object"}  # kept as sent
    assert type(c3) is dict  # NaN is not JSON to msgspec; the generic parser reads it, as before


@pytest.mark.parametrize(
    "line",
    [b"{not json", b'{"resourceType": "Condition", "x": tru}', b'{"resourceType": "Condition", "x": "\xc3\x28"}'],
)
def test_an_export_line_that_is_not_json_still_fails_the_extraction(fhir_stub, line):
    client = _export(fhir_stub, b'{"resourceType": "Condition", "id": "c1"}\n' + line + b"\n")
    with pytest.raises(BulkError, match="an export file holds a line that is not JSON"):
        list(client.extract(("Condition",)).resources)
