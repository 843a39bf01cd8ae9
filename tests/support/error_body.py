"""Reading the service's error bodies in tests: a FHIR R4 OperationOutcome (every refusal but
the bare 401) whose first issue holds the machine code and the text."""

from __future__ import annotations

from cds_service.errors import ERROR_CODE_SYSTEM


def is_outcome(body: object) -> bool:
    """Exactly the shape the service sends: one issue, our coding, a text; nothing else."""
    if not isinstance(body, dict) or set(body) != {"resourceType", "issue"}:
        return False
    if body["resourceType"] != "OperationOutcome" or len(body["issue"]) != 1:
        return False
    issue = body["issue"][0]
    details = issue.get("details") or {}
    coding = details.get("coding") or [{}]
    return (
        set(issue) <= {"severity", "code", "details", "diagnostics", "expression"}
        and issue.get("severity") in ("error", "fatal")
        and isinstance(issue.get("code"), str)
        and coding[0].get("system") == ERROR_CODE_SYSTEM
        and isinstance(details.get("text"), str)
        and bool(details["text"].strip())
    )


def code(body: dict) -> str:
    """The service's short machine code (`invalid_request`, `prefetch_unavailable`, ...)."""
    assert is_outcome(body), body
    return body["issue"][0]["details"]["coding"][0]["code"]


def text(body: dict) -> str:
    """What was wrong, in the service's words."""
    assert is_outcome(body), body
    return body["issue"][0]["details"]["text"]
