"""The CDS hooks this service answers, their context fields, and a validated hook request.

The one list of hooks: everything that names a hook or a context field (the request's
checks in http/hook_request.py, the service catalogue, the cards' triggers, the order
hooks' derivations, the demo) reads it from here. Context fields are those of the hook
definitions of the CDS Hooks library (patient-view 1.0, order-select 1.0, order-sign 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContextField:
    name: str
    required: bool
    kind: str  # "reference" | "id" | "references" | "bundle"
    resource_types: tuple[str, ...] = ()  # for "reference": the types userId may name


_USER = ("Practitioner", "PractitionerRole", "Patient", "RelatedPerson")
_ORDERING_USER = ("Practitioner", "PractitionerRole")

HOOK_CONTEXTS: dict[str, tuple[ContextField, ...]] = {
    "patient-view": (
        ContextField("userId", True, "reference", _USER),
        ContextField("patientId", True, "id"),
        ContextField("encounterId", False, "id"),
    ),
    "order-select": (
        ContextField("userId", True, "reference", _ORDERING_USER),
        ContextField("patientId", True, "id"),
        ContextField("encounterId", False, "id"),
        ContextField("selections", True, "references"),
        ContextField("draftOrders", True, "bundle"),
    ),
    "order-sign": (
        ContextField("userId", True, "reference", _ORDERING_USER),
        ContextField("patientId", True, "id"),
        ContextField("encounterId", False, "id"),
        ContextField("draftOrders", True, "bundle"),
    ),
}


@dataclass(frozen=True)
class HookRequest:
    hook: str
    hook_instance: str
    context: dict
    fhir_server: str | None  # base URL without trailing slash
    access_token: str | None  # fhirAuthorization.access_token
    prefetch: dict  # as sent; a key absent here was not sent
    extension: dict | None = None  # as sent (e.g. the card switches, content/configuration.py)
    scope: str | None = None  # fhirAuthorization.scope: what the token lets the service read

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]

    @property
    def draft_orders(self) -> dict | None:
        return self.context.get("draftOrders")

    @property
    def selections(self) -> list[str] | None:
        """order-select: the selected orders; None (all draft orders count) otherwise."""
        return self.context.get("selections")


HOOKS: tuple[str, ...] = tuple(HOOK_CONTEXTS)
# Hooks whose context carries draft orders (context.draftOrders), and those that also say
# which of them the user selected (context.selections).
ORDER_HOOKS: tuple[str, ...] = tuple(
    h for h, fields in HOOK_CONTEXTS.items() if any(f.name == "draftOrders" for f in fields)
)
SELECTING_HOOKS: tuple[str, ...] = tuple(
    h for h, fields in HOOK_CONTEXTS.items() if any(f.name == "selections" for f in fields)
)
