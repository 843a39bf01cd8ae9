"""Hostile and broken input through the real HTTP path: every refusal is a clear 4xx JSON
answer {"error", "detail"}; never a 500, a stack trace, an exception name, a file path, the
FHIR token or the patient id. Broken FHIR data inside an otherwise valid request is not a
refusal: the call answers 200, and a card whose input could not be read says so.
"""

from __future__ import annotations

import copy
import io
import json
import re
import socket
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import error_body
from support.chart import BONE_METASTASIS, LOINC, MVD, MWA_THORACIC, Chart

MAX_BODY = 1024 * 1024
PATIENT_ID = "pt-hostile-5521"
TOKEN = "tok-hostile-8c1d-secret"
SERVICES = {
    "patient-view": "hfs-outcomes-patient-view",
    "order-select": "hfs-outcomes-order-select",
    "order-sign": "hfs-outcomes-order-sign",
}
URLS = [f"/cds-services/{s}" for s in SERVICES.values()]
FEEDBACK_URLS = [f"{u}/feedback" for u in URLS]
PATIENT_VIEW, ORDER_SELECT, ORDER_SIGN = URLS
PREFETCH_KEYS = ("patient", "conditions", "procedures", "observations", "medicationRequests", "medicationStatements")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Requests name a loopback port nobody listens on, and the app may use no other FHIR
# server: whatever a generated request asks to fetch, nothing leaves this machine.
FHIR_BASE = f"http://127.0.0.1:{_closed_port()}/fhir"
# What an answer must never show: Python internals and what the client sent in confidence.
LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|site-packages|/work/|\b[A-Z][A-Za-z]*(Error|Exception)\b|"
    r"0x[0-9a-f]{6,}|<[a-z_.]+ object"
)


@pytest.fixture
def app_settings():
    """The app of `client` (tests/conftest.py): a 1 MiB body limit, a FHIR server that refuses."""
    return {"max_body_bytes": MAX_BODY, "fhir_server_allowlist": (FHIR_BASE,)}


# ------------------------------------------------------------------------- requests


def chart() -> Chart:
    """An HFS patient after MVD with hypertension, about to have a revision MVD ordered."""
    return (
        Chart(patient_id=PATIENT_ID)
        .hfs(onset="2019-03-01")
        .hypertension()
        .mvd("2026-01-12T08:00:00Z", "2026-01-12T10:30:00Z")
        .order(MVD)
    )


def valid_request(hook: str, c: Chart | None = None) -> dict:
    """A complete, valid request for `hook` (full prefetch; fhirServer and token given)."""
    c = c or chart()
    return c.hook_request(hook, user="Practitioner/dr-amsel", fhir_server=FHIR_BASE, token=TOKEN)


def valid_feedback() -> dict:
    return {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "code": "not-applicable",
                        "system": "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local",
                    },
                    "userComment": "seen before",
                },
                "outcomeTimestamp": "2026-11-02T10:05:31Z",
            }
        ]
    }


def post_raw(client, url: str, data: bytes | str, content_type: str | None = "application/json", **kw):
    headers = kw.pop("headers", {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    return client.post(url, data=data, headers=headers, **kw)


def assert_refused(response, status: int, error: str | None = None) -> dict:
    """A clear refusal: that status, an OperationOutcome and nothing it must not show. The
    answer is the machine code and the text as {"error", "detail"}, for the checks below."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:300])
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data(as_text=True))
    assert error_body.is_outcome(body), body
    body = {"error": error_body.code(body), "detail": error_body.text(body)}
    assert isinstance(body["error"], str) and re.fullmatch(r"[a-z_]+", body["error"])
    if error is not None:
        assert body["error"] == error, body
    assert_no_leak(response)
    return body


def assert_no_leak(response) -> None:
    text = response.get_data(as_text=True)
    assert not LEAKS.search(text), text[:500]
    assert TOKEN not in text
    assert PATIENT_ID not in text


# ------------------------------------------------------------------------- size


@pytest.mark.parametrize("url", URLS + FEEDBACK_URLS)
def test_a_body_over_the_size_limit_is_413(client, url):
    body = json.dumps({"padding": "x" * MAX_BODY})
    assert_refused(post_raw(client, url, body), 413, "request_too_large")


def test_a_body_at_the_size_limit_is_read(client):
    body = json.dumps(valid_request("patient-view"))
    body += " " * (MAX_BODY - len(body.encode()))
    response = post_raw(client, PATIENT_VIEW, body)
    assert response.status_code == 200 and response.get_json()["cards"]


def test_a_content_length_over_the_limit_is_413_before_the_body_is_read(client):
    response = post_raw(client, PATIENT_VIEW, b"{}", environ_overrides={"CONTENT_LENGTH": str(MAX_BODY * 8)})
    assert_refused(response, 413, "request_too_large")


@pytest.mark.parametrize("size", [MAX_BODY + 1, 3 * MAX_BODY])
def test_a_chunked_body_over_the_limit_is_413_not_a_cut_body(client, size):
    """Without Content-Length (chunked; gunicorn terminates the input) Werkzeug stops
    reading at the limit; the service must not parse what it cut."""
    body = json.dumps(valid_request("patient-view")).encode()
    body += b" " * (size - len(body))
    response = client.post(
        PATIENT_VIEW,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_refused(response, 413, "request_too_large")


def test_a_chunked_body_within_the_limit_is_read(client):
    body = json.dumps(valid_request("patient-view")).encode()
    response = client.post(
        PATIENT_VIEW,
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200 and response.get_json()["cards"]


# ------------------------------------------------------------------------- not JSON


def _valid_text() -> str:
    return json.dumps(valid_request("patient-view"))


NOT_JSON = {
    "garbage bytes": b"\x00\x01\x02\xff\xfe garbage \x7f",
    "invalid UTF-8 in a string": b'{"hook": "patient-view", "x": "\xc3\x28"}',
    "UTF-16": json.dumps({"hook": "patient-view"}).encode("utf-16"),
    "truncated JSON": _valid_text()[: len(_valid_text()) // 2],
    "empty body": b"",
    "only whitespace": b" \n\t ",
    "NaN literal": '{"hook": "patient-view", "hookInstance": NaN}',
    "Infinity literal": '{"hook": "patient-view", "prefetch": {"n": Infinity}}',
    "-Infinity literal": "[-Infinity]",
    "a float beyond double": '{"hook": "patient-view", "n": 1e999}',
    "an integer of 5000 digits": '{"n": ' + "9" * 5000 + "}",
    "single-quoted": "{'hook': 'patient-view'}",
    "trailing garbage": '{"hook": "patient-view"} trailing',
    "a comment": '{"hook": "patient-view" /* hi */}',
    "two documents": '{"hook": "patient-view"}\n{"hook": "order-sign"}',
    "unterminated string": '{"hook": "patient-view',
    "trailing comma": '{"hook": "patient-view",}',
    "a lone closing bracket": "]",
    "an XML document": '<?xml version="1.0"?><hook>patient-view</hook>',
}


@pytest.mark.parametrize("url", URLS + FEEDBACK_URLS)
@pytest.mark.parametrize("name", list(NOT_JSON))
def test_a_body_that_is_not_json_is_400_invalid_json(client, url, name):
    if url in URLS and name in SKIPPED_UNREAD:
        # A hook request is decoded keeping only the fields read (fhir/decode.py): a number
        # out of range in a field nobody reads is skipped, not judged; the body is still
        # refused, for what it lacks.
        assert_refused(post_raw(client, url, NOT_JSON[name]), 400)
        return
    assert_refused(post_raw(client, url, NOT_JSON[name]), 400, "invalid_json")


# Well-formed JSON whose only fault is a number out of range in a field that is not read.
SKIPPED_UNREAD = {"a float beyond double", "an integer of 5000 digits"}


def test_a_number_out_of_range_in_an_element_read_is_400_invalid_json(client):
    request = valid_request("patient-view")
    text = json.dumps(request).replace('"resourceType": "Patient"', '"gender": 1e999, "resourceType": "Patient"', 1)
    assert_refused(post_raw(client, PATIENT_VIEW, text), 400, "invalid_json")


NOT_AN_OBJECT = {
    "a string": "patient-view",
    "an array": [valid_request("patient-view")],
    "an empty array": [],
    "a number": 42,
    "a float": 4.2,
    "true": True,
    "null": None,
}


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("name", list(NOT_AN_OBJECT))
def test_a_json_value_that_is_not_an_object_is_400_for_a_hook_call(client, url, name):
    body = assert_refused(post_raw(client, url, json.dumps(NOT_AN_OBJECT[name])), 400, "invalid_request")
    assert "JSON object" in body["detail"]


@pytest.mark.parametrize("url", FEEDBACK_URLS)
@pytest.mark.parametrize("name", list(NOT_AN_OBJECT))
def test_a_json_value_that_is_not_an_object_is_400_for_feedback(client, url, name):
    body = assert_refused(post_raw(client, url, json.dumps(NOT_AN_OBJECT[name])), 400, "invalid_feedback")
    assert "JSON object" in body["detail"]


# ------------------------------------------------------------------------- content type


@pytest.mark.parametrize("url", URLS + FEEDBACK_URLS)
@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "text/json-ish",
        "application/jsonp",
        "application/octet-stream",
    ],
)
def test_a_body_not_declared_as_json_is_415(client, url, content_type):
    body = json.dumps(valid_request("patient-view") if "feedback" not in url else valid_feedback())
    assert_refused(post_raw(client, url, body, content_type=content_type), 415, "unsupported_media_type")


def test_a_form_post_is_415(client):
    assert_refused(client.post(PATIENT_VIEW, data={"hook": "patient-view"}), 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "application/fhir+json", "APPLICATION/JSON"]
)
def test_json_media_types_with_parameters_or_suffix_are_accepted(client, content_type):
    response = post_raw(client, PATIENT_VIEW, json.dumps(valid_request("patient-view")), content_type=content_type)
    assert response.status_code == 200 and response.get_json()["cards"]


def test_a_utf8_byte_order_mark_is_tolerated(client):
    response = post_raw(client, PATIENT_VIEW, b"\xef\xbb\xbf" + json.dumps(valid_request("patient-view")).encode())
    assert response.status_code == 200


# ------------------------------------------------------------------------- nesting and size of values


@pytest.mark.parametrize("url", URLS + FEEDBACK_URLS)
@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "[{" + '"a":[{' * 50_000 + "}]" * 50_000 + "}]",
    ],
    ids=["open-arrays", "closed-arrays", "objects", "mixed"],
)
def test_deeply_nested_json_is_400_not_a_crash(client, url, text):
    body = assert_refused(post_raw(client, url, text), 400, "invalid_json")
    assert "nested too deeply" in body["detail"]


def test_deep_nesting_inside_a_valid_request_is_400(client):
    """In an element the record reads or in one it skips (the decoder's skipping is bounded
    too, fhir/decode.py): refused, never a crash."""
    request = valid_request("patient-view")
    deep = "[" * 5000 + "]" * 5000
    for element in ("gender", "x"):
        text = json.dumps(request).replace(
            '"resourceType": "Patient"', f'"{element}": {deep}, "resourceType": "Patient"', 1
        )
        body = assert_refused(post_raw(client, PATIENT_VIEW, text), 400, "invalid_json")
        assert "nested too deeply" in body["detail"]


def test_a_moderately_deep_extension_in_a_resource_is_not_a_crash(client):
    """300 levels of nested extensions parse, then fail FHIR validation: the Condition
    is unreadable, the call answers."""
    request = valid_request("patient-view")
    extension = {"url": "https://ehr.example.org/x", "valueString": "v"}
    for _ in range(300):
        extension = {"url": "https://ehr.example.org/x", "extension": [extension]}
    conditions = request["prefetch"]["conditions"]["entry"]
    conditions[0]["resource"]["extension"] = [extension]
    response = post_raw(client, PATIENT_VIEW, json.dumps(request))
    assert response.status_code == 200
    assert_no_leak(response)


@pytest.mark.parametrize("url", URLS + FEEDBACK_URLS)
def test_a_huge_top_level_array_is_400(client, url):
    assert_refused(post_raw(client, url, json.dumps([0] * 200_000)), 400)


def test_a_huge_array_of_junk_entries_in_a_prefetch_bundle_still_answers(client):
    request = valid_request("patient-view")
    junk = [None, 1, "x", [], {}, {"resource": 5}, {"resource": {"resourceType": 7}}, {"resource": {}}]
    request["prefetch"]["observations"]["entry"] = junk * 10_000
    response = post_raw(client, PATIENT_VIEW, json.dumps(request))
    assert response.status_code == 200
    assert response.get_json()["cards"], "the HFS/MVD card still fires from the readable data"


def test_a_huge_draft_order_bundle_of_junk_is_400(client):
    request = valid_request("order-sign")
    request["context"]["draftOrders"]["entry"] = [{"resource": "x"}] * 50_000
    body = assert_refused(post_raw(client, ORDER_SIGN, json.dumps(request)), 400, "invalid_request")
    assert "context.draftOrders.entry[0]" in body["detail"]


def test_a_huge_string_value_is_not_echoed(client):
    request = valid_request("patient-view")
    request["hook"] = "H" * 500_000
    body = assert_refused(post_raw(client, PATIENT_VIEW, json.dumps(request)), 400, "invalid_request")
    assert len(body["detail"]) < 300


# ------------------------------------------------------------------------- routes and methods


@pytest.mark.parametrize(
    "path",
    [
        "/cds-services/no-such-service",
        "/cds-services/no-such-service/feedback",
        "/cds-services/" + "x" * 5000,
        "/cds-services/%00%ff",
        "/cds-services/hfs-outcomes-patient-view%2F..%2Fadmin",
    ],
)
def test_an_unknown_service_is_404(client, path):
    response = post_raw(client, path, json.dumps(valid_request("patient-view")))
    assert_refused(response, 404)


@pytest.mark.parametrize("path", ["/", "/admin", "/cds-services/a/b/c", "/cds-services/hfs-outcomes-patient-view/x"])
def test_an_unknown_path_is_404_json(client, path):
    assert_refused(client.get(path), 404, "not_found")


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("url", URLS + FEEDBACK_URLS)
def test_another_method_on_a_post_route_is_405_json(client, url, method):
    response = client.open(url, method=method, json={})
    body = assert_refused(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"] and body["detail"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_discovery_is_get_only(client, method):
    assert_refused(client.open("/cds-services", method=method, json={}), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("service_hook", "sent_hook"),
    [
        (service_hook, sent_hook)
        for service_hook in SERVICES
        for sent_hook in [*SERVICES, "medication-prescribe", "appointment-book", "Patient-View"]
        if sent_hook != service_hook
    ],
)
def test_a_request_for_another_hook_is_400_naming_the_hook_the_service_answers(client, service_hook, sent_hook):
    request = valid_request(sent_hook if sent_hook in SERVICES else "order-sign")
    request["hook"] = sent_hook
    body = assert_refused(
        post_raw(client, f"/cds-services/{SERVICES[service_hook]}", json.dumps(request)), 400, "invalid_request"
    )
    assert f"'{service_hook}' hook" in body["detail"]


# ------------------------------------------------------------------------- the request's own fields


def drop(path: str):
    def change(request):
        *parents, last = path.split(".")
        target = request
        for p in parents:
            target = target[p]
        del target[last]

    return change


def put(path: str, value):
    def change(request):
        *parents, last = path.split(".")
        target = request
        for p in parents:
            target = target[p]
        target[last] = copy.deepcopy(value)

    return change


def applies(hooks: tuple[str, ...], change, mentions: str):
    return hooks, change, mentions


ALL = tuple(SERVICES)
ORDERS = ("order-select", "order-sign")
INVALID_FIELDS = {
    "hook missing": applies(ALL, drop("hook"), "'hook'"),
    "hook a number": applies(ALL, put("hook", 7), "'hook'"),
    "hook empty": applies(ALL, put("hook", ""), "'hook'"),
    "hookInstance missing": applies(ALL, drop("hookInstance"), "'hookInstance'"),
    "hookInstance not a UUID": applies(ALL, put("hookInstance", "not-a-uuid"), "'hookInstance'"),
    "hookInstance a number": applies(ALL, put("hookInstance", 12345), "'hookInstance'"),
    "fhirServer a number": applies(ALL, put("fhirServer", 443), "'fhirServer'"),
    "fhirServer not http": applies(ALL, put("fhirServer", "ftp://ehr.example.org/fhir"), "'fhirServer'"),
    "fhirServer with credentials": applies(ALL, put("fhirServer", "https://u:p@ehr.example.org/fhir"), "'fhirServer'"),
    "fhirServer with a query": applies(ALL, put("fhirServer", "https://ehr.example.org/fhir?x=1"), "'fhirServer'"),
    "fhirServer relative": applies(ALL, put("fhirServer", "/fhir"), "'fhirServer'"),
    "fhirServer malformed IPv6": applies(ALL, put("fhirServer", "http://[::1/fhir"), "'fhirServer'"),
    "fhirServer bad port": applies(ALL, put("fhirServer", "http://ehr.example.org:99999/fhir"), "'fhirServer'"),
    "fhirServer with spaces": applies(ALL, put("fhirServer", "http://ehr example.org/fhir"), "'fhirServer'"),
    "fhirServer NFKC host": applies(ALL, put("fhirServer", "http://ehr\u2100example.org/"), "'fhirServer'"),
    "fhirServer huge": applies(ALL, put("fhirServer", "https://e.org/" + "a" * 10_000), "'fhirServer'"),
    "fhirAuthorization not an object": applies(ALL, put("fhirAuthorization", "Bearer x"), "'fhirAuthorization'"),
    "fhirAuthorization without fhirServer": applies(ALL, drop("fhirServer"), "'fhirServer'"),
    "access_token missing": applies(ALL, drop("fhirAuthorization.access_token"), "access_token"),
    "access_token a number": applies(ALL, put("fhirAuthorization.access_token", 5), "access_token"),
    "token_type not Bearer": applies(ALL, put("fhirAuthorization.token_type", "MAC"), "token_type"),
    "expires_in a string": applies(ALL, put("fhirAuthorization.expires_in", "300"), "expires_in"),
    "scope a list": applies(ALL, put("fhirAuthorization.scope", ["patient/*.read"]), "scope"),
    "context missing": applies(ALL, drop("context"), "'context'"),
    "context null": applies(ALL, put("context", None), "'context'"),
    "context a string": applies(ALL, put("context", "patientId=1"), "'context'"),
    "context an array": applies(ALL, put("context", []), "'context'"),
    "userId missing": applies(ALL, drop("context.userId"), "context.userId"),
    "userId a number": applies(ALL, put("context.userId", 17), "context.userId"),
    "userId without an id": applies(ALL, put("context.userId", "Practitioner"), "context.userId"),
    "userId of a device": applies(ALL, put("context.userId", "Device/d1"), "context.userId"),
    "userId with a slash in the id": applies(ALL, put("context.userId", "Practitioner/a/b"), "context.userId"),
    "patientId missing": applies(ALL, drop("context.patientId"), "context.patientId"),
    "patientId a number": applies(ALL, put("context.patientId", 5521), "context.patientId"),
    "patientId an object": applies(ALL, put("context.patientId", {"id": "x"}), "context.patientId"),
    "patientId empty": applies(ALL, put("context.patientId", ""), "context.patientId"),
    "patientId with a space": applies(ALL, put("context.patientId", "pt 1"), "context.patientId"),
    "patientId a reference": applies(ALL, put("context.patientId", "Patient/pt-1"), "context.patientId"),
    "patientId too long": applies(ALL, put("context.patientId", "p" * 65), "context.patientId"),
    "encounterId a number": applies(ALL, put("context.encounterId", 3), "context.encounterId"),
    "encounterId with a slash": applies(ALL, put("context.encounterId", "Encounter/e1"), "context.encounterId"),
    "a patient ordering": applies(ORDERS, put("context.userId", "Patient/pt-1"), "context.userId"),
    "draftOrders missing": applies(ORDERS, drop("context.draftOrders"), "context.draftOrders"),
    "draftOrders not a Bundle": applies(
        ORDERS, put("context.draftOrders", {"resourceType": "ServiceRequest"}), "context.draftOrders"
    ),
    "draftOrders an array": applies(ORDERS, put("context.draftOrders", []), "context.draftOrders"),
    "draftOrders entry an object": applies(ORDERS, put("context.draftOrders.entry", {}), "context.draftOrders"),
    "draftOrders entry without a resource": applies(
        ORDERS, put("context.draftOrders.entry", [{"fullUrl": "x"}]), "context.draftOrders.entry[0]"
    ),
    "draftOrders resource without a type": applies(
        ORDERS, put("context.draftOrders.entry", [{"resource": {"id": 1}}]), "context.draftOrders.entry[0]"
    ),
    "selections missing": applies(("order-select",), drop("context.selections"), "context.selections"),
    "selections empty": applies(("order-select",), put("context.selections", []), "context.selections"),
    "selections a string": applies(
        ("order-select",), put("context.selections", "ServiceRequest/sr-1"), "context.selections"
    ),
    "selections with a number": applies(("order-select",), put("context.selections", [1]), "context.selections"),
    "selections naming no draft order": applies(
        ("order-select",), put("context.selections", ["ServiceRequest/zz"]), "context.selections[0]"
    ),
    "prefetch an array": applies(ALL, put("prefetch", []), "'prefetch'"),
    "prefetch a string": applies(ALL, put("prefetch", "all"), "'prefetch'"),
    "prefetch key a string": applies(ALL, put("prefetch.conditions", "Condition?patient=1"), "prefetch 'conditions'"),
    "prefetch key an array": applies(
        ALL, put("prefetch.conditions", [{"resourceType": "Condition"}]), "prefetch 'conditions'"
    ),
    "prefetch key a number": applies(ALL, put("prefetch.observations", 0), "prefetch 'observations'"),
    "extension an array": applies(ALL, put("extension", []), "'extension'"),
}


def field_cases():
    return [
        pytest.param(hook, name, id=f"{hook}-{name.replace(' ', '_')}")
        for name, (hooks, _, _) in INVALID_FIELDS.items()
        for hook in hooks
    ]


@pytest.mark.parametrize(("hook", "name"), field_cases())
def test_an_invalid_request_field_is_400_naming_the_field(client, hook, name):
    _, change, mentions = INVALID_FIELDS[name]
    request = valid_request(hook)
    change(request)
    body = assert_refused(
        post_raw(client, f"/cds-services/{SERVICES[hook]}", json.dumps(request)), 400, "invalid_request"
    )
    assert mentions in body["detail"], body["detail"]


@pytest.mark.parametrize("hook", ALL)
def test_the_valid_request_the_matrix_starts_from_is_answered(client, hook):
    response = post_raw(client, f"/cds-services/{SERVICES[hook]}", json.dumps(valid_request(hook)))
    assert response.status_code == 200
    assert response.get_json()["cards"]


def test_a_patient_id_that_is_not_a_fhir_id_is_not_echoed(client):
    request = valid_request("patient-view")
    request["context"]["patientId"] = "<script>alert(1)</script>"
    body = assert_refused(post_raw(client, PATIENT_VIEW, json.dumps(request)), 400)
    assert "script" not in body["detail"]


def test_a_hostile_hook_name_is_quoted_short_and_printable(client):
    request = valid_request("patient-view")
    request["hook"] = "x\u0000\u001b[31m\n" + "<img src=x onerror=alert(1)>" * 10
    body = assert_refused(post_raw(client, PATIENT_VIEW, json.dumps(request)), 400)
    assert "\u0000" not in body["detail"] and "\n" not in body["detail"] and "\u001b" not in body["detail"]
    assert len(body["detail"]) < 200


# ------------------------------------------------------------------------- broken FHIR data in a valid request

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def hfs_condition(**overrides) -> dict:
    resource = {
        "resourceType": "Condition",
        "id": "hfs-x",
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "code": {"coding": [{"system": ICD10CM, "code": "G51.31"}]},
        "onsetDateTime": "2019-03-01",
    }
    resource.update(overrides)
    return resource


BROKEN_RESOURCES = {
    "Condition with code 5": ("conditions", {"resourceType": "Condition", "id": "c5", "code": 5}),
    "Condition onset 'yesterday'": ("conditions", hfs_condition(onsetDateTime="yesterday")),
    "HFS Condition with clinicalStatus a string": ("conditions", hfs_condition(clinicalStatus="active")),
    "HFS Condition with code a list": ("conditions", hfs_condition(code=[{"system": ICD10CM, "code": "G51.31"}])),
    "HFS Condition with coding an object": ("conditions", hfs_condition(code={"coding": {"code": "G51.31"}})),
    "HFS Condition with the code a number": (
        "conditions",
        hfs_condition(code={"coding": [{"system": ICD10CM, "code": 51.31}]}),
    ),
    "HFS Condition with subject a string": ("conditions", hfs_condition(subject=f"Patient/{PATIENT_ID}")),
    "HFS Condition with an unknown element": ("conditions", hfs_condition(severityScore=9)),
    "Condition with a resourceType in lower case": ("conditions", {**hfs_condition(), "resourceType": "condition"}),
    "Procedure with status 5": (
        "procedures",
        {"resourceType": "Procedure", "id": "p5", "status": 5, "code": {"coding": [{"code": "00NM0ZZ"}]}},
    ),
    "MVD Procedure with performedPeriod a string": (
        "procedures",
        {
            "resourceType": "Procedure",
            "id": "p6",
            "status": "completed",
            "performedPeriod": "2026-01-12",
            "code": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "00NM0ZZ"}]},
        },
    ),
    "Observation with valueQuantity a number": (
        "observations",
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "valueQuantity": 7,
            "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        },
    ),
    "Observation with status a list": (
        "observations",
        {
            "resourceType": "Observation",
            "id": "o2",
            "status": ["final"],
            "valueInteger": 3,
            "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        },
    ),
    "MedicationRequest with the medication a string": (
        "medicationRequests",
        {
            "resourceType": "MedicationRequest",
            "id": "m1",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": "carbamazepine",
        },
    ),
    "MedicationStatement with a huge text": (
        "medicationStatements",
        {
            "resourceType": "MedicationStatement",
            "id": "m2",
            "status": "active",
            "medicationCodeableConcept": {"text": "carbamazepine " * 20_000},
        },
    ),
}


@pytest.mark.parametrize("hook", ALL)
@pytest.mark.parametrize("name", list(BROKEN_RESOURCES))
def test_an_invalid_fhir_resource_in_the_prefetch_is_not_a_refusal(client, hook, name):
    key, resource = BROKEN_RESOURCES[name]
    request = valid_request(hook)
    request["prefetch"][key]["entry"].append({"resource": copy.deepcopy(resource)})
    response = post_raw(client, f"/cds-services/{SERVICES[hook]}", json.dumps(request))
    assert response.status_code == 200, response.get_json()
    assert isinstance(response.get_json()["cards"], list)
    assert_no_leak(response)


@pytest.mark.parametrize(
    "patient",
    [
        {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": "last spring", "gender": "F"},
        {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": {"year": 1960}, "gender": ["female"]},
        {"resourceType": "Patient"},
        {"resourceType": "Bundle", "type": "searchset", "entry": "x"},
    ],
)
def test_a_broken_patient_resource_is_not_a_refusal(client, patient):
    request = valid_request("patient-view")
    request["prefetch"]["patient"] = patient
    response = post_raw(client, PATIENT_VIEW, json.dumps(request))
    assert response.status_code == 200 and response.get_json()["cards"]
    assert_no_leak(response)


def unreadable_section(card: dict) -> str:
    assert "### Recorded but unreadable" in card["detail"], card["detail"]
    section = card["detail"].split("### Recorded but unreadable", 1)[1]
    return section.split("\n### ", 1)[0].split("\n**Strength of evidence:**", 1)[0]


def yesterday() -> str:
    return (datetime.now(UTC).date() - timedelta(days=1)).isoformat()


def pain_observation(**overrides) -> dict:
    resource = {
        "resourceType": "Observation",
        "id": "pain-x",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "72514-3"}]},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "effectiveDateTime": yesterday(),
        "valueQuantity": {"value": 7, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"},
    }
    resource.update(overrides)
    return resource


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (pain_observation(valueQuantity={"value": "seven", "unit": "{score}"}), "not valid FHIR R4"),
        (
            pain_observation(
                valueQuantity={"value": 7, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
            ),
            "kg",
        ),
        (
            pain_observation(
                valueQuantity={"value": 70, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}
            ),
            "outside the valid range",
        ),
        (pain_observation(effectiveDateTime="yesterday"), "not valid FHIR R4"),
    ],
    ids=["value-a-string", "unit-kg", "out-of-range", "date-yesterday"],
)
def test_an_mwa_order_with_an_unreadable_pain_score_says_the_pain_score_was_unreadable(client, broken, reason):
    c = Chart(patient_id=PATIENT_ID).condition(BONE_METASTASIS, onset="2026-01-01").order(MWA_THORACIC)
    c.resources.append(broken)
    response = post_raw(client, ORDER_SIGN, json.dumps(valid_request("order-sign", c)))

    assert response.status_code == 200
    (card,) = [c for c in response.get_json()["cards"] if c["summary"].startswith("MWA + augmentation")]
    section = unreadable_section(card)
    assert "**Latest pain score (0-10)**: recorded but unreadable" in section and reason in section
    assert "Latest pain score (0-10)**: 7" not in card["detail"]
    assert_no_leak(response)


def test_a_newer_unreadable_pain_score_is_reported_next_to_the_readable_one_used(client):
    c = Chart(patient_id=PATIENT_ID).condition(BONE_METASTASIS, onset="2026-01-01")
    c.resources.append(
        pain_observation(id="pain-ok", effectiveDateTime=(datetime.now(UTC).date() - timedelta(days=3)).isoformat())
    )
    c.resources.append(pain_observation(id="pain-bad", valueQuantity={"value": [9], "unit": "{score}"}))
    # issue 15: opening the chart, firing depends on the score and the newest could not be read: no card D
    response = post_raw(client, PATIENT_VIEW, json.dumps(valid_request("patient-view", c)))
    assert response.status_code == 200
    assert not [c for c in response.get_json()["cards"] if "metastasis" in c["summary"]]
    # at ordering the card fires on the order and says which score it used
    response = post_raw(client, ORDER_SIGN, json.dumps(valid_request("order-sign", c.order(MWA_THORACIC))))
    assert response.status_code == 200
    (card,) = [c for c in response.get_json()["cards"] if c["summary"].startswith("MWA + augmentation")]
    assert card["summary"].endswith("newest pain score unreadable")
    used = (datetime.now(UTC).date() - timedelta(days=3)).isoformat()
    assert f"**Latest pain score (0-10)**: 7/10, recorded {used}; a newer value from " in card["detail"]
    assert f"could not be read; the value from {used} was used" in card["detail"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (
            {"valueQuantity": {"value": "long", "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}},
            "not valid FHIR R4",
        ),
        ({"valueQuantity": {"value": 45, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}, "kg"),
        (
            {"valueQuantity": {"value": 99999, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}},
            "outside the valid range",
        ),
        ({"valueString": "forty-five minutes"}, "quantity"),
    ],
    ids=["value-a-string", "unit-kg", "out-of-range", "free-text"],
)
def test_an_rfa_with_an_unreadable_operation_time_says_the_operation_time_was_unreadable(client, value, reason):
    """The RFA has a performed date but no period, so the operation time must come from an
    operation-time Observation of that day, and that one cannot be read."""
    rfa_day = (datetime.now(UTC).date() - timedelta(days=95)).isoformat()
    c = Chart(patient_id=PATIENT_ID).hfs(onset="2019-03-01").rfa(f"{rfa_day}T08:00:00Z")
    c.local_observation("operation-time", rfa_day, **value)
    response = post_raw(client, PATIENT_VIEW, json.dumps(valid_request("patient-view", c)))

    assert response.status_code == 200
    (card,) = [c for c in response.get_json()["cards"] if c["summary"].startswith("RFA ")]
    section = unreadable_section(card)
    assert "**Operation time of the RFA (X1)**: recorded but unreadable" in section and reason in section
    assert_no_leak(response)


# ------------------------------------------------------------------------- feedback


def entry(**overrides) -> dict:
    """One valid feedback entry; an override of `...` removes that member."""
    base = {
        "card": str(uuid.uuid4()),
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "s-1"}],
        "outcomeTimestamp": "2026-11-02T10:05:31Z",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


INVALID_FEEDBACK = {
    "no feedback member": {"feedbacks": []},
    "feedback an object": {"feedback": entry()},
    "feedback empty": {"feedback": []},
    "feedback a string": {"feedback": "accepted"},
    "entry a string": {"feedback": ["accepted"]},
    "entry null": {"feedback": [None]},
    "card missing": {"feedback": [entry(card=...)]},
    "card not a uuid": {"feedback": [entry(card="card-1")]},
    "card a number": {"feedback": [entry(card=1)]},
    "outcome missing": {"feedback": [entry(outcome=...)]},
    "outcome unknown": {"feedback": [entry(outcome="ignored")]},
    "outcome a list": {"feedback": [entry(outcome=["accepted"])]},
    "timestamp missing": {"feedback": [entry(outcomeTimestamp=...)]},
    "timestamp without a zone": {"feedback": [entry(outcomeTimestamp="2026-11-02T10:05:31")]},
    "timestamp a date": {"feedback": [entry(outcomeTimestamp="2026-11-02")]},
    "timestamp impossible": {"feedback": [entry(outcomeTimestamp="2026-02-30T10:05:31Z")]},
    "timestamp a number": {"feedback": [entry(outcomeTimestamp=1730000000)]},
    "accepted without suggestions": {"feedback": [entry(acceptedSuggestions=...)]},
    "suggestions empty": {"feedback": [entry(acceptedSuggestions=[])]},
    "suggestion without id": {"feedback": [entry(acceptedSuggestions=[{}])]},
    "suggestion id a number": {"feedback": [entry(acceptedSuggestions=[{"id": 5}])]},
    "accepted with an override reason": {"feedback": [entry(overrideReason={"userComment": "x"})]},
    "overridden with suggestions": {"feedback": [entry(outcome="overridden")]},
    "override reason a string": {
        "feedback": [entry(outcome="overridden", acceptedSuggestions=..., overrideReason="not relevant")]
    },
    "override coding without system": {
        "feedback": [entry(outcome="overridden", acceptedSuggestions=..., overrideReason={"reason": {"code": "x"}})]
    },
    "comment with control characters": {
        "feedback": [entry(outcome="overridden", acceptedSuggestions=..., overrideReason={"userComment": "a\u0000b"})]
    },
    "comment too long": {
        "feedback": [entry(outcome="overridden", acceptedSuggestions=..., overrideReason={"userComment": "x" * 5000})]
    },
    "unknown member": {"feedback": [entry(rating=5)]},
    "too many entries": {"feedback": [entry() for _ in range(101)]},
    "a second entry broken": {"feedback": [entry(), entry(card="nope")]},
}


@pytest.mark.parametrize("url", FEEDBACK_URLS)
@pytest.mark.parametrize("name", list(INVALID_FEEDBACK))
def test_invalid_feedback_is_400(client, url, name):
    assert_refused(post_raw(client, url, json.dumps(INVALID_FEEDBACK[name])), 400, "invalid_feedback")


@pytest.mark.parametrize("url", FEEDBACK_URLS)
def test_valid_feedback_is_accepted(client, url):
    response = post_raw(client, url, json.dumps({"feedback": [entry(), *valid_feedback()["feedback"]]}))
    assert response.status_code == 200 and response.get_json() == {"accepted": 2}


# ------------------------------------------------------------------------- anything at all

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
REQUEST_KEYS = st.sampled_from(
    [
        "hook",
        "hookInstance",
        "fhirServer",
        "fhirAuthorization",
        "context",
        "prefetch",
        "extension",
        "feedback",
        "card",
        "outcome",
    ]
)


def assert_answered(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = json.loads(response.get_data(as_text=True))
    if response.status_code >= 400:
        assert error_body.is_outcome(body), body
    assert_no_leak(response)


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    url=st.sampled_from(URLS + FEEDBACK_URLS),
    value=JSON_VALUES | st.dictionaries(REQUEST_KEYS, JSON_VALUES, max_size=6),
)
def test_any_json_value_posted_to_any_endpoint_gets_a_json_answer_below_500(client, url, value):
    assert_answered(post_raw(client, url, json.dumps(value)))


def paths_of(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths_of(child, (*prefix, index))


def replaced(value, path, new):
    value = copy.deepcopy(value)
    target = value
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return value


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(hook=st.sampled_from(ALL), data=st.data(), new=JSON_VALUES)
def test_a_valid_request_with_any_one_part_replaced_by_any_json_gets_a_json_answer_below_500(client, hook, data, new):
    request = valid_request(hook)
    path = data.draw(st.sampled_from([p for p in paths_of(request) if p]))
    response = post_raw(client, f"/cds-services/{SERVICES[hook]}", json.dumps(replaced(request, path, new)))
    assert_answered(response)


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), new=JSON_VALUES)
def test_valid_feedback_with_any_one_part_replaced_gets_a_json_answer_below_500(client, data, new):
    feedback = {"feedback": [entry(), valid_feedback()["feedback"][0]]}
    path = data.draw(st.sampled_from([p for p in paths_of(feedback) if p]))
    response = post_raw(client, FEEDBACK_URLS[0], json.dumps(replaced(feedback, path, new)))
    assert_answered(response)


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(url=st.sampled_from(URLS + FEEDBACK_URLS), data=st.binary(max_size=200))
def test_any_bytes_posted_as_json_get_a_json_answer_below_500(client, url, data):
    assert_answered(post_raw(client, url, data))
