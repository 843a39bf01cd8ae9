"""Property-based check of the contract: schemathesis generates requests from openapi.yaml
(valid and invalid ones) and sends them to the real app in development mode.

For every operation, bounded and deterministic: no answer may be a 5xx, and every answer
must be documented (status code, content type, body schema). The FHIR server allowlist is
a loopback port where nothing listens, so a generated `fhirServer` never leads to a
network call outside this machine.
"""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.openapi_support import contract_copy

from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.services import load_services

MAX_EXAMPLES = 25
# Port 9 (discard) on loopback: nothing listens, a connection is refused at once.
UNREACHABLE_FHIR_SERVER = "http://127.0.0.1:9/fhir"

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

CONFIG = {
    "seed": 20240611,
    # Generation speed depends on the machine, not on the service: never fail for that.
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
    "generation": {
        "mode": "all",
        "max-examples": MAX_EXAMPLES,
        "deterministic": True,
        "database": "none",
        # No Authorization header is generated: dev mode accepts unsigned requests, so the
        # generated bodies reach validation instead of all ending as 401.
        "with-security-parameters": False,
    },
    "phases": {
        "coverage": {"enabled": False},
        "stateful": {"enabled": False},
    },
}


def focus_on_this_deployment(raw: dict) -> dict:
    """Point the generator at the services that exist (a random id is just a 404) and at
    the prefetch keys they ask for, so generated bodies reach the record and the cards."""
    services = load_services(DEFAULT_CARDS_DIR / "services.toml")
    service_ids = sorted(services)
    prefetch_keys = sorted({t.key for s in services.values() for t in s.prefetch})
    raw["components"]["parameters"]["ServiceId"]["schema"] = {"type": "string", "enum": service_ids}
    prefetch = raw["components"]["schemas"]["Prefetch"]
    prefetch["properties"] = {key: prefetch["additionalProperties"] for key in prefetch_keys}
    return raw


# Built at import: schemathesis' lazy `from_fixture` loader does not run under pytest 9.
schema = schemathesis.openapi.from_dict(
    focus_on_this_deployment(contract_copy()), config=schemathesis.Config.from_dict(CONFIG)
)


SERVICE_FOR_HOOK = {s.hook: s.id for s in load_services(DEFAULT_CARDS_DIR / "services.toml").values()}


@schema.hook
def map_case(context, case):
    """Send a generated hook request to the service of its hook, and let `selections` name
    the generated draft orders: otherwise nearly every generated call stops at the 400 for
    a hook/service mismatch and never reaches prefetch, the record and the cards."""
    body = case.body
    if case.operation.path != "/cds-services/{service_id}" or not isinstance(body, dict):
        return case
    service_id = SERVICE_FOR_HOOK.get(body.get("hook")) if isinstance(body.get("hook"), str) else None
    if service_id is not None:
        case.path_parameters["service_id"] = service_id
    context = body.get("context")
    if body.get("hook") == "order-select" and isinstance(context, dict):
        orders = context.get("draftOrders")
        entries = orders.get("entry") if isinstance(orders, dict) else None
        references = [
            f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}"
            for e in entries or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict) and isinstance(e["resource"].get("id"), str)
        ]
        if references:
            context["selections"] = references[:1]
    return case


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from cds_service.http.app import create_app

    return create_app(
        instance_path=tmp_path_factory.mktemp("schemathesis-instance"),
        allow_unsigned=True,
        fhir_server_allowlist=(UNREACHABLE_FHIR_SERVER,),
        fhir_time_budget_s=0.5,
    )


@schema.parametrize()
def test_generated_requests_get_documented_answers_and_never_a_server_error(case, app):
    case.call_and_validate(app=app, checks=CHECKS)
