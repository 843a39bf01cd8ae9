"""Errors are data: an ApiError carries its status, a code and a detail we wrote, and is
sent as a FHIR R4 OperationOutcome (CDS Hooks 3.0.0-ballot "Returning OperationOutcome")."""

from __future__ import annotations

import pytest

from cds_service.errors import ERROR_CODE_SYSTEM, ApiError, bad_request, error_code


def outcome(issue_type: str, code: str, text: str, **more) -> dict:
    issue = {
        "severity": "error",
        "code": issue_type,
        "details": {"coding": [{"system": ERROR_CODE_SYSTEM, "code": code}], "text": text},
    }
    return {"resourceType": "OperationOutcome", "issue": [{**issue, **more}]}


def test_an_api_error_answers_with_an_operation_outcome_holding_its_code_and_detail_only():
    error = ApiError(503, "fhir_unavailable", "the FHIR server did not answer in time")
    assert error.status == 503
    assert error.body() == outcome("transient", "fhir_unavailable", "the FHIR server did not answer in time")
    assert error_code(error.body()) == "fhir_unavailable"


def test_a_412_names_the_prefetch_key_in_diagnostics_and_expression():
    error = ApiError(
        412, "prefetch_unavailable", "conditions", diagnostics="key 'conditions'", expression=("prefetch.conditions",)
    )
    assert error.body() == outcome(
        "processing",
        "prefetch_unavailable",
        "conditions",
        diagnostics="key 'conditions'",
        expression=["prefetch.conditions"],
    )


def test_the_bare_401_code_is_read_too_and_anything_else_has_none():
    assert error_code({"error": "unauthorized"}) == "unauthorized"
    assert error_code([]) is None and error_code({"resourceType": "OperationOutcome", "issue": []}) is None


def test_an_api_error_says_status_code_and_detail_when_logged_or_raised():
    with pytest.raises(ApiError, match=r"^404 unknown_service: no such service$"):
        raise ApiError(404, "unknown_service", "no such service")


def test_a_bad_request_is_a_400_invalid_request_with_the_reason():
    error = bad_request("context.patientId is required")
    assert (error.status, error.error, error.detail) == (400, "invalid_request", "context.patientId is required")
    assert error.body() == outcome("invalid", "invalid_request", "context.patientId is required")
