"""Building one patient record from prefetched FHIR: which resources count, and how."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from support.fhir import ICD10CM, condition, searchset, status
from support.paths import REPO_ROOT, SYNTHEA_DIR

from cds_service.clinical.dates import day_of, months_between
from cds_service.clinical.record import (
    ConditionFact,
    MedicationFact,
    ObservationFact,
    PatientRecord,
    ProcedureFact,
    UnreadableInput,
    iter_facts,
)
from cds_service.clinical.record_build import build_record
from cds_service.terminology.concept_index import Match
from cds_service.terminology.concepts_file import load_concepts

REPO = REPO_ROOT
DATA = REPO / "tests" / "data" / "record"
SYNTHEA = SYNTHEA_DIR
TODAY = date(2025, 1, 15)

LOCAL = "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local"
UCUM = "http://unitsofmeasure.org"
SUBJECT = {"reference": "Patient/p1"}


@pytest.fixture(scope="module")
def concepts():
    return load_concepts(REPO / "cards")


def bundle(name: str) -> dict:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def build(concepts, resources, draft_orders=None, selections=None, today=TODAY, unavailable=None) -> PatientRecord:
    return build_record(
        resources, draft_orders, selections, concepts=concepts, today=today, unavailable=unavailable or {}
    )


def observation(code: str, status="final", when="2024-12-01", **value) -> dict:
    resource = {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": LOCAL, "code": code}]},
        "subject": SUBJECT,
        "effectiveDateTime": when,
    }
    resource.update(value)
    return resource


def disease_duration(record: PatientRecord) -> float | None:
    """Years since the earliest onset of hemifacial spasm, as the disease-duration predictor reads it."""
    return record.years_since(record.earliest_onset("hemifacial_spasm"))


# ------------------------------------------------------------------ a whole patient
class TestAnMvdCandidateWithSixYearsOfHfsOnCarbamazepine:
    @pytest.fixture(scope="class")
    @classmethod
    def record(cls, concepts):
        data = bundle("hfs_before_mvd.json")
        # the prefetch keys split the same server's resources; the Patient also comes alone
        return build(
            concepts,
            {"patient": data["entry"][0]["resource"], "everything": data, "observations": None},
            unavailable={"observations": "not sent"},
        )

    def test_patient_sex_and_birth_date(self, record):
        assert (record.sex, record.birth_date) == ("male", date(1971, 6, 2))

    def test_disease_duration_from_the_onset_of_the_hfs_condition(self, record):
        [hfs] = record.conditions["hemifacial_spasm"]
        assert hfs.onset == date(2019, 1, 15) and hfs.recorded == date(2020, 3, 2)
        assert hfs.match.code == "G51.31"
        assert disease_duration(record) == pytest.approx(6.0, abs=0.01)

    def test_a_resolved_condition_is_kept_but_is_not_active(self, record):
        [htn] = record.conditions["hypertension"]
        assert (htn.clinical_status, htn.abatement) == ("resolved", date(2016, 8, 1))
        assert record.active_conditions("hypertension") == []
        assert record.active_conditions("hemifacial_spasm") == record.conditions["hemifacial_spasm"]

    def test_a_refuted_condition_is_not_in_the_record(self, record):
        assert "diabetes" not in record.conditions

    def test_carbamazepine_through_a_referenced_medication(self, record):
        [cbz] = record.current_medications("carbamazepine")
        assert (cbz.resource_type, cbz.status, cbz.date, cbz.match.code, cbz.match.by_text) == (
            "MedicationRequest",
            "active",
            date(2023, 11, 20),
            "2002",
            False,
        )

    def test_observations_with_their_values_in_canonical_units(self, record):
        cohen = record.latest_observation("cohen_spasm_grade")
        assert (cohen.value, cohen.unit, cohen.raw) == (3, None, "3")
        assert cohen.effective == datetime(2024, 4, 2, 2, 0, tzinfo=timezone.utc)
        amr = record.latest_observation("amr_amplitude_preop")
        assert (amr.value, amr.unit, amr.raw) == (pytest.approx(450.0), "uV", "0.45 mV")
        assert record.latest_observation("responsible_vessel_count").value == 2
        mri = record.latest_observation("mri_neurovascular_contact")
        assert (mri.value, mri.raw) == (True, "Yes")

    def test_a_preliminary_observation_does_not_count(self, record):
        assert [f.value for f in record.observations["cohen_spasm_grade"]] == [3]

    def test_only_concepts_with_facts_and_nothing_unrelated(self, record):
        assert set(record.conditions) == {"hemifacial_spasm", "hypertension"}
        assert set(record.observations) == {
            "cohen_spasm_grade",
            "amr_amplitude_preop",
            "responsible_vessel_count",
            "mri_neurovascular_contact",
        }
        assert record.procedures == {} and record.orders == {}
        assert record.unreadable == []

    def test_unavailable_prefetch_is_kept_for_the_cards(self, record):
        assert record.unavailable == {"observations": "not sent"}


class TestAfterRadiofrequencyAblation:
    @pytest.fixture(scope="class")
    @classmethod
    def record(cls, concepts):
        return build(concepts, {"all": bundle("rfa_follow_up.json")})

    def test_completed_procedures_only_latest_first_with_timezone_aware_times(self, record):
        latest, older = record.procedures["rfa_facial_nerve"]
        assert latest.start == datetime(2024, 9, 3, 7, 10, tzinfo=timezone.utc)
        assert latest.duration_minutes == 25.0
        assert older.start == datetime(2023, 2, 1, tzinfo=timezone.utc) and older.end is None
        assert "mvd_facial_nerve" not in record.procedures  # not-done

    def test_time_since_the_latest_ablation(self, record):
        latest = record.latest_procedure("rfa_facial_nerve")
        assert latest is record.procedures["rfa_facial_nerve"][0]
        assert months_between(day_of(latest.performed), record.today) == pytest.approx(4.4, abs=0.05)

    def test_house_brackmann_grade_written_as_roman_numerals(self, record):
        grades = record.observations["house_brackmann_grade"]
        assert [(g.value, g.raw) for g in grades] == [(3, "Grade III"), (4, "IV")]

    def test_operation_time_recorded_in_hours_is_read_in_minutes(self, record):
        assert record.latest_observation("operation_time").value == 30.0

    def test_an_unconvertible_unit_is_missing_and_reported(self, record):
        assert [f.value for f in record.observations["operation_time"]] == [30.0]
        assert (
            UnreadableInput("Observation", "operation_time", "unit 'cm' cannot be converted to min")
            in record.unreadable
        )

    def test_a_partial_onset_date_gives_the_first_of_the_month(self, record):
        assert record.earliest_onset("hemifacial_spasm") == date(2021, 7, 1)
        assert record.birth_date == date(1965, 1, 1)


class TestPainfulVertebralMetastasis:
    @pytest.fixture(scope="class")
    @classmethod
    def record(cls, concepts):
        return build(concepts, {"all": bundle("vertebral_metastasis.json")})

    def test_latest_pain_score_from_either_loinc_code(self, record):
        pain = record.latest_observation("pain_score")
        assert (pain.value, pain.unit, pain.match.code) == (7.0, "{score}", "38208-5")

    def test_an_impossible_pain_score_is_not_used(self, record):
        assert [f.value for f in record.observations["pain_score"]] == [7.0, 5.0]
        assert (
            UnreadableInput("Observation", "pain_score", "the value is outside the valid range 0-10")
            in record.unreadable
        )

    def test_latest_within_a_look_back_window_that_ends_today(self, record, concepts):
        # pain 7 on 2024-12-20 (26 days before today), 5 on 2024-09-30 (107 days before)
        assert record.latest_observation("pain_score", lookback_days=45).value == 7.0
        assert record.latest_observation("pain_score", lookback_days=26).value == 7.0  # first day included
        assert record.latest_observation("pain_score", lookback_days=25) is None
        assert [f.value for f in record.observations_for("pain_score", lookback_days=107)] == [7.0, 5.0]
        earlier = build(concepts, {"all": bundle("vertebral_metastasis.json")}, today=date(2024, 12, 1))
        assert earlier.latest_observation("pain_score", lookback_days=90).value == 5.0  # 12-20 is after that today

    def test_daily_morphine_per_24_hours_dated_by_issued(self, record):
        dose = record.latest_observation("daily_morphine_dose")
        assert (dose.value, dose.unit) == (60.0, "mg/d")
        assert dose.effective == datetime(2024, 12, 21, 9, 0, tzinfo=timezone.utc)

    def test_a_completed_medication_statement_is_not_current_use(self, record):
        assert "botulinum_toxin_a" not in record.medications


# ------------------------------------------------------------------ draft orders
class TestDraftOrders:
    def test_order_select_marks_only_the_selected_order(self, concepts):
        record = build(concepts, {}, bundle("draft_orders.json"), selections=["ServiceRequest/sr-mvd"])
        [mvd] = record.orders["mvd_facial_nerve"]
        assert (mvd.resource_type, mvd.resource_ref, mvd.selected) == ("ServiceRequest", "ServiceRequest/sr-mvd", True)
        [btx] = record.orders["botulinum_toxin_a"]
        assert (btx.resource_ref, btx.selected, btx.match.by_text) == ("MedicationRequest/mr-btx", False, True)
        assert record.orders_for("mvd_facial_nerve", selected_only=True) == [mvd]
        assert record.orders_for("botulinum_toxin_a", selected_only=True) == []
        assert record.orders_for("botulinum_toxin_a") == [btx]
        assert set(record.orders) == {"mvd_facial_nerve", "botulinum_toxin_a"}  # MRI and nutrition ignored

    def test_order_sign_counts_every_draft_order_as_selected(self, concepts):
        record = build(concepts, {}, bundle("draft_orders.json"), selections=None)
        assert all(o.selected for orders in record.orders.values() for o in orders)

    def test_a_selection_given_as_an_absolute_url_still_selects(self, concepts):
        record = build(
            concepts,
            {},
            bundle("draft_orders.json"),
            selections=["https://ehr.example.org/fhir/MedicationRequest/mr-btx"],
        )
        assert record.orders["botulinum_toxin_a"][0].selected

    def test_draft_orders_are_not_history(self, concepts):
        record = build(concepts, {}, bundle("draft_orders.json"), selections=[])
        assert record.procedures == {} and record.medications == {}

    def test_a_draft_medication_request_referencing_a_bundled_medication(self, concepts):
        drafts = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {
                    "fullUrl": "urn:uuid:0c3a1e1c-0000-4000-8000-000000000001",
                    "resource": {
                        "resourceType": "Medication",
                        "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2002"}]},
                    },
                },
                {
                    "resource": {
                        "resourceType": "MedicationRequest",
                        "id": "m1",
                        "status": "draft",
                        "intent": "order",
                        "medicationReference": {"reference": "urn:uuid:0c3a1e1c-0000-4000-8000-000000000001"},
                        "subject": SUBJECT,
                    }
                },
            ],
        }
        record = build(concepts, {}, drafts, selections=["MedicationRequest/m1"])
        assert [o.selected for o in record.orders["carbamazepine"]] == [True]

    def test_a_draft_service_request_for_chemodenervation(self, concepts):
        drafts = searchset(
            {
                "resourceType": "ServiceRequest",
                "id": "s1",
                "status": "draft",
                "intent": "order",
                "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "64612"}]},
                "subject": SUBJECT,
            }
        )
        record = build(concepts, {}, drafts, selections=["ServiceRequest/s1"])
        assert set(record.orders) == {"btxa_chemodenervation"}


# ------------------------------------------------------------------ the rules, one by one
class TestConditionRules:
    @pytest.mark.parametrize(
        ("clinical", "abatement", "active"),
        [
            ("active", None, True),
            ("recurrence", None, True),
            ("relapse", None, True),
            ("inactive", None, False),
            ("remission", None, False),
            ("resolved", None, False),
            (None, None, True),
            (None, {"abatementDateTime": "2020-01-01"}, False),
            (None, {"abatementString": "in childhood"}, False),
        ],
    )
    def test_what_active_means(self, concepts, clinical, abatement, active):
        extra = dict(abatement or {})
        if clinical:
            extra["clinicalStatus"] = status(clinical)
        record = build(concepts, {"c": searchset(condition("I10", **extra))})
        assert record.has_active_condition("hypertension") is active
        assert len(record.conditions["hypertension"]) == 1

    @pytest.mark.parametrize("verification", ["refuted", "entered-in-error"])
    def test_refuted_and_erroneous_conditions_are_dropped(self, concepts, verification):
        ver = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]
        }
        record = build(concepts, {"c": searchset(condition("G51.3", verificationStatus=ver))})
        assert record.conditions == {}

    @pytest.mark.parametrize("verification", ["unconfirmed", "provisional", "differential", "confirmed"])
    def test_other_verification_statuses_are_kept(self, concepts, verification):
        ver = {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": verification}]
        }
        record = build(concepts, {"c": searchset(condition("G51.3", verificationStatus=ver))})
        assert len(record.conditions["hemifacial_spasm"]) == 1

    def test_onset_as_an_age_or_text_gives_no_onset_and_no_duration(self, concepts):
        record = build(
            concepts,
            {
                "c": searchset(
                    condition("G51.3", onsetString="since her forties"),
                    condition("G51.3", onsetAge={"value": 40, "unit": "a", "system": UCUM, "code": "a"}),
                )
            },
        )
        assert [c.onset for c in record.conditions["hemifacial_spasm"]] == [None, None]
        assert disease_duration(record) is None

    def test_disease_duration_uses_the_earliest_onset(self, concepts):
        record = build(
            concepts,
            {
                "c": searchset(
                    condition("G51.3", onsetDateTime="2020-06-01"),
                    condition("G51.39", onsetPeriod={"start": "2017-06-01T00:00:00Z"}),
                )
            },
        )
        assert record.earliest_onset("hemifacial_spasm") == date(2017, 6, 1)
        assert disease_duration(record) == pytest.approx(7.62, abs=0.01)

    def test_an_onset_after_today_gives_no_duration(self, concepts):
        record = build(concepts, {"c": searchset(condition("G51.3", onsetDateTime="2026-01-01"))})
        assert disease_duration(record) is None


class TestProcedureRules:
    @pytest.mark.parametrize(
        "state", ["preparation", "in-progress", "not-done", "on-hold", "stopped", "entered-in-error", "unknown"]
    )
    def test_only_completed_procedures_count(self, concepts, state):
        proc = {
            "resourceType": "Procedure",
            "status": state,
            "subject": SUBJECT,
            "code": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "00NM0ZZ"}]},
            "performedDateTime": "2024-01-01",
        }
        assert build(concepts, {"p": searchset(proc)}).procedures == {}

    def test_a_negative_period_has_no_duration(self):
        fact = ProcedureFact(
            match=None,
            status="completed",
            start=datetime(2024, 1, 1, 10, tzinfo=timezone.utc),
            end=datetime(2024, 1, 1, 9, tzinfo=timezone.utc),
        )
        assert fact.duration_minutes is None


class TestObservationValues:
    def test_observation_statuses(self, concepts):
        resources = [
            observation("cohen-spasm-grade", status=s, when=f"2024-0{i + 1}-01", valueInteger=i)
            for i, s in enumerate(
                [
                    "final",
                    "amended",
                    "corrected",
                    "preliminary",
                    "registered",
                    "cancelled",
                    "entered-in-error",
                    "unknown",
                ]
            )
        ]
        record = build(concepts, {"o": searchset(*resources)})
        assert [f.value for f in record.observations["cohen_spasm_grade"]] == [2, 1, 0]

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ({"valueString": "III"}, 3),
            ({"valueString": "Grade VI"}, 6),
            ({"valueString": "grade 2"}, 2),
            ({"valueString": " ii "}, 2),
            ({"valueInteger": 1}, 1),
            ({"valueQuantity": {"value": 4, "system": UCUM, "code": "{grade}"}}, 4),
            ({"valueCodeableConcept": {"text": "Grade V"}}, 5),
        ],
    )
    def test_house_brackmann_grade_in_its_usual_forms(self, concepts, value, expected):
        record = build(concepts, {"o": searchset(observation("house-brackmann-grade", **value))})
        assert record.latest_observation("house_brackmann_grade").value == expected

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ({"valueString": "VII"}, "outside the valid range 1-6"),
            ({"valueInteger": 0}, "outside the valid range 1-6"),
            ({"valueString": "moderate"}, "not a recognised grade"),
            ({"valueQuantity": {"value": 2.5, "system": UCUM, "code": "1"}}, "not a whole number"),
            ({"valueQuantity": {"value": 2, "system": UCUM, "code": "min"}}, "cannot be"),
            ({"valueBoolean": True}, "not a grade"),
        ],
    )
    def test_an_unreadable_grade_is_missing_with_its_reason(self, concepts, value, reason):
        record = build(concepts, {"o": searchset(observation("house-brackmann-grade", **value))})
        assert "house_brackmann_grade" not in record.observations
        [problem] = record.unreadable
        assert (problem.resource_type, problem.concept) == ("Observation", "house_brackmann_grade")
        assert reason in problem.reason

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ({"valueCodeableConcept": {"coding": [{"system": LOCAL, "code": "amr-persisted"}]}}, "persisted"),
            ({"valueCodeableConcept": {"coding": [{"system": LOCAL, "code": "amr-resolved"}]}}, "resolved"),
            ({"valueString": "Persisted"}, "persisted"),
            ({"valueString": "resolved"}, "resolved"),
        ],
    )
    def test_intraoperative_amr_result(self, concepts, value, expected):
        record = build(concepts, {"o": searchset(observation("amr-intraop-result", **value))})
        assert record.latest_observation("amr_intraop_result").value == expected

    def test_an_amr_result_that_is_not_an_answer_is_not_guessed(self, concepts):
        record = build(concepts, {"o": searchset(observation("amr-intraop-result", valueString="not resolved"))})
        assert "amr_intraop_result" not in record.observations
        assert record.unreadable[0].reason == "the value is not one of the concept's answers"

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ({"valueBoolean": False}, False),
            ({"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "373067005"}]}}, False),
            ({"valueString": "yes"}, True),
        ],
    )
    def test_neurovascular_contact_on_mri(self, concepts, value, expected):
        record = build(concepts, {"o": searchset(observation("mri-neurovascular-contact", **value))})
        assert record.latest_observation("mri_neurovascular_contact").value is expected

    def test_a_component_of_a_panel_is_read_with_the_panel_date(self, concepts):
        panel = {
            "resourceType": "Observation",
            "status": "final",
            "subject": SUBJECT,
            "code": {"text": "Intraoperative neuromonitoring"},
            "effectiveDateTime": "2024-05-14T10:00:00Z",
            "component": [
                {
                    "code": {"coding": [{"system": LOCAL, "code": "amr-amplitude-preop"}]},
                    "valueQuantity": {"value": 320, "system": UCUM, "code": "uV"},
                },
                {
                    "code": {"coding": [{"system": LOCAL, "code": "amr-intraop-result"}]},
                    "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": "amr-resolved"}]},
                },
            ],
        }
        record = build(concepts, {"o": searchset(panel)})
        assert record.latest_observation("amr_amplitude_preop").value == 320.0
        assert record.latest_observation("amr_intraop_result").value == "resolved"
        assert record.latest_observation("amr_intraop_result").effective == datetime(
            2024, 5, 14, 10, tzinfo=timezone.utc
        )

    def test_an_observation_without_a_value(self, concepts):
        absent = observation("operation-time", dataAbsentReason={"text": "not recorded"})
        missing = observation("cohen-spasm-grade")
        record = build(concepts, {"o": searchset(absent, missing)})
        assert record.observations == {}
        assert record.unreadable == [
            UnreadableInput("Observation", "cohen_spasm_grade", "the observation has no value")
        ]

    def test_a_bound_is_not_a_measurement(self, concepts):
        obs = observation(
            "operation-time", valueQuantity={"value": 20, "comparator": "<", "system": UCUM, "code": "min"}
        )
        record = build(concepts, {"o": searchset(obs)})
        assert "operation_time" not in record.observations

    def test_undated_observations_sort_last(self, concepts):
        undated = observation("cohen-spasm-grade", valueInteger=1)
        del undated["effectiveDateTime"]
        dated = observation("cohen-spasm-grade", valueInteger=2, when="2020-01-01")
        record = build(concepts, {"o": searchset(undated, dated)})
        assert [f.value for f in record.observations["cohen_spasm_grade"]] == [2, 1]
        assert record.latest_observation("cohen_spasm_grade").value == 2
        assert record.latest_observation("cohen_spasm_grade", lookback_days=(TODAY - date(2021, 1, 1)).days) is None


class TestMedicationRules:
    @pytest.mark.parametrize(
        ("kind", "state", "counted"),
        [
            ("MedicationRequest", "active", True),
            ("MedicationRequest", "on-hold", False),
            ("MedicationRequest", "completed", False),
            ("MedicationRequest", "stopped", False),
            ("MedicationRequest", "draft", False),
            ("MedicationRequest", "cancelled", False),
            ("MedicationStatement", "active", True),
            ("MedicationStatement", "intended", True),
            ("MedicationStatement", "completed", False),
            ("MedicationStatement", "stopped", False),
            ("MedicationStatement", "not-taken", False),
        ],
    )
    def test_which_statuses_are_current_use(self, concepts, kind, state, counted):
        med = {
            "resourceType": kind,
            "status": state,
            "subject": SUBJECT,
            "medicationCodeableConcept": {"text": "Carbamazepine 200 mg tablet"},
        }
        if kind == "MedicationRequest":
            med["intent"] = "order"
        record = build(concepts, {"m": searchset(med)})
        assert bool(record.current_medications("carbamazepine")) is counted

    def test_a_contained_medication(self, concepts):
        med = {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": SUBJECT,
            "contained": [
                {
                    "resourceType": "Medication",
                    "id": "med1",
                    "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "2002"}]},
                }
            ],
            "medicationReference": {"reference": "#med1"},
        }
        record = build(concepts, {"m": searchset(med)})
        assert record.current_medications("carbamazepine")[0].match.code == "2002"

    def test_an_unresolvable_medication_reference_matches_nothing(self, concepts):
        med = {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": SUBJECT,
            "medicationReference": {"reference": "Medication/elsewhere", "display": "carbamazepine"},
        }
        assert build(concepts, {"m": searchset(med)}).medications == {}


# ------------------------------------------------------------------ the questions the cards ask
UTC = UTC
EAST = timezone(timedelta(hours=9))


def at(day: str, clock: str | None = None, zone=UTC) -> datetime:
    """A fact time as the build reads it: a date alone is midnight."""
    return datetime.fromisoformat(f"{day}T{clock or '00:00'}").replace(tzinfo=zone)


def by_hand(**tables) -> PatientRecord:
    """A record built directly (unsorted, any status), as the queries must also take it."""
    return PatientRecord(today=TODAY, **tables)


def mvd(start: datetime | None, state: str = "completed") -> ProcedureFact:
    return ProcedureFact(Match("mvd_facial_nerve", "s", "c", None), state, start, None)


def pain(effective: datetime | None, value: float) -> ObservationFact:
    return ObservationFact(Match("pain_score", "s", "c", None), effective, value, "{score}", str(value))


def hfs(clinical: str | None, onset: date | None = None, recorded: date | None = None) -> ConditionFact:
    return ConditionFact(Match("hemifacial_spasm", "s", "c", None), clinical, onset, recorded, None)


class TestLatestProcedure:
    def test_the_latest_completed_one_whatever_the_order_of_the_facts(self):
        older, newer = mvd(at("2023-05-01")), mvd(at("2024-05-01"))
        assert by_hand(procedures={"mvd_facial_nerve": [older, newer]}).latest_procedure("mvd_facial_nerve") is newer

    def test_latest_compares_instants_across_time_zones(self):
        # 08:00 in UTC+9 is 23:00 UTC the day before: earlier than 01:00 UTC that day
        tokyo, london = mvd(at("2024-05-02", "08:00", EAST)), mvd(at("2024-05-02", "01:00"))
        record = by_hand(procedures={"mvd_facial_nerve": [tokyo, london]})
        assert record.latest_procedure("mvd_facial_nerve") is london

    def test_a_procedure_dated_after_today_or_not_completed_does_not_count(self):
        done = mvd(at("2024-05-01"))
        record = by_hand(
            procedures={"mvd_facial_nerve": [mvd(at("2025-01-16")), mvd(at("2024-12-01"), "in-progress"), done]}
        )
        assert record.latest_procedure("mvd_facial_nerve") is done
        assert (
            by_hand(procedures={"mvd_facial_nerve": [mvd(at("2025-01-15", "23:59"))]}).latest_procedure(
                "mvd_facial_nerve"
            )
            is not None
        )  # today counts

    def test_an_undated_procedure_only_when_none_has_a_date(self):
        undated, dated = mvd(None), mvd(at("2020-01-01"))
        assert by_hand(procedures={"mvd_facial_nerve": [undated, dated]}).latest_procedure("mvd_facial_nerve") is dated
        assert by_hand(procedures={"mvd_facial_nerve": [undated]}).latest_procedure("mvd_facial_nerve") is undated
        assert by_hand().latest_procedure("mvd_facial_nerve") is None


class TestObservationsInAWindowAndAfterAProcedure:
    def test_latest_first_by_instant_and_undated_last(self):
        undated, early, late = (
            pain(None, 1),
            pain(at("2025-01-10", "08:00", EAST), 2),
            pain(at("2025-01-10", "00:30"), 3),
        )
        record = by_hand(observations={"pain_score": [undated, early, late]})
        assert record.observations_for("pain_score") == [late, early, undated]
        assert record.latest_observation("pain_score") is late

    def test_the_look_back_window_is_whole_days_ending_today(self):
        facts = [
            pain(at("2025-01-16"), 9),
            pain(at("2025-01-15", "23:00"), 8),
            pain(at("2024-12-16"), 7),
            pain(at("2024-12-15", "23:59"), 6),
            pain(None, 5),
        ]
        record = by_hand(observations={"pain_score": facts})
        assert [f.value for f in record.observations_for("pain_score", lookback_days=30)] == [8, 7]
        assert [f.value for f in record.observations_for("pain_score")] == [9, 8, 7, 6, 5]

    @pytest.mark.parametrize(
        ("effective", "counted"),
        [
            (at("2024-05-04"), True),  # a later day
            (at("2024-05-02", "23:59"), False),  # an earlier day
            (at("2024-05-03", "08:00"), False),  # same day, both times recorded: before
            (at("2024-05-03", "17:00", EAST), False),  # the same, written in UTC+9
            (at("2024-05-03", "09:00"), True),  # same day, both times recorded: after
            (at("2024-05-03", "08:30"), True),  # the same instant
            (at("2024-05-03"), False),  # same day, no time: cannot be placed (EVIDENCE "Reading the record")
            (None, False),
        ],
    )
    def test_on_or_after_a_procedure_at_half_past_eight(self, effective, counted):
        procedure = mvd(at("2024-05-03", "08:30"))
        fact = pain(effective, 4)
        record = by_hand(observations={"pain_score": [fact]})
        assert (record.observations_for("pain_score", after=procedure) == [fact]) is counted

    def test_on_the_day_of_a_procedure_without_a_time_no_value_of_that_day_can_be_placed(self):
        # It was "every value of that day counts"; EVIDENCE.md "Reading the record" now says a
        # value on the procedure's own day that cannot be placed is not used as post-procedure.
        same_day, before, after = (
            pain(at("2024-05-03", "06:00"), 1),
            pain(at("2024-05-02", "23:00"), 2),
            pain(at("2024-05-04", "07:00"), 3),
        )
        record = by_hand(observations={"pain_score": [same_day, before, after]})
        assert [f.value for f in record.observations_for("pain_score", after=mvd(at("2024-05-03")))] == [3]
        reading = record.reading("pain_score", after=mvd(at("2024-05-03")))
        assert reading.fact is after and reading.unplaced == (same_day,)

    def test_after_a_procedure_without_a_date_nothing_counts(self):
        record = by_hand(observations={"pain_score": [pain(at("2024-05-03"), 1)]})
        assert record.latest_observation("pain_score", after=mvd(None)) is None

    def test_window_and_procedure_together(self):
        facts = [pain(at("2024-12-01"), 1), pain(at("2025-01-02"), 2), pain(at("2025-01-12"), 3)]
        record = by_hand(observations={"pain_score": facts})
        assert [f.value for f in record.observations_for("pain_score", 7, mvd(at("2024-11-30")))] == [3]
        assert [f.value for f in record.observations_for("pain_score", 60, mvd(at("2025-01-05")))] == [3]


class TestConditionsAfterAProcedure:
    def test_active_with_an_onset_or_recorded_date_after_the_procedure_day(self):
        onset_after, recorded_after = hfs("recurrence", onset=date(2024, 6, 1)), hfs(None, recorded=date(2024, 5, 4))
        same_day, before = hfs("active", onset=date(2024, 5, 3)), hfs("active", onset=date(2019, 1, 1))
        resolved = hfs("resolved", onset=date(2024, 7, 1))
        record = by_hand(conditions={"hemifacial_spasm": [onset_after, same_day, recorded_after, before, resolved]})
        assert record.conditions_after("hemifacial_spasm", mvd(at("2024-05-03", "23:00"))) == [
            onset_after,
            recorded_after,
        ]

    def test_none_without_a_dated_procedure(self):
        record = by_hand(conditions={"hemifacial_spasm": [hfs("active", onset=date(2024, 6, 1))]})
        assert record.conditions_after("hemifacial_spasm", mvd(None)) == []
        assert record.conditions_after("hemifacial_spasm", None) == []


def test_current_medications_leave_out_statuses_that_never_mean_use():
    def cbz(state: str) -> MedicationFact:
        return MedicationFact(Match("carbamazepine", "s", "c", None), "MedicationStatement", state, None)

    facts = [cbz(s) for s in ("active", "draft", "intended", "not-taken", "unknown", "cancelled", "entered-in-error")]
    record = by_hand(medications={"carbamazepine": facts})
    assert [m.status for m in record.current_medications("carbamazepine")] == ["active", "intended"]


def test_unreadable_inputs_of_some_concepts_in_the_order_met():
    problems = [
        UnreadableInput("Observation", "pain_score", "a"),
        UnreadableInput("Patient", None, "b"),
        UnreadableInput("Condition", "hypertension", "c"),
        UnreadableInput("Observation", "pain_score", "d"),
    ]
    record = by_hand(unreadable=problems)
    assert record.unreadable_for("pain_score") == [problems[0], problems[3]]
    assert record.unreadable_for("hypertension", "pain_score") == [problems[0], problems[2], problems[3]]
    assert record.unreadable_for(None) == [] and record.unreadable_for("diabetes") == []


def test_years_since_a_date_after_today_is_none():
    record = by_hand()
    assert record.years_since(date(2015, 1, 15)) == pytest.approx(10.0, abs=0.01)
    assert record.years_since(TODAY) == 0.0
    assert record.years_since(date(2025, 1, 16)) is None and record.years_since(None) is None


# ------------------------------------------------------------------ collecting, validating, robustness
def test_resources_from_several_keys_are_deduplicated_by_type_and_id(concepts):
    hfs = condition("G51.3", id="same")
    record = build(concepts, {"a": searchset(hfs), "b": searchset(copy.deepcopy(hfs)), "c": hfs})
    assert len(record.conditions["hemifacial_spasm"]) == 1


def test_a_selected_resource_that_is_not_valid_fhir_is_reported_without_identifiers_or_values(concepts):
    bad = condition("G51.3", id="secret-id-123", onsetDateTime="yesterday-ish", note="Jane Roe MRN 998877")
    record = build(concepts, {"c": searchset(bad)})
    assert record.conditions == {}
    [problem] = record.unreadable
    assert (problem.resource_type, problem.concept) == ("Condition", "hemifacial_spasm")
    assert "not valid FHIR R4" in problem.reason and "onsetDateTime" in problem.reason
    for secret in ("secret-id-123", "yesterday", "Jane", "998877"):
        assert secret not in problem.reason


def test_an_unknown_element_is_never_looked_at_nor_named(concepts, caplog):
    # It was reported as "elements FHIR R4 does not define" and the Condition dropped; EVIDENCE.md
    # "Reading the record": a resource is never ignored because of an element the service does not read.
    bad = condition("G51.3", patientName_JaneRoe=True)
    record = build(concepts, {"c": searchset(bad)})
    assert record.unreadable == [] and len(record.conditions["hemifacial_spasm"]) == 1
    assert "JaneRoe" not in caplog.text


def test_unrelated_invalid_resources_are_not_validated_or_reported(concepts):
    junk = {"resourceType": "Condition", "code": {"coding": [{"system": ICD10CM, "code": "J45"}]}, "onsetDateTime": 5}
    record = build(concepts, {"c": searchset(junk), "x": {"resourceType": "Claim", "nonsense": True}})
    assert record.unreadable == [] and record.conditions == {}


@pytest.mark.parametrize(
    "value",
    [
        None,
        [],
        "text",
        3,
        {"resourceType": 5},
        {"entry": "x"},
        {"resourceType": "Bundle", "entry": [None, 1, {"resource": "x"}, {"resource": []}]},
        {"resourceType": "OperationOutcome", "issue": []},
    ],
)
def test_junk_prefetch_values_give_an_empty_record(concepts, value):
    record = build(concepts, {"k": value}, draft_orders=value, selections=["x"])
    assert list(iter_facts(record)) == [] and record.unreadable == []


def test_invalid_patient_fields_are_reported_not_guessed(concepts):
    record = build(concepts, {"patient": {"resourceType": "Patient", "gender": "M", "birthDate": "1970-13-01"}})
    assert record.sex is None and record.birth_date is None
    assert {u.reason for u in record.unreadable} == {"gender is not a FHIR gender code", "birthDate is not a FHIR date"}


def test_dates_are_never_taken_from_the_clock(concepts):
    hfs = condition("G51.3", onsetDateTime="2015-01-15")
    assert disease_duration(build(concepts, {"c": searchset(hfs)}, today=date(2020, 1, 15))) == pytest.approx(
        5.0, abs=0.01
    )


# ------------------------------------------------------------------ Synthea: realistic records without HFS
SYNTHEA_FILES = sorted(SYNTHEA.glob("*.json"))
HFS_CONCEPTS = {
    "hemifacial_spasm",
    "rfa_facial_nerve",
    "mvd_facial_nerve",
    "btxa_chemodenervation",
    "botulinum_toxin_a",
    "carbamazepine",
    "house_brackmann_grade",
    "cohen_spasm_grade",
    "amr_amplitude_preop",
    "amr_intraop_result",
    "responsible_vessel_count",
    "mri_neurovascular_contact",
    "operation_time",
}


@pytest.mark.parametrize("path", SYNTHEA_FILES, ids=lambda p: p.name.split("_")[0])
def test_synthea_patients_have_no_hfs_facts_and_read_cleanly(concepts, path):
    record = build(concepts, {"everything": json.loads(path.read_text(encoding="utf-8"))})
    assert not HFS_CONCEPTS & {concept for concept, _ in iter_facts(record)}
    assert record.unreadable == []
    assert record.sex in ("male", "female") and record.birth_date is not None
    # every Synthea patient here has 0-10 pain scores, all in range, newest first
    pains = record.observations["pain_score"]
    assert pains and all(0 <= p.value <= 10 and p.unit == "{score}" for p in pains)
    assert [p.effective for p in pains] == sorted((p.effective for p in pains), reverse=True)


def test_synthea_patient_with_hypertension_and_type_2_diabetes(concepts):
    [path] = [p for p in SYNTHEA_FILES if p.name.startswith("Evelyn")]
    record = build(concepts, {"everything": json.loads(path.read_text(encoding="utf-8"))})
    assert record.has_active_condition("hypertension") and record.has_active_condition("diabetes")
    # type 2 diabetes, and its neuropathy (in the VSAC Diabetes expansion); not prediabetes 15777000
    assert {c.match.code for c in record.conditions["diabetes"]} == {"44054006", "368581000119106"}
    assert set(record.conditions) == {"hypertension", "diabetes"}
    assert record.procedures == {} and record.orders == {}
    # her active oxycodone/acetaminophen prescription is an opioid other than morphine (card D names it)
    assert set(record.medications) == {"opioid_other"}
    assert record.medications["opioid_other"][0].match.display.startswith("Acetaminophen 325 MG / oxyCODONE")
