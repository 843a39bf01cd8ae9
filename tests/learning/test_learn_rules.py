"""Learning without the real server: the definition files, the cohort rules, the
minimum-sample-size refusal, the staging file's lifetime and the SMART client's errors."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from support.chart import CHEMODENERVATION, CLINICAL, HFS, LOCAL, RFA
from support.learned_reports import NO_BULK, serve_population
from support.synthetic_cohort import Generator

from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.learning.cohort import patient_row
from cds_service.learning.definition import DefinitionError, definition_path, load_definition
from cds_service.learning.run import LearnError, LearnOptions, learn
from cds_service.learning.staging import Staging
from cds_service.security.smart_backend import BackendAuthError, BackendClient, BackendTokenSource
from cds_service.terminology.concepts_file import load_concepts

TODAY = date(2026, 1, 1)
CONCEPTS = load_concepts(DEFAULT_CARDS_DIR)


def _definition(card: str):
    return load_definition(definition_path(DEFAULT_CARDS_DIR, card))[0]


# ---------------------------------------------------------------------------- definitions
@pytest.mark.parametrize("card", ["rfa-recurrence", "amr-persistence", "btxa-response"])
def test_each_shipped_definition_loads_and_states_its_minimum_sample_size_rule(card):
    definition = _definition(card)
    assert definition.card == card
    assert "events per predictor" in definition.minimum_sample_size.rule
    assert definition.minimum_sample_size.min_events_per_predictor >= 10
    assert all(c in CONCEPTS for c in definition.concepts())


def test_a_numeric_predictor_without_a_coding_is_refused_with_the_file_named(tmp_path):
    text = definition_path(DEFAULT_CARDS_DIR, "rfa-recurrence").read_text(encoding="utf-8")
    broken = tmp_path / "learning" / "rfa-recurrence.toml"
    broken.parent.mkdir()
    broken.write_text(text.replace("coding = { scale = 10, offset = 0 }", ""), encoding="utf-8")
    with pytest.raises(DefinitionError, match=r"rfa-recurrence\.toml.*needs a coding"):
        load_definition(broken)


# ---------------------------------------------------------------------------- cohort rules
def _patient(*resources):
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    out = [patient]
    for i, r in enumerate(resources):
        out.append({**r, "id": f"r{i}", "subject": {"reference": "Patient/p1"}})
    return out


def _condition(code, day, status="active"):
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "onsetDateTime": day,
        "recordedDate": day,
    }


def _procedure(code, start, end=None):
    r = {"resourceType": "Procedure", "status": "completed", "code": {"coding": [{"system": code[0], "code": code[1]}]}}
    if end:
        r["performedPeriod"] = {"start": start, "end": end}
    else:
        r["performedDateTime"] = start
    return r


def _grade(when, value):
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": "house-brackmann-grade"}]},
        "effectiveDateTime": when,
        "valueInteger": value,
    }


def _encounter(day):
    return {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "period": {"start": day}}


def test_a_repeat_botulinum_treatment_after_the_rfa_is_the_recurrence_event():
    row = patient_row(
        _patient(
            _condition(HFS, "2022-01-01"),
            _procedure(RFA, "2024-01-10T08:00:00Z", "2024-01-10T08:40:00Z"),
            _grade("2024-01-11T09:00:00Z", 2),
            _procedure(CHEMODENERVATION, "2024-07-10T10:00:00Z"),
            _encounter("2025-01-10"),
        ),
        _definition("rfa-recurrence"),
        CONCEPTS,
        TODAY,
    )
    assert row.event is True
    assert row.values == {"operation_time": 40.0, "paralysis_grade_after": 2.0}
    assert 5.9 < row.time < 6.1


def test_without_an_event_the_rfa_patient_is_censored_at_the_last_recorded_contact():
    row = patient_row(
        _patient(
            _condition(HFS, "2022-01-01"),
            _procedure(RFA, "2024-01-10T08:00:00Z", "2024-01-10T08:30:00Z"),
            _grade("2024-01-11T09:00:00Z", 1),
            _encounter("2024-04-10"),
        ),
        _definition("rfa-recurrence"),
        CONCEPTS,
        TODAY,
    )
    assert row.event is False and 2.9 < row.time < 3.1


def test_a_grade_recorded_after_the_decision_time_is_not_a_predictor():
    result = patient_row(
        _patient(
            _condition(HFS, "2022-01-01"),
            _procedure(RFA, "2024-01-10T08:00:00Z", "2024-01-10T08:30:00Z"),
            _grade("2024-03-01T09:00:00Z", 3),  # 51 days later: past the 14-day decision time
            _encounter("2024-06-10"),
        ),
        _definition("rfa-recurrence"),
        CONCEPTS,
        TODAY,
    )
    assert result == "paralysis_grade_after not recorded"


def test_hypertension_first_recorded_after_the_botulinum_treatment_is_not_present_at_it():
    definition = _definition("btxa-response")
    response = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOCAL, "code": "cohen-response"}]},
        "effectiveDateTime": "2024-02-20",
        "valueCodeableConcept": {"coding": [{"system": LOCAL, "code": "cohen-response-none"}]},
    }
    row = patient_row(
        _patient(
            _condition(HFS, "2020-01-01"),
            _condition(("http://hl7.org/fhir/sid/icd-10-cm", "I10"), "2024-05-01"),
            _procedure(CHEMODENERVATION, "2024-01-10T10:00:00Z"),
            response,
        ),
        definition,
        CONCEPTS,
        TODAY,
    )
    assert row.values["hypertension"] == 0.0 and row.event is True


def test_a_patient_without_the_index_procedure_is_not_in_the_cohort():
    assert patient_row(_patient(_condition(HFS, "2020-01-01")), _definition("rfa-recurrence"), CONCEPTS, TODAY) is None


# ---------------------------------------------------------------------------- end to end, search fallback
def test_too_few_events_for_the_predictors_is_refused_naming_the_rule_and_no_model_is_written(fhir_stub, tmp_path):
    generator = Generator(seed=3)
    generator.rfa(25)
    serve_population(fhir_stub, generator)
    result = learn(
        LearnOptions(
            card_id="rfa-recurrence",
            cards_dir=DEFAULT_CARDS_DIR,
            fhir_base=fhir_stub.url_for("/fhir"),
            out_dir=tmp_path / "out",
            staging_dir=tmp_path,
        )
    )
    assert result.status == "refused"
    assert "minimum-sample-size rule" in result.message and "Peduzzi" in result.message
    assert "events per predictor parameter" in result.message
    assert result.overlay is None and not (tmp_path / "out" / "rfa-recurrence.overlay.toml").exists()
    report = json.loads(result.report_json.read_text(encoding="utf-8"))
    assert report["status"] == "refused" and not report["coefficients"]
    assert report["provenance"]["extraction"]["method"] == "search"
    assert not list(tmp_path.glob("cds-learn-*")), "the staging file holds patient data: it must be deleted"


def test_the_staging_file_is_deleted_when_the_extraction_fails(fhir_stub, tmp_path):
    fhir_stub.expect_request("/fhir/metadata").respond_with_json(NO_BULK)
    fhir_stub.expect_request("/fhir/Patient").respond_with_json({"resourceType": "Bundle", "type": "searchset"})
    fhir_stub.expect_request("/fhir/Condition").respond_with_data("", status=503)
    with pytest.raises(LearnError, match=r"extraction failed: a Condition search failed \(503\)"):
        learn(
            LearnOptions(
                card_id="btxa-response",
                cards_dir=DEFAULT_CARDS_DIR,
                fhir_base=fhir_stub.url_for("/fhir"),
                out_dir=tmp_path / "out",
                staging_dir=tmp_path,
            )
        )
    assert not list(tmp_path.glob("cds-learn-*"))


def test_staging_hands_out_each_patients_resources_together(tmp_path):
    with Staging(tmp_path) as staging:
        staging.add({"resourceType": "Condition", "subject": {"reference": "Patient/b"}})
        staging.add({"resourceType": "Patient", "id": "a"})
        staging.add({"resourceType": "Patient", "id": "b"})
        staging.add({"resourceType": "Observation", "subject": {"reference": "https://x/fhir/Patient/a"}})
        staging.add({"resourceType": "Observation"})  # no patient: not used
        groups = sorted(sorted(r["resourceType"] for r in p) for p in staging.patients())
        assert groups == [["Condition", "Patient"], ["Observation", "Patient"]]
        assert staging.unassigned == 1
        directory = staging.directory
    assert not Path(directory).exists()


# ---------------------------------------------------------------------------- SMART client
def test_a_refused_smart_client_gets_an_error_without_the_assertion(fhir_stub):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fhir_stub.expect_request("/fhir/.well-known/smart-configuration").respond_with_json(
        {"token_endpoint": fhir_stub.url_for("/auth/token")}
    )
    fhir_stub.expect_request("/auth/token", method="POST").respond_with_json(
        {"error": "invalid_client", "error_description": "nope"}, status=401
    )
    source = BackendTokenSource(BackendClient("c1", pem), fhir_stub.url_for("/fhir"))
    with pytest.raises(BackendAuthError) as caught:
        source.authorization()
    assert caught.value.reason == "the SMART token endpoint refused the client (401, invalid_client)"
    (request, _), *_ = [(r, x) for r, x in fhir_stub.log if r.path == "/auth/token"]
    form = request.form
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    import jwt

    header = jwt.get_unverified_header(form["client_assertion"])
    claims = jwt.decode(form["client_assertion"], options={"verify_signature": False})
    assert header["alg"] == "RS384"
    assert claims["iss"] == claims["sub"] == "c1" and claims["aud"] == fhir_stub.url_for("/auth/token")
    assert claims["exp"] - claims["iat"] <= 300


def test_an_rsa_key_cannot_sign_es384_and_says_so():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    source = BackendTokenSource(
        BackendClient("c1", pem, algorithm="ES384", token_url="http://127.0.0.1:9/t"), "http://x"
    )
    with pytest.raises(BackendAuthError, match="ES384 a P-384 key"):
        source.assertion("http://127.0.0.1:9/t")


def test_cli_exits_3_and_names_the_rule_when_the_cohort_is_too_small(fhir_stub, tmp_path, capsys):
    from cds_service.cli import main

    generator = Generator(seed=5)
    generator.btxa(40)
    serve_population(fhir_stub, generator)
    code = main(["learn", "btxa-response", "--fhir-base", fhir_stub.url_for("/fhir"), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 3
    assert out.startswith("Refused: the data cannot support this model under the minimum-sample-size rule")
    assert "Riley criterion iii" in out
    assert not (tmp_path / "btxa-response.overlay.toml").exists()


def test_cli_exits_2_with_a_clear_message_for_an_unknown_card(tmp_path, capsys):
    from cds_service.cli import main

    code = main(["learn", "no-such-card", "--fhir-base", "http://127.0.0.1:9/fhir", "--out", str(tmp_path)])
    assert code == 2
    assert "no-such-card.toml: cannot read the learning definition" in capsys.readouterr().err


def test_cli_says_the_fhir_server_could_not_be_reached_with_smart_not_that_it_has_no_token_endpoint(tmp_path, capsys):
    """issue 20: an unreachable server was reported as "publishes no SMART token endpoint"."""
    import socket

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from cds_service.cli import main

    key = tmp_path / "key.pem"
    key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = main(
        [
            "learn",
            "btxa-response",
            "--fhir-base",
            f"http://127.0.0.1:{port}/fhir",
            "--out",
            str(tmp_path),
            "--client-id",
            "c1",
            "--private-key",
            str(key),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err
        == f"cds-service learn: extraction failed: the FHIR server could not be reached (127.0.0.1:{port}: connection refused)\n"
    )
