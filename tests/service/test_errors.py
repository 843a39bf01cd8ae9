"""Errors are data: an ApiError carries its status, a code and a detail we wrote."""

from __future__ import annotations

import pytest

from cds_service.errors import ApiError, bad_request


def test_an_api_error_answers_with_its_code_and_detail_only():
    error = ApiError(503, "fhir_unavailable", "the FHIR server did not answer in time")
    assert error.status == 503
    assert error.body() == {"error": "fhir_unavailable", "detail": "the FHIR server did not answer in time"}


def test_an_api_error_says_status_code_and_detail_when_logged_or_raised():
    with pytest.raises(ApiError, match=r"^404 unknown_service: no such service$"):
        raise ApiError(404, "unknown_service", "no such service")


def test_a_bad_request_is_a_400_invalid_request_with_the_reason():
    error = bad_request("context.patientId is required")
    assert (error.status, error.error, error.detail) == (400, "invalid_request", "context.patientId is required")
    assert error.body() == {"error": "invalid_request", "detail": "context.patientId is required"}
