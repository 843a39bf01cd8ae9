"""EVIDENCE.md "Reading the record", at the record: tolerant reading of every resource type,
values dated after the call, "after the procedure", disease duration from the first onset,
a newer value that could not be read, and an abated Condition without a clinical status."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, date, datetime

import pytest
from support.paths import REPO_ROOT

from cds_service.clinical.record import FUTURE, UNREADABLE, PatientRecord
from cds_service.clinical.record_build import build_record
from cds_service.terminology.concepts_file import load_concepts

TODAY = date(2025, 1, 15)
LOCAL = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
HCPCS = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
SUBJECT = {"reference": "Patient/secret-patient-77"}
SECRETS = ("secret-patient-77", "secret-id", "Jane", "998877", "yesterday-ish", "2024-13-40", "soon-ish")

CONCEPTS = load_concepts(REPO_ROOT / "cards")
IDS = itertools.count(1)  # resources of one type are de-duplicated by id


def build(*resources: dict, drafts: list[dict] | None = None, today=TODAY, now=None) -> PatientRecord:
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}
    draft_bundle = None
    if drafts is not None:
        draft_bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in drafts]}
    return build_record(
        {"everything": bundle}, draft_bundle, None, concepts=CONCEPTS, today=today, unavailable={}, now=now
    )


def hfs(**extra) -> dict:
    resource = {
        "resourceType": "Condition",
        "id": f"secret-id-{next(IDS)}",
        "code": {"coding": [{"system": ICD10CM, "code": "G51.31"}]},
        "subject": SUBJECT,
    }
    resource.update(extra)
    return resource


def status(code: str) -> dict:
    return {"coding": [{"system": CLINICAL, "code": code}]}


def mvd(**extra) -> dict:
    resource = {
        "resourceType": "Procedure",
        "id": f"secret-id-{next(IDS)}",
        "status": "completed",
        "code": {"coding": [{"system": ICD10PCS, "code": "00NM0ZZ"}]},
        "subject": SUBJECT,
        "performedDateTime": "2024-05-03T08:30:00Z",
    }
    resource.update(extra)
    return resource


def local_obs(code: str, when: str | None, **value) -> dict:
    resource = {
        "resourceType": "Observation",
        "id": f"secret-id-{next(IDS)}",
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": code}]},
        "subject": SUBJECT,
    }
    if when:
        resource["effectiveDateTime"] = when
    resource.update(value)
    return resource


def pain(when: str, **value) -> dict:
    resource = local_obs("x", when, **value)
    resource["code"] = {"coding": [{"system": LOINC, "code": "72514-3"}]}
    return resource


def pain_score(when: str, score: float) -> dict:
    return pain(when, valueQuantity={"value": score, "unit": "{score}", "system": UCUM, "code": "{score}"})


def medication_request(**extra) -> dict:
    resource = {
        "resourceType": "MedicationRequest",
        "id": f"secret-id-{next(IDS)}",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "2002"}]},
        "subject": SUBJECT,
        "authoredOn": "2024-06-01",
    }
    resource.update(extra)
    return resource


def medication_statement(**extra) -> dict:
    resource = {
        "resourceType": "MedicationStatement",
        "id": f"secret-id-{next(IDS)}",
        "status": "active",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "2002"}]},
        "subject": SUBJECT,
        "effectiveDateTime": "2024-06-01",
    }
    resource.update(extra)
    return resource


def btxa_draft(**extra) -> dict:
    resource = {
        "resourceType": "MedicationRequest",
        "id": f"secret-id-{next(IDS)}",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": HCPCS, "code": "J0585"}]},
        "subject": SUBJECT,
    }
    resource.update(extra)
    return resource


def service_request(**extra) -> dict:
    resource = {
        "resourceType": "ServiceRequest",
        "id": f"secret-id-{next(IDS)}",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": ICD10PCS, "code": "00NM0ZZ"}]},
        "subject": SUBJECT,
    }
    resource.update(extra)
    return resource


# ------------------------------------------------------------------ tolerant reading
def test_the_sandbox_btxa_draft_order_with_category_as_an_object_is_read(caplog):
    # The CDS Hooks Sandbox sends MedicationRequest.category as one object, not a list.
    order = btxa_draft(category={"coding": [{"system": "http://x.example/cat", "code": "outpatient"}]})
    with caplog.at_level(logging.DEBUG):
        record = build(drafts=[order])
    assert [o.resource_type for o in record.orders["botulinum_toxin_a"]] == ["MedicationRequest"]
    assert record.unreadable == [] and "category" not in caplog.text


UNREAD_ELEMENTS_BROKEN = [
    ("Condition", lambda: hfs(category={"coding": "problem"}, note="Jane Roe MRN 998877", evidence=5), "conditions"),
    ("Procedure", lambda: mvd(performer={"actor": "x"}, reasonCode="HFS", bodySite=7), "procedures"),
    (
        "Observation",
        lambda: local_obs(
            "cohen-spasm-grade", "2024-12-01", valueInteger=3, performer={"reference": 5}, interpretation="high"
        ),
        "observations",
    ),
    ("MedicationRequest", lambda: medication_request(category={"text": "x"}, dosageInstruction={}), "medications"),
    ("MedicationStatement", lambda: medication_statement(reasonCode={"text": "x"}, dosage="twice"), "medications"),
]


@pytest.mark.parametrize(
    ("kind", "make", "table"), UNREAD_ELEMENTS_BROKEN, ids=[k for k, _, _ in UNREAD_ELEMENTS_BROKEN]
)
def test_a_matched_resource_is_never_dropped_over_an_element_the_service_does_not_read(kind, make, table):
    record = build(make())
    assert getattr(record, table), f"the {kind} is in the record"
    assert record.unreadable == []


def test_a_draft_service_request_and_a_referenced_medication_with_broken_unread_elements_are_read():
    medication = {"resourceType": "Medication", "id": "med-1", "code": {"text": "Botox 100 unit vial"}, "form": []}
    order = btxa_draft(medicationReference={"reference": "Medication/med-1"}, dosageInstruction="x")
    del order["medicationCodeableConcept"]
    record = build(drafts=[medication, order, service_request(category={"text": "surgery"}, reasonCode="HFS")])
    assert set(record.orders) == {"botulinum_toxin_a", "mvd_facial_nerve"}


READ_ELEMENTS_BROKEN = [
    ("Condition", "onsetDateTime", lambda: hfs(onsetDateTime="yesterday-ish"), "hemifacial_spasm"),
    ("Condition", "clinicalStatus", lambda: hfs(clinicalStatus={"coding": {"code": "active"}}), "hemifacial_spasm"),
    ("Procedure", "performedPeriod", lambda: mvd(performedPeriod={"start": "soon-ish"}), "mvd_facial_nerve"),
    (
        "Observation",
        "effectiveDateTime",
        lambda: local_obs("cohen-spasm-grade", "2024-13-40", valueInteger=3),
        "cohen_spasm_grade",
    ),
    (
        "Observation",
        "value[x]",
        lambda: local_obs("cohen-spasm-grade", "2024-12-01", valueString="Jane Roe"),
        "cohen_spasm_grade",
    ),
    ("MedicationRequest", "authoredOn", lambda: medication_request(authoredOn=12), "carbamazepine"),
    (
        "MedicationStatement",
        "effectiveDateTime",
        lambda: medication_statement(effectiveDateTime="yesterday-ish"),
        "carbamazepine",
    ),
]


@pytest.mark.parametrize(
    ("kind", "element", "make", "concept"),
    READ_ELEMENTS_BROKEN,
    ids=[f"{k}.{e}" for k, e, _, _ in READ_ELEMENTS_BROKEN],
)
def test_an_unreadable_element_that_is_read_makes_that_input_unreadable_and_the_log_names_it(
    caplog, kind, element, make, concept
):
    with caplog.at_level(logging.WARNING, logger="cds_service.clinical.record_build"):
        record = build(make())
    [problem] = record.unreadable
    assert (problem.resource_type, problem.concept, problem.element, problem.kind) == (
        kind,
        concept,
        element,
        UNREADABLE,
    )
    assert f"{kind}.{element}" in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text and secret not in problem.reason


@pytest.mark.parametrize(
    "order",
    [
        lambda: service_request(status=5),
        lambda: btxa_draft(medicationCodeableConcept={"coding": [{"system": HCPCS, "code": "J0585", "display": 7}]}),
    ],
    ids=["ServiceRequest.status", "MedicationRequest.medicationCodeableConcept"],
)
def test_a_draft_order_whose_read_element_is_broken_is_reported_not_silently_dropped(order):
    record = build(drafts=[order()])
    assert record.orders == {}
    [problem] = record.unreadable
    assert problem.element in ("status", "medicationCodeableConcept")


def test_a_patient_with_a_broken_name_keeps_its_sex_and_birth_date():
    patient = {"resourceType": "Patient", "id": "p", "name": "Jane Roe", "gender": "female", "birthDate": "1960-01-02"}
    record = build(patient)
    assert (record.sex, record.birth_date, record.unreadable) == ("female", date(1960, 1, 2), [])


# ------------------------------------------------------------------ values dated after the call
def test_a_cohen_grade_and_amr_amplitude_dated_next_year_are_not_used_and_are_listed_with_the_reason():
    record = build(
        local_obs("cohen-spasm-grade", "2026-01-10", valueInteger=3),
        local_obs("cohen-spasm-grade", "2024-11-01", valueInteger=1),
        local_obs(
            "amr-amplitude-preop",
            "2026-01-10",
            valueQuantity={"value": 300, "unit": "uV", "system": UCUM, "code": "uV"},
        ),
    )
    assert [f.value for f in record.observations["cohen_spasm_grade"]] == [1]
    assert "amr_amplitude_preop" not in record.observations
    future = [u for u in record.unreadable if u.kind == FUTURE]
    assert {u.concept for u in future} == {"cohen_spasm_grade", "amr_amplitude_preop"}
    assert all("after the time of this call" in u.reason and "not used" in u.reason for u in future)
    assert record.reading("cohen_spasm_grade").future == (future[0],)


def test_a_value_later_today_than_the_call_is_in_the_future_when_the_call_time_is_known():
    now = datetime(2025, 1, 15, 9, 0, tzinfo=UTC)
    record = build(pain_score("2025-01-15T10:00:00Z", 7), pain_score("2025-01-15T08:00:00Z", 3), now=now)
    assert [f.value for f in record.observations["pain_score"]] == [3]
    assert [u.kind for u in record.unreadable] == [FUTURE]


def test_a_completed_procedure_dated_after_the_call_is_not_counted_and_is_listed():
    record = build(mvd(performedDateTime="2025-03-01"))
    assert record.procedures == {}
    [problem] = record.unreadable
    assert (problem.concept, problem.kind) == ("mvd_facial_nerve", FUTURE)


def test_an_onset_dated_after_the_call_is_not_used_but_the_condition_is():
    record = build(hfs(clinicalStatus=status("active"), onsetDateTime="2026-01-01"))
    [fact] = record.conditions["hemifacial_spasm"]
    assert fact.onset is None and fact.is_active
    assert [(u.kind, u.element, u.when) for u in record.unreadable] == [(FUTURE, "onset[x]", date(2026, 1, 1))]


def test_a_procedure_and_a_recorded_date_after_the_call_carry_their_dates_for_the_card():
    record = build(mvd(performedDateTime="2025-03-01"), hfs(recordedDate="2025-02-01"))
    assert {(u.element, u.when) for u in record.unreadable} == {
        ("performed[x]", datetime(2025, 3, 1, tzinfo=UTC)),
        ("recordedDate", date(2025, 2, 1)),
    }


# ------------------------------------------------------------------ after the procedure
def test_a_grade_30_minutes_before_the_rfa_in_another_time_zone_is_not_the_post_rfa_grade():
    rfa = mvd(code={"coding": [{"system": ICD10PCS, "code": "005M3ZZ"}]}, performedDateTime="2024-06-19T22:00:00-04:00")
    grade = local_obs("house-brackmann-grade", "2024-06-20T01:30:00Z", valueInteger=4)
    record = build(rfa, grade)
    procedure = record.latest_procedure("rfa_facial_nerve")
    assert record.observations_for("house_brackmann_grade", after=procedure) == []
    later = build(rfa, local_obs("house-brackmann-grade", "2024-06-20T02:30:00Z", valueInteger=4))
    assert later.latest_observation("house_brackmann_grade", after=later.latest_procedure("rfa_facial_nerve"))


def test_a_date_only_grade_on_the_procedure_day_cannot_be_placed_and_the_record_says_so():
    rfa = mvd(code={"coding": [{"system": ICD10PCS, "code": "005M3ZZ"}]}, performedDateTime="2024-06-19T09:00:00Z")
    record = build(rfa, local_obs("house-brackmann-grade", "2024-06-19", valueInteger=4))
    reading = record.reading("house_brackmann_grade", after=record.latest_procedure("rfa_facial_nerve"))
    assert reading.fact is None and [f.value for f in reading.unplaced] == [4]


def test_an_intraoperative_amr_result_on_the_mvd_day_belongs_to_that_mvd_even_without_a_time():
    record = build(mvd(), local_obs("amr-intraop-result", "2024-05-03", valueString="persisted"))
    reading = record.reading("amr_intraop_result", after=record.latest_procedure("mvd_facial_nerve"))
    assert reading.fact.value == "persisted" and reading.unplaced == ()
    # ... but one timed before the MVD started is not its result
    before = build(mvd(), local_obs("amr-intraop-result", "2024-05-03T07:00:00Z", valueString="persisted"))
    assert before.latest_observation("amr_intraop_result", after=before.latest_procedure("mvd_facial_nerve")) is None


# ------------------------------------------------------------------ disease duration
def test_disease_duration_runs_from_the_first_onset_not_from_a_later_recurrence_entry():
    # the first entry carries an element the service does not read, sent in a shape R4 does not allow
    first = hfs(clinicalStatus=status("resolved"), onsetDateTime="2016-03-01", category={"coding": "problem"})
    recurrence = hfs(id="r", clinicalStatus=status("recurrence"), onsetDateTime="2023-07-01")
    record = build(first, recurrence)
    assert record.earliest_onset("hemifacial_spasm") == date(2016, 3, 1)


def test_a_recurrence_entry_onset_is_not_taken_as_the_disease_onset():
    first = hfs(clinicalStatus=status("resolved"), recordedDate="2017-02-01")
    recurrence = hfs(id="r", clinicalStatus=status("recurrence"), onsetDateTime="2023-07-01")
    assert build(first, recurrence).earliest_onset("hemifacial_spasm") is None


# ------------------------------------------------------------------ a newer value that cannot be read
def test_a_newer_pain_score_that_cannot_be_read_is_reported_with_the_older_one_used():
    record = build(pain_score("2024-12-20", 6), pain("2025-01-10", valueString="severe"))
    reading = record.reading("pain_score", lookback_days=30)
    assert reading.fact.value == 6
    [newer] = reading.newer_unreadable
    assert newer.when.date() == date(2025, 1, 10) and newer.element == "value[x]"
    assert record.newer_unreadable("pain_score", reading.fact) == [newer]


def test_an_older_unreadable_pain_score_is_not_newer_than_the_one_used():
    record = build(pain_score("2025-01-10", 6), pain("2024-12-20", valueString="severe"))
    assert record.reading("pain_score").newer_unreadable == ()


# ------------------------------------------------------------------ abatement without clinical status
def test_an_abated_hypertension_without_clinical_status_reads_as_inactive_not_none():
    htn = {
        "resourceType": "Condition",
        "code": {"coding": [{"system": ICD10CM, "code": "I10"}]},
        "subject": SUBJECT,
        "abatementDateTime": "2021-05-01",
    }
    [fact] = build(htn).conditions["hypertension"]
    assert (fact.clinical_status, fact.status_from_abatement, fact.is_active) == ("inactive", True, False)


# ------------------------------------------------------------------ HFS status after a procedure
def test_an_undated_active_hfs_after_an_mvd_cannot_be_placed():
    record = build(mvd(), hfs(clinicalStatus=status("recurrence")))
    procedure = record.latest_procedure("mvd_facial_nerve")
    assert record.conditions_after("hemifacial_spasm", procedure) == []
    assert len(record.conditions_unplaced("hemifacial_spasm", procedure)) == 1
