"""A CDS client that prefetches nothing: the service fetches the chart from the real FHIR
server (sekmet, R4, bearer token) and the cards come back through the real HTTP path.

Each patient is loaded into sekmet by a transaction Bundle; the server assigns the ids,
and the hook call names the patient by that id. Dates are relative to today, so the
figures (months since surgery, a pain score of yesterday) do not age.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
import requests
from support import error_body
from support.fhir import hook_request
from support.fhir_server_fixture import created_ids
from werkzeug import Response

from cds_service.config import DEFAULT_CARDS_DIR

pytestmark = pytest.mark.fhir_server

PATIENT_VIEW = "/cds-services/hfs-outcomes-patient-view"
ORDER_SIGN = "/cds-services/hfs-outcomes-order-sign"
FHIR_JSON = "application/fhir+json"

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONCEPTS = tomllib.loads((DEFAULT_CARDS_DIR / "concepts.toml").read_text(encoding="utf-8"))
LOCAL = CONCEPTS["code_systems"]["local"]["uri"]


def local_code(concept: str) -> str:
    """The project's local code of a concept (cards/concepts.toml), as a site would send it."""
    (code,) = [c["code"] for c in CONCEPTS["concepts"][concept]["codes"] if c["system"] == "local"]
    return code


def card_labels(card_file: str) -> dict[str, str]:
    """Predictor id -> the label the card shows for it (cards/<card>.toml)."""
    card = tomllib.loads((DEFAULT_CARDS_DIR / card_file).read_text(encoding="utf-8"))
    return {p["id"]: p["label"] for p in card["predictors"]}


# ------------------------------------------------------------------------- dates


def today() -> date:
    """The service judges a record at today's UTC date."""
    return datetime.now(UTC).date()


def months_ago(months: int, extra_days: int = 0) -> date:
    """The calendar date `months` months (and `extra_days` days) before today."""
    t = today()
    year, month = divmod(t.month - 1 - months, 12)
    day = min(t.day, 28)
    return date(t.year + year, month + 1, day) - timedelta(days=extra_days)


# ------------------------------------------------------------------------- transaction bundles


class Transaction:
    """One patient's chart as a FHIR transaction Bundle (references by urn:uuid)."""

    def __init__(self, gender: str = "female", birth_date: str = "1966-09-14", family: str = "Testperson"):
        self.entries: list[dict] = []
        self.patient_ref = self.add(
            {
                "resourceType": "Patient",
                "active": True,
                "gender": gender,
                "birthDate": birth_date,
                "name": [{"family": family, "given": ["Alex"]}],
            }
        )

    def add(self, resource: dict) -> str:
        full_url = f"urn:uuid:{uuid.uuid4()}"
        if resource["resourceType"] != "Patient":
            resource = {**resource, "subject": {"reference": self.patient_ref}}
        self.entries.append(
            {"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
        )
        return full_url

    def condition(self, system: str, code: str, onset: date, status: str = "active", display: str = "") -> Transaction:
        self.add(
            {
                "resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
                "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
                "code": {"coding": [{"system": system, "code": code, **({"display": display} if display else {})}]},
                "onsetDateTime": onset.isoformat(),
            }
        )
        return self

    def procedure(self, system: str, code: str, day: date, hours: float = 2.0) -> Transaction:
        start = datetime(day.year, day.month, day.day, 8, 0, tzinfo=UTC)
        end = start + timedelta(hours=hours)
        self.add(
            {
                "resourceType": "Procedure",
                "status": "completed",
                "code": {"coding": [{"system": system, "code": code}]},
                "performedPeriod": {"start": start.isoformat(), "end": end.isoformat()},
            }
        )
        return self

    def observation(self, system: str, code: str, day: date, **value) -> Transaction:
        self.add(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": system, "code": code}]},
                "effectiveDateTime": day.isoformat(),
                **value,
            }
        )
        return self

    def medication_request(self, system: str, code: str, authored: date, display: str = "") -> Transaction:
        self.add(
            {
                "resourceType": "MedicationRequest",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {
                    "coding": [{"system": system, "code": code, **({"display": display} if display else {})}]
                },
                "authoredOn": authored.isoformat(),
            }
        )
        return self

    def bundle(self) -> dict:
        return {"resourceType": "Bundle", "type": "transaction", "entry": self.entries}


def load(fhir_server, chart: Transaction) -> str:
    """Load the chart into sekmet; the server-assigned id of its Patient."""
    (patient_id,) = created_ids(fhir_server.load(chart.bundle()), "Patient")
    return patient_id


def hfs_after_mvd() -> Transaction:
    """(a) Left hemifacial spasm since 2018, resolved after an MVD about 10 months ago;
    essential hypertension."""
    return (
        Transaction()
        .condition(ICD10CM, "G51.31", date(2018, 3, 1), status="resolved", display="Clonic hemifacial spasm, right")
        .procedure(ICD10PCS, "00NM0ZZ", months_ago(10, extra_days=3), hours=2.5)
        .condition(ICD10CM, "I10", date(2014, 6, 1), display="Essential (primary) hypertension")
    )


def hfs_on_carbamazepine() -> Transaction:
    """(b) Hemifacial spasm for six years, on carbamazepine, Cohen grade 3 and two
    responsible vessels recorded before surgery."""
    return (
        Transaction(gender="male", birth_date="1959-02-20")
        .condition(ICD10CM, "G51.31", months_ago(72))
        .medication_request(RXNORM, "2002", months_ago(60), display="carbamazepine")
        .observation(LOCAL, local_code("cohen_spasm_grade"), today() - timedelta(days=20), valueInteger=3)
        .observation(LOCAL, local_code("responsible_vessel_count"), today() - timedelta(days=12), valueInteger=2)
    )


def vertebral_metastasis_in_pain() -> Transaction:
    """(c) Vertebral metastasis with a pain score of 7/10 recorded yesterday."""
    return (
        Transaction(birth_date="1955-11-02")
        .condition(ICD10CM, "C79.51", months_ago(4), display="Secondary malignant neoplasm of bone")
        .observation(
            LOINC,
            "72514-3",
            today() - timedelta(days=1),
            valueQuantity={"value": 7, "unit": "{score}", "system": UCUM, "code": "{score}"},
        )
    )


def synthea_like() -> Transaction:
    """(d) A Synthea-style chart with nothing this service is about: viral sinusitis,
    hypertension coded in SNOMED, a pain score without any metastasis, a vaccination-day
    procedure and amoxicillin."""
    return (
        Transaction(gender="male", birth_date="1988-07-30", family="Koepp")
        .condition(SNOMED, "444814009", months_ago(14), status="resolved", display="Viral sinusitis (disorder)")
        .condition(SNOMED, "59621000", months_ago(30), display="Essential hypertension (disorder)")
        .procedure(SNOMED, "430193006", months_ago(14), hours=0.25)
        .observation(
            LOINC, "8302-2", months_ago(2), valueQuantity={"value": 178.2, "unit": "cm", "system": UCUM, "code": "cm"}
        )
        .observation(
            LOINC,
            "72514-3",
            today() - timedelta(days=2),
            valueQuantity={"value": 6, "unit": "{score}", "system": UCUM, "code": "{score}"},
        )
        .medication_request(RXNORM, "308182", months_ago(14), display="Amoxicillin 250 MG Oral Capsule")
    )


# ------------------------------------------------------------------------- the app and its calls


@pytest.fixture
def app_settings(fhir_server):
    """The app of `client` (tests/conftest.py): time enough for a real FHIR server, which
    is on the allowlist (the reasons of its refusals are then told to the client)."""
    return {"fhir_time_budget_s": 10.0, "fhir_server_allowlist": (fhir_server.base_url,)}


USER = "Practitioner/dr-okafor"


def mvd_order(patient_id: str) -> dict:
    return {
        "resourceType": "ServiceRequest",
        "id": "draft-mvd-1",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": ICD10PCS, "code": "00NM0ZZ", "display": "Release Facial Nerve, Open Approach"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def call(client, path: str, body: dict):
    response = client.post(path, json=body)
    assert response.is_json, response.get_data(as_text=True)[:500]
    return response


def cards_of(response) -> list[dict]:
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cards"]


def one_card(response, summary_pattern: str) -> dict:
    cards = cards_of(response)
    matching = [c for c in cards if re.search(summary_pattern, c["summary"])]
    assert len(matching) == 1, [c["summary"] for c in cards]
    return matching[0]


def used_lines(card: dict) -> dict[str, str]:
    """The card's "Patient data used" list: label -> the rest of its line."""
    section = card["detail"].split("### Patient data used", 1)[1].split("\n### ", 1)[0]
    lines = {}
    for line in section.strip().splitlines():
        match = re.match(r"- \*\*(.+?)\*\*: (.*)", line)
        if match:
            lines[match.group(1)] = match.group(2)
    return lines


# ------------------------------------------------------------------------- scenarios


def evidence_page(client, card: dict) -> str:
    """The card's evidence page (its first link), as the clinician opens it."""
    url = card["links"][0]["url"]
    response = client.get(url[url.index("/evidence/") :])
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_opening_the_chart_of_an_hfs_patient_after_mvd_shows_the_recurrence_card_from_fetched_data(fhir_server, client):
    patient_id = load(fhir_server, hfs_after_mvd())
    mvd_day = months_ago(10, extra_days=3)

    response = call(
        client,
        PATIENT_VIEW,
        hook_request(
            "patient-view", patient_id=patient_id, fhir_server=fhir_server.base_url, token=fhir_server.token, user=USER
        ),
    )

    card = one_card(response, r"^MVD ")
    # EVIDENCE.md E time points: under 1 year since the MVD the Chang 1-year figure leads
    assert card["summary"].startswith("MVD 10 months ago, no spasm recorded since: recurrence by 1 year in 1.0 %")
    labels = card_labels("mvd_recurrence.toml")
    used = used_lines(card)
    assert used[labels["months_since_mvd"]].startswith(f"10 months, performed {mvd_day.isoformat()}")
    assert used[labels["hypertension"]].startswith("yes (active), onset 2014-06-01")
    assert "This patient: hypertension yes (active)." in evidence_page(client, card)
    assert "This patient had microvascular decompression (MVD) 10 months ago" in card["detail"]
    assert "Data that could not be retrieved" not in card["detail"]
    assert card["source"]["label"] and card["indicator"] == "info"


def test_signing_an_mvd_order_lists_carbamazepine_and_the_fetched_observations_with_their_dates(fhir_server, client):
    patient_id = load(fhir_server, hfs_on_carbamazepine())

    response = call(
        client,
        ORDER_SIGN,
        hook_request(
            "order-sign",
            patient_id=patient_id,
            fhir_server=fhir_server.base_url,
            token=fhir_server.token,
            user=USER,
            draft_orders=[mvd_order(patient_id)],
        ),
    )

    card = one_card(response, r"^Before MVD: AMR persisted")
    # Disease duration, Cohen grade, carbamazepine and vessel count are in the chart; the
    # preoperative AMR amplitude is not.
    assert "4 of the 5 preoperative factors are recorded" in card["summary"]
    labels = card_labels("amr_persistence.toml")
    used = used_lines(card)
    assert used[labels["carbamazepine"]].startswith(f"yes, dated {months_ago(60).isoformat()}")
    assert "prescribed, active" in used[labels["carbamazepine"]]  # a MedicationRequest, in clinical words
    assert used[labels["cohen_grade"]] == f"3, recorded {(today() - timedelta(days=20)).isoformat()}"
    assert used[labels["vessel_count"]] == f"2, recorded {(today() - timedelta(days=12)).isoformat()}"
    assert used[labels["disease_duration"]].startswith(f"6.0 years, onset {months_ago(72).isoformat()}")
    assert "Order being signed" in card["detail"] and "00NM0ZZ" in card["detail"]


def test_opening_the_chart_of_a_patient_with_a_painful_vertebral_metastasis_shows_yesterdays_pain_score(
    fhir_server, client
):
    patient_id = load(fhir_server, vertebral_metastasis_in_pain())

    response = call(
        client,
        PATIENT_VIEW,
        hook_request(
            "patient-view", patient_id=patient_id, fhir_server=fhir_server.base_url, token=fhir_server.token, user=USER
        ),
    )

    # issue 15: C79.51 without a body site is a bone metastasis, site not recorded, never "vertebral"
    card = one_card(response, r"^Painful bone metastasis, site not recorded")
    assert "(pain 7/10)" in card["summary"]
    assert "vertebral metastasis" not in card["detail"]
    labels = card_labels("spinal_metastasis_mwa.toml")
    used = used_lines(card)
    assert used[labels["pain"]] == f"7/10, recorded {(today() - timedelta(days=1)).isoformat()}"
    assert "This patient: latest pain score 7/10" in evidence_page(client, card)


def test_an_unrelated_synthea_style_chart_gets_no_cards(fhir_server, client):
    patient_id = load(fhir_server, synthea_like())
    body = hook_request(
        "patient-view", patient_id=patient_id, fhir_server=fhir_server.base_url, token=fhir_server.token, user=USER
    )

    response = call(client, PATIENT_VIEW, body)

    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_an_order_for_an_unrelated_patient_gets_no_cards_either(fhir_server, client):
    patient_id = load(fhir_server, synthea_like())
    appendectomy = {
        "resourceType": "ServiceRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "code": {"coding": [{"system": SNOMED, "code": "80146002", "display": "Appendectomy"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    body = hook_request(
        "order-sign",
        patient_id=patient_id,
        fhir_server=fhir_server.base_url,
        token=fhir_server.token,
        user=USER,
        draft_orders=[appendectomy],
    )

    assert call(client, ORDER_SIGN, body).get_json() == {"cards": []}


def test_an_mvd_order_for_a_patient_without_hfs_gets_no_amr_card(fhir_server, client):
    patient_id = load(fhir_server, synthea_like())
    body = hook_request(
        "order-sign",
        patient_id=patient_id,
        fhir_server=fhir_server.base_url,
        token=fhir_server.token,
        user=USER,
        draft_orders=[mvd_order(patient_id)],
    )

    summaries = [c["summary"] for c in cards_of(call(client, ORDER_SIGN, body))]
    assert not any("AMR" in s for s in summaries), summaries


def test_with_a_partial_prefetch_what_was_sent_is_used_and_only_the_rest_is_fetched(fhir_server, client):
    """The client sends the Patient and a conditions Bundle that holds the HFS Condition
    only; the server's hypertension Condition is therefore not seen, which proves the sent
    conditions were used as they are. The MVD comes from the fetched procedures."""
    patient_id = load(fhir_server, hfs_after_mvd())
    auth = {"Authorization": f"Bearer {fhir_server.token}", "Accept": FHIR_JSON}
    patient = requests.get(f"{fhir_server.base_url}/Patient/{patient_id}", headers=auth, timeout=10).json()
    conditions = requests.get(
        f"{fhir_server.base_url}/Condition", params={"patient": patient_id}, headers=auth, timeout=10
    ).json()
    conditions["entry"] = [e for e in conditions["entry"] if e["resource"]["code"]["coding"][0]["code"] == "G51.31"]
    assert len(conditions["entry"]) == 1
    body = hook_request(
        "patient-view",
        patient_id=patient_id,
        fhir_server=fhir_server.base_url,
        token=fhir_server.token,
        user=USER,
        prefetch={"patient": patient, "conditions": conditions},
    )

    card = one_card(call(client, PATIENT_VIEW, body), r"^MVD 10 months ago")

    labels = card_labels("mvd_recurrence.toml")
    used = used_lines(card)
    assert used[labels["months_since_mvd"]].startswith(f"10 months, performed {months_ago(10, 3).isoformat()}")
    assert labels["hypertension"] not in used
    assert "This patient: hypertension not recorded." in evidence_page(client, card)


def test_a_wrong_token_is_412_naming_the_required_keys_without_the_token_or_patient(fhir_server, client):
    patient_id = load(fhir_server, hfs_after_mvd())
    wrong = "wrong-" + fhir_server.token[::-1]
    body = hook_request("patient-view", patient_id=patient_id, fhir_server=fhir_server.base_url, token=wrong, user=USER)

    response = call(client, PATIENT_VIEW, body)

    assert response.status_code == 412
    error = {"error": error_body.code(response.get_json()), "detail": error_body.text(response.get_json())}
    assert error["error"] == "prefetch_unavailable"
    assert "conditions" in error["detail"] and "procedures" in error["detail"]
    assert "401" in error["detail"] or "403" in error["detail"]
    text = response.get_data(as_text=True)
    assert wrong not in text and fhir_server.token not in text and patient_id not in text


def test_a_wrong_token_with_the_required_keys_prefetched_still_answers_with_cards(fhir_server, client):
    """Only optional keys are left to fetch: the server refuses them, the card says so."""
    patient_id = load(fhir_server, hfs_after_mvd())
    auth = {"Authorization": f"Bearer {fhir_server.token}", "Accept": FHIR_JSON}
    prefetch = {
        key: requests.get(
            f"{fhir_server.base_url}/{kind}", params={"patient": patient_id}, headers=auth, timeout=10
        ).json()
        for key, kind in (("conditions", "Condition"), ("procedures", "Procedure"))
    }
    body = hook_request(
        "patient-view",
        patient_id=patient_id,
        fhir_server=fhir_server.base_url,
        token="not-the-token",
        user=USER,
        prefetch=prefetch,
    )

    card = one_card(call(client, PATIENT_VIEW, body), r"^MVD 10 months ago")

    retrieved = card["detail"].split("### Data that could not be retrieved", 1)[1]
    for label in ("patient demographics", "observations", "medication orders", "medication statements"):
        assert label in retrieved
    assert "not-the-token" not in card["detail"] and patient_id not in card["detail"]


# ------------------------------------------------------------------------- null is "no data"


def stub_chart(server, patient_id: str) -> None:
    """A stub FHIR server holding an HFS patient after MVD; every search answers."""
    subject = {"reference": f"Patient/{patient_id}"}
    resources = {
        "Condition": [
            {
                "resourceType": "Condition",
                "id": "c1",
                "subject": subject,
                "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
                "code": {"coding": [{"system": ICD10CM, "code": "G51.31"}]},
                "onsetDateTime": "2018-03-01",
            }
        ],
        "Procedure": [
            {
                "resourceType": "Procedure",
                "id": "p1",
                "status": "completed",
                "subject": subject,
                "code": {"coding": [{"system": ICD10PCS, "code": "00NM0ZZ"}]},
                "performedDateTime": months_ago(10, 3).isoformat(),
            }
        ],
        "Observation": [],
        "MedicationRequest": [],
        "MedicationStatement": [],
    }

    def answer(request):
        kind = request.path.rsplit("/", 1)[-1]
        if request.args.get("patient") != patient_id:  # the code filters of a template may follow
            return Response("{}", status=400, content_type=FHIR_JSON)
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources[kind]]}
        return Response(json.dumps(bundle), content_type=FHIR_JSON)

    server.expect_request(f"/fhir/Patient/{patient_id}").respond_with_json(
        {"resourceType": "Patient", "id": patient_id, "gender": "female", "birthDate": "1970-01-01"},
        content_type=FHIR_JSON,
    )
    for kind in resources:
        server.expect_request(f"/fhir/{kind}").respond_with_handler(answer)


def test_a_prefetch_key_sent_as_null_is_no_data_and_is_not_fetched(fhir_stub, make_client):
    patient_id = "hfs-stub-17"
    stub_chart(fhir_stub, patient_id)
    base = fhir_stub.url_for("/fhir").rstrip("/")
    client = make_client(fhir_time_budget_s=10.0, fhir_server_allowlist=(base,))
    body = hook_request(
        "patient-view",
        patient_id=patient_id,
        fhir_server=base,
        token="stub-token-1",
        user=USER,
        prefetch={"observations": None},
    )

    card = one_card(call(client, PATIENT_VIEW, body), r"^MVD 10 months ago")

    paths = [request.path for request, _ in fhir_stub.log]
    assert "/fhir/Observation" not in paths
    assert sorted(paths) == sorted(
        f"/fhir/{p}"
        for p in (f"Patient/{patient_id}", "Condition", "Procedure", "MedicationRequest", "MedicationStatement")
    )
    assert {request.headers["Authorization"] for request, _ in fhir_stub.log} == {"Bearer stub-token-1"}
    # null is "the client has no such data", not a failure to get it.
    assert "Data that could not be retrieved" not in card["detail"]


def test_with_every_key_sent_as_null_nothing_is_fetched_and_no_card_fires(fhir_stub, client):
    patient_id = "hfs-stub-18"
    stub_chart(fhir_stub, patient_id)
    base = fhir_stub.url_for("/fhir").rstrip("/")
    keys = ("patient", "conditions", "procedures", "observations", "medicationRequests", "medicationStatements")
    body = hook_request(
        "patient-view",
        patient_id=patient_id,
        fhir_server=base,
        token="stub-token-2",
        user=USER,
        prefetch={k: None for k in keys},
    )

    assert call(client, PATIENT_VIEW, body).get_json() == {"cards": []}
    assert fhir_stub.log == []
