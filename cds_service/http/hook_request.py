"""Validate a CDS Hooks 2.0 service request for the hook its service answers.

Each hook's context fields are declared once, in cds_service/hooks.py (HOOK_CONTEXTS). Every
refusal is a 400 ApiError that names the field and says what was expected; no value sent
by the client is echoed back (it could be a patient identifier).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from cds_service.content.services import ServiceDefinition
from cds_service.errors import bad_request
from cds_service.hooks import HOOK_CONTEXTS, SELECTING_HOOKS, ContextField, HookRequest

__all__ = ["HookRequest", "parse_hook_request"]

MAX_URL_LENGTH = 2048
_NOT_IN_URL = re.compile(r"[\x00-\x20\x7f-\x9f]")
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
FHIR_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


def parse_hook_request(body: Any, service: ServiceDefinition) -> HookRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    hook = body.get("hook")
    if not isinstance(hook, str) or not hook:
        raise bad_request("'hook' is required and must be a string")
    if hook != service.hook:
        raise bad_request(f"service '{service.id}' answers the '{service.hook}' hook, not '{_safe(hook)}'")
    hook_instance = body.get("hookInstance")
    if not isinstance(hook_instance, str) or not _is_uuid(hook_instance):
        raise bad_request("'hookInstance' is required and must be a UUID string")
    fhir_server = _parse_fhir_server(body)
    access_token = _parse_fhir_authorization(body, fhir_server)
    scope = body["fhirAuthorization"].get("scope") if access_token is not None else None
    context = _parse_context(body.get("context"), hook)
    prefetch = body.get("prefetch", {})
    if prefetch is None:
        prefetch = {}
    if not isinstance(prefetch, dict):
        raise bad_request("'prefetch' must be a JSON object of prefetch keys")
    for key, value in prefetch.items():
        if value is not None and not isinstance(value, Mapping):  # a dict, or decoded (fhir/decode.py)
            raise bad_request(f"prefetch '{_safe(key)}' must be a FHIR resource, a Bundle or null")
    extension = body.get("extension")
    if extension is not None and not isinstance(extension, dict):
        raise bad_request("'extension' must be a JSON object")
    return HookRequest(
        hook=hook,
        hook_instance=hook_instance,
        context=context,
        fhir_server=fhir_server,
        access_token=access_token,
        prefetch=prefetch,
        extension=extension,
        scope=scope,
    )


def _parse_fhir_server(body: dict[str, Any]) -> str | None:
    fhir_server = body.get("fhirServer")
    if fhir_server is None:
        return None
    if not isinstance(fhir_server, str):
        raise bad_request("'fhirServer' must be a URL string")
    if len(fhir_server) > MAX_URL_LENGTH or _NOT_IN_URL.search(fhir_server):
        raise bad_request(
            f"'fhirServer' must be a URL of at most {MAX_URL_LENGTH} characters without spaces or control characters"
        )
    try:
        parts = urlsplit(fhir_server)
        parts.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        # urlsplit refuses malformed IPv6 hosts and hosts that NFKC-normalise into URL syntax.
        raise bad_request("'fhirServer' is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
        raise bad_request("'fhirServer' must be an absolute http(s) URL without credentials")
    if parts.query or parts.fragment:
        raise bad_request("'fhirServer' must be a base URL without query or fragment")
    return fhir_server.rstrip("/")


def _parse_fhir_authorization(body: dict[str, Any], fhir_server: str | None) -> str | None:
    auth = body.get("fhirAuthorization")
    if auth is None:
        return None
    if not isinstance(auth, dict):
        raise bad_request("'fhirAuthorization' must be a JSON object")
    if fhir_server is None:
        raise bad_request("'fhirServer' is required when 'fhirAuthorization' is given")
    token = auth.get("access_token")
    if not isinstance(token, str) or not token:
        raise bad_request("'fhirAuthorization.access_token' is required and must be a string")
    if not isinstance(auth.get("token_type"), str) or auth["token_type"].lower() != "bearer":
        raise bad_request("'fhirAuthorization.token_type' must be 'Bearer'")
    expires_in = auth.get("expires_in")
    if expires_in is not None and (not isinstance(expires_in, int) or isinstance(expires_in, bool)):
        raise bad_request("'fhirAuthorization.expires_in' must be an integer")
    for name in ("scope", "subject", "patient"):
        if name in auth and not isinstance(auth[name], str):
            raise bad_request(f"'fhirAuthorization.{name}' must be a string")
    return token


def _parse_context(context: Any, hook: str) -> dict[str, Any]:
    if not isinstance(context, dict):
        raise bad_request("'context' is required and must be a JSON object")
    for spec in HOOK_CONTEXTS[hook]:
        value = context.get(spec.name)
        if value is None:
            if spec.required:
                raise bad_request(f"context.{spec.name} is required for the {hook} hook")
            continue
        _check_context_field(spec, value, hook)
    if hook in SELECTING_HOOKS:
        _check_selections_in_draft_orders(context["selections"], context["draftOrders"])
    return context


def _check_context_field(spec: ContextField, value: Any, hook: str) -> None:
    where = f"context.{spec.name}"
    if spec.kind == "id":
        if not isinstance(value, str) or not FHIR_ID.fullmatch(value):
            raise bad_request(f"{where} must be a FHIR id (letters, digits, '-' and '.', at most 64)")
    elif spec.kind == "reference":
        parts = _reference_parts(value) if isinstance(value, str) else None
        if parts is None:
            raise bad_request(f"{where} must be a reference of the form ResourceType/id")
        if parts[0] not in spec.resource_types:
            allowed = ", ".join(spec.resource_types)
            raise bad_request(f"{where} must name one of {allowed} for the {hook} hook")
    elif spec.kind == "references":
        if not isinstance(value, list) or not value:
            raise bad_request(f"{where} must be a non-empty array of ResourceType/id references")
        if any(not isinstance(v, str) or _reference_parts(v) is None for v in value):
            raise bad_request(f"{where} must contain only ResourceType/id references")
    elif spec.kind == "bundle":
        if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
            raise bad_request(f"{where} must be a FHIR Bundle")
        entries = value.get("entry", [])
        if not isinstance(entries, list):
            raise bad_request(f"{where}.entry must be an array")
        for index, entry in enumerate(entries):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                raise bad_request(f"{where}.entry[{index}] must hold a FHIR resource")


def _check_selections_in_draft_orders(selections: list[str], draft_orders: dict[str, Any]) -> None:
    present = {
        f"{entry['resource']['resourceType']}/{entry['resource'].get('id')}" for entry in draft_orders.get("entry", [])
    }
    for index, selection in enumerate(selections):
        if selection not in present:
            raise bad_request(f"context.selections[{index}] does not name an order in context.draftOrders")


def _reference_parts(value: str) -> tuple[str, str] | None:
    resource_type, _, resource_id = value.partition("/")
    if FHIR_TYPE.fullmatch(resource_type) and FHIR_ID.fullmatch(resource_id):
        return resource_type, resource_id
    return None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) in (32, 36)


def _safe(text: str) -> str:
    """A client-sent name quoted in an error: short, printable, never a long value."""
    cleaned = "".join(ch for ch in str(text)[:40] if ch.isprintable())
    return cleaned
