"""Errors are data: every refusal in the request path is an ApiError with a clear reason.

The Flask app turns an ApiError into a FHIR R4 OperationOutcome with its status, as CDS
Hooks 3.0.0-ballot §"Returning OperationOutcome" recommends for every non-2xx answer (the
bare 401 excepted: a refused client learns nothing). The short machine code (`error`) is
the issue's `details.coding` in ERROR_CODE_SYSTEM and the text (`detail`) its
`details.text`. `detail` is written by us, never copied from a library exception, so it
cannot leak a token, a patient identifier or a stack trace.
"""

from __future__ import annotations

from typing import Any

# The code system of the service's own error codes (`invalid_request`, `prefetch_unavailable`...).
ERROR_CODE_SYSTEM = "urn:hfs-cds-service:error"

# HTTP status -> OperationOutcome.issue.code (FHIR R4 value set issue-type).
_ISSUE_TYPE = {
    400: "invalid",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "processing",
    413: "too-long",
    415: "not-supported",
    422: "business-rule",
    429: "throttled",
    500: "exception",
    503: "transient",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        headers: dict[str, str] | None = None,
        *,
        diagnostics: str | None = None,
        expression: tuple[str, ...] = (),
    ) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})  # e.g. Retry-After on a 503
        self.diagnostics = diagnostics  # our own words for a developer (e.g. the prefetch key)
        self.expression = tuple(expression)  # FHIRPath of what was missing or wrong

    def body(self) -> dict[str, Any]:
        return operation_outcome(self.status, self.error, self.detail, self.diagnostics, self.expression)


def operation_outcome(
    status: int, error: str, detail: str, diagnostics: str | None = None, expression: tuple[str, ...] = ()
) -> dict[str, Any]:
    """A FHIR R4 OperationOutcome with one issue saying why the answer is `status`."""
    issue: dict[str, Any] = {
        "severity": "fatal" if status == 500 else "error",
        "code": _ISSUE_TYPE.get(status, "processing" if status < 500 else "exception"),
        "details": {"coding": [{"system": ERROR_CODE_SYSTEM, "code": error}], "text": detail or error},
    }
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = list(expression)
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def error_code(body: object) -> str | None:
    """The service's machine code in an error body (an OperationOutcome or the bare 401)."""
    if not isinstance(body, dict):
        return None
    if "error" in body:
        code = body["error"]
        return code if isinstance(code, str) else None
    for issue in body.get("issue") or ():
        for coding in (issue.get("details") or {}).get("coding") or ():
            if coding.get("system") == ERROR_CODE_SYSTEM:
                code = coding.get("code")
                return code if isinstance(code, str) else None
    return None


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "invalid_request", detail)
