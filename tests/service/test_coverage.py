"""`cds-service coverage` (issue 19) against the real FHIR server (sekmet): on a cohort that
uses local codes it proposes those codes, by text and by co-occurrence, with counts; it
writes a draft overlay the service can load, and nothing that identifies a patient."""

from __future__ import annotations

import secrets
import tomllib
import uuid

import pytest
from support.fhir_server_fixture import SekmetServer, _free_port, running_sekmet

from cds_service.cli import main
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.golive.coverage import overlay_text, survey
from cds_service.terminology.concepts_file import load_concepts

pytestmark = pytest.mark.fhir_server

LOCAL = "https://hospital.example/fhir/CodeSystem/problems"
OR_BOOK = "https://hospital.example/fhir/CodeSystem/or-bookings"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
NAMES = ("Zebediah", "Quuxworth", "Ottoline", "MRN-99231", "MRN-55170", "MRN-31337")


def coded(*codings: tuple[str, str, str], text: str | None = None) -> dict:
    value: dict = {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}
    if text:
        value["text"] = text
    return value


def patient(name: str, mrn: str, *resources: dict) -> list[dict]:
    ref = f"urn:uuid:{uuid.uuid4()}"
    entries = [
        {
            "fullUrl": ref,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": "https://hospital.example/mrn", "value": mrn}],
                "name": [{"family": name, "given": ["Test"]}],
            },
        }
    ]
    for resource in resources:
        key = "subject"
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {**resource, key: {"reference": ref}}})
    return entries


def condition(code: dict) -> dict:
    return {"resourceType": "Condition", "code": code, "onsetDateTime": "2021-03-01"}


def procedure(code: dict) -> dict:
    return {"resourceType": "Procedure", "status": "completed", "code": code, "performedDateTime": "2022-05-02"}


HFS_LOCAL = (LOCAL, "HFS-L", "Hemifacial spasm, left side")


def cohort() -> dict:
    entries = [
        # HFS by a local code only (found by its text), and an MVD booked under a local code
        # that names the procedure in words
        *patient(
            "Zebediah",
            "MRN-99231",
            condition(coded(HFS_LOCAL)),
            procedure(coded((OR_BOOK, "OR-77", "Microvascular decompression of the facial nerve, left"))),
        ),
        # HFS coded both ways in one CodeableConcept, and an MVD coded both ways
        *patient(
            "Quuxworth",
            "MRN-55170",
            condition(coded((ICD10CM, "G51.31", "Clonic hemifacial spasm, right"), HFS_LOCAL)),
            procedure(coded((ICD10PCS, "00NM0ZZ", "Release Facial Nerve, Open Approach"), (OR_BOOK, "OR-4471", "MVD"))),
        ),
        # not in the cohort: a local hypertension code must not be proposed
        *patient("Ottoline", "MRN-31337", condition(coded((LOCAL, "HTN-9", "Essential hypertension")))),
    ]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{**e, "request": {"method": "POST", "url": e["resource"]["resourceType"]}} for e in entries],
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> SekmetServer:
    workdir = tmp_path_factory.mktemp("sekmet-coverage")
    token = secrets.token_urlsafe(24)
    with running_sekmet(workdir, _free_port(), {"types": ["bearer"], "tokens": [token]}) as base_url:
        server = SekmetServer(base_url=base_url, token=token, log_path=workdir / "sekmet.log")
        server.load(cohort())
        yield server


def test_coverage_proposes_the_local_codes_with_counts_and_writes_a_loadable_draft(site, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COVERAGE_TEST_TOKEN", site.token)
    out = tmp_path / "out"
    code = main(["coverage", "--fhir-server", site.base_url, "--out", str(out), "--token-env", "COVERAGE_TEST_TOKEN"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = (out / "coverage.txt").read_text()
    assert "3 patients read" in report and "hemifacial_spasm: 2 patients" in report
    lines = report.splitlines()
    hfs = next(line for line in lines if f"hemifacial_spasm: {LOCAL} HFS-L" in line)
    assert "2 records, 2 patients" in hfs and "co-occurrence and text" in hfs and "Hemifacial spasm, left side" in hfs
    assert any(f"mvd_facial_nerve: {OR_BOOK} OR-4471" in line and "co-occurrence" in line for line in lines)
    assert any(f"mvd_facial_nerve: {OR_BOOK} OR-77" in line and "by text" in line for line in lines)
    assert "HTN-9" not in report  # the patient without HFS or a metastasis is not read for proposals

    draft = (out / "coverage.overlay.toml").read_text()
    for text in (report, draft, printed):
        assert not any(name in text for name in NAMES)
        assert "Patient/" not in text and "urn:uuid" not in text
    overlay = tomllib.loads(draft)
    concepts = load_concepts(DEFAULT_CARDS_DIR, overlay)  # the draft is a valid site overlay
    assert "hemifacial_spasm" in concepts.lookup(LOCAL, "HFS-L")
    assert "mvd_facial_nerve" in concepts.lookup(OR_BOOK, "OR-4471")


def test_a_code_the_concepts_already_know_is_not_proposed():
    concepts = load_concepts(DEFAULT_CARDS_DIR)
    records = [[condition(coded((ICD10CM, "G51.31", "Clonic hemifacial spasm, right")))] for _ in range(2)]
    result = survey(iter(records), concepts)
    assert result.cohort == {"hemifacial_spasm": 2} and result.proposals == []
    assert "codes = [" not in overlay_text(result, "http://x/fhir")
