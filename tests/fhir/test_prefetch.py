"""Prefetch: what the client sent is used, what it did not send is fetched, within one budget."""

from __future__ import annotations

import json
import logging
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from support.fhir import searchset, validated_request
from werkzeug import Response

from cds_service.config import DEFAULT_CARDS_DIR, Settings
from cds_service.content.services import PrefetchTemplate, ServiceDefinition, load_services
from cds_service.errors import ApiError
from cds_service.fhir.client import FhirAccess
from cds_service.fhir.prefetch import PrefetchResult, TemplateError, render_template, resolve

TOKEN = "at-0f1e2d3c4b5a-secret"
PATIENT_ID = "hfs-pat-8812"
FHIR = "application/fhir+json"
SERVICES = load_services(DEFAULT_CARDS_DIR / "services.toml")
PATIENT_VIEW = SERVICES["hfs-outcomes-patient-view"]
SEARCH_KEYS = ("conditions", "procedures", "observations", "medicationRequests", "medicationStatements")


@pytest.fixture
def access(fhir_stub):
    made = []
    # The stub on the allowlist: the reasons of its faults are then told to the client.
    allowed = (fhir_stub.url_for("/").rstrip("/"),)

    def make(**overrides) -> FhirAccess:
        settings = {"fhir_time_budget_s": 2.0, "fhir_max_workers": 6, "fhir_server_allowlist": allowed}
        fhir = FhirAccess(Settings(**{**settings, **overrides}))
        made.append(fhir)
        return fhir

    yield make
    for fhir in made:
        fhir.close()


@pytest.fixture
def hold(fhir_stub):
    event = threading.Event()
    yield event
    event.set()


def service(*templates: tuple[str, str, bool]) -> ServiceDefinition:
    return ServiceDefinition(
        id="svc",
        hook="patient-view",
        title="t",
        description="d",
        prefetch=tuple(PrefetchTemplate(k, q, r) for k, q, r in templates),
    )


def base(server) -> str:
    return server.url_for("/fhir").rstrip("/")


def resource(kind: str, n: int = 1) -> dict:
    return {"resourceType": kind, "id": f"{kind.lower()}-{n}", "subject": {"reference": f"Patient/{PATIENT_ID}"}}


def patient() -> dict:
    return {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": "1966-02-03"}


def full_prefetch() -> dict:
    return {
        "patient": patient(),
        **{
            key: searchset(resource(kind))
            for key, kind in zip(
                SEARCH_KEYS, ("Condition", "Procedure", "Observation", "MedicationRequest", "MedicationStatement")
            )
        },
    }


def serve_everything(
    server, delay: float = 0.0, hold: threading.Event | None = None, statuses: dict[str, int] | None = None
) -> None:
    """A FHIR server holding one resource of each type for the patient; `statuses` makes
    the searches of some resource types fail with that status."""

    def answer(request):
        if delay:
            (hold or threading.Event()).wait(delay)
        kind = request.path.split("/")[2]
        if kind != "Patient" and request.args.get("patient") != PATIENT_ID:  # code filters may follow
            return Response("{}", status=400, content_type=FHIR)
        if (statuses or {}).get(kind):
            return Response("failed", status=statuses[kind])
        body = patient() if kind == "Patient" else searchset(resource(kind))
        return Response(json.dumps(body), content_type=FHIR)

    server.expect_request(f"/fhir/Patient/{PATIENT_ID}").respond_with_handler(answer)
    for kind in ("Condition", "Procedure", "Observation", "MedicationRequest", "MedicationStatement"):
        server.expect_request(f"/fhir/{kind}").respond_with_handler(answer)


# -- render_template ----------------------------------------------------------------


def test_context_fields_are_substituted_in_a_read_path_and_in_a_query():
    context = {"patientId": "123", "encounterId": "enc-9"}
    assert render_template("Patient/{{context.patientId}}", context) == "Patient/123"
    assert (
        render_template("Encounter?patient={{context.patientId}}&_id={{ context.encounterId }}", context)
        == "Encounter?patient=123&_id=enc-9"
    )


@pytest.mark.parametrize(
    "user, token, value",
    [
        ("Practitioner/abc", "userPractitionerId", "abc"),
        ("PractitionerRole/role-7", "userPractitionerRoleId", "role-7"),
        ("Patient/p-1", "userPatientId", "p-1"),
        ("RelatedPerson/rp.2", "userRelatedPersonId", "rp.2"),
    ],
)
def test_user_tokens_take_the_id_of_the_user_of_that_type(user, token, value):
    assert render_template(f"X?who={{{{{token}}}}}", {"userId": user}) == f"X?who={value}"


@pytest.mark.parametrize(
    "user, token",
    [
        ("Practitioner/abc", "userPatientId"),
        ("Patient/p-1", "userPractitionerId"),
        ("PractitionerRole/r", "userPractitionerId"),
        ("abc", "userPractitionerId"),
        ("Practitioner/", "userPractitionerId"),
        (None, "userPractitionerId"),
    ],
)
def test_a_user_token_for_a_user_of_another_type_cannot_be_rendered(user, token):
    context = {} if user is None else {"userId": user}
    with pytest.raises(TemplateError):
        render_template(f"PractitionerRole?practitioner={{{{{token}}}}}", context)


def test_a_query_value_cannot_inject_a_parameter():
    rendered = render_template("Condition?patient={{context.patientId}}", {"patientId": "a&b=c#d"})
    assert rendered == "Condition?patient=a%26b%3Dc%23d"
    assert parse_qs(urlsplit(rendered).query) == {"patient": ["a&b=c#d"]}


@given(st.text(min_size=1).filter(lambda s: s.strip()))
@hyp_settings(max_examples=200, deadline=None)
def test_any_context_value_becomes_exactly_one_query_value(value):
    rendered = render_template("Condition?patient={{context.patientId}}&_count=50", {"patientId": value})
    parsed = parse_qs(urlsplit(rendered).query, keep_blank_values=True)
    assert parsed == {"patient": [value], "_count": ["50"]}


@pytest.mark.parametrize("value", ["..", ".", "../Observation", "x/y", "../../admin", "a\\b"])
def test_a_read_path_value_cannot_escape_its_segment(value):
    with pytest.raises(TemplateError, match="resource id"):
        render_template("Patient/{{context.patientId}}", {"patientId": value})


def test_a_read_path_value_is_encoded_as_one_segment():
    assert render_template("Patient/{{context.patientId}}", {"patientId": "a?b=c"}) == "Patient/a%3Fb%3Dc"


@pytest.mark.parametrize(
    "field_name, value",
    [
        ("selections", ["MedicationRequest/1"]),
        ("draftOrders", {"resourceType": "Bundle", "entry": []}),
        ("patientId", None),
        ("patientId", ""),
        ("patientId", "   "),
    ],
)
def test_non_primitive_or_empty_context_fields_cannot_be_rendered(field_name, value):
    with pytest.raises(TemplateError):
        render_template(f"X?v={{{{context.{field_name}}}}}", {field_name: value})


@pytest.mark.parametrize(
    "template",
    [
        "X?v={{context.draftOrders.id}}",
        "X?v={{context.missing}}",
        "X?v={{context.}}",
        "X?v={{patientId}}",
        "X?v={{context.patientId}",
        "X?v={context.patientId}}",
    ],
)
def test_unknown_nested_or_malformed_tokens_cannot_be_rendered(template):
    with pytest.raises(TemplateError):
        render_template(template, {"patientId": "1", "draftOrders": {"id": "b"}})


def test_numbers_and_booleans_are_rendered_as_in_json():
    assert render_template("X?a={{context.n}}&b={{context.flag}}", {"n": 42, "flag": True}) == "X?a=42&b=true"


def test_a_template_without_tokens_is_left_alone():
    assert (
        render_template("Medication?code=http://snomed.info/sct|123", {})
        == "Medication?code=http://snomed.info/sct|123"
    )


# -- what the client sent -----------------------------------------------------------


def test_a_fully_prefetched_request_uses_the_data_as_sent_and_fetches_nothing(fhir_stub, access):
    sent = full_prefetch()
    request = validated_request(
        context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN, prefetch=sent
    )
    result = resolve(PATIENT_VIEW, request, access())
    assert result == PrefetchResult(data=sent, unavailable={}, fetched=())
    assert all(result.data[key] is sent[key] for key in sent)
    assert fhir_stub.log == []


def test_a_fully_prefetched_request_needs_neither_a_fhir_server_nor_fhir_access():
    request = validated_request(context={"patientId": PATIENT_ID}, prefetch=full_prefetch())
    assert resolve(PATIENT_VIEW, request, None).data == full_prefetch()


def test_null_means_no_data_and_is_not_fetched_again(fhir_stub, access):
    sent = {**full_prefetch(), "conditions": None, "patient": None}
    request = validated_request(
        context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN, prefetch=sent
    )
    result = resolve(PATIENT_VIEW, request, access())
    assert result.data["conditions"] is None and result.data["patient"] is None
    assert result.fetched == () and fhir_stub.log == []


def test_a_required_key_sent_as_null_is_not_a_412():
    sent = {**full_prefetch(), "conditions": None, "procedures": None}
    result = resolve(PATIENT_VIEW, validated_request(context={"patientId": PATIENT_ID}, prefetch=sent), None)
    assert result.data["conditions"] is None and result.unavailable == {}


@pytest.mark.parametrize(
    "sent_value",
    [
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing"}]},
        [],
        "Bundle",
        {"entry": []},
        {"resourceType": None},
    ],
)
def test_an_operation_outcome_or_a_non_resource_is_fetched_instead(fhir_stub, access, sent_value):
    serve_everything(fhir_stub)
    sent = {**full_prefetch(), "conditions": sent_value}
    request = validated_request(
        context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN, prefetch=sent
    )
    result = resolve(PATIENT_VIEW, request, access())
    assert result.fetched == ("conditions",)
    assert result.data["conditions"]["entry"][0]["resource"]["resourceType"] == "Condition"
    ((req, _),) = fhir_stub.log
    assert req.path == "/fhir/Condition" and req.headers["Authorization"] == f"Bearer {TOKEN}"


def test_every_absent_key_is_fetched_with_the_bearer_token(fhir_stub, access):
    serve_everything(fhir_stub)
    request = validated_request(
        context={"patientId": PATIENT_ID, "userId": "Practitioner/doc-1"},
        fhir_server=base(fhir_stub) + "/",
        access_token=TOKEN,
    )
    result = resolve(PATIENT_VIEW, request, access())
    assert result.fetched == ("patient", *SEARCH_KEYS)
    assert result.unavailable == {} and result.incomplete == {}
    assert result.data["patient"] == patient()
    assert result.data["observations"]["entry"][0]["resource"]["resourceType"] == "Observation"
    assert len(fhir_stub.log) == 6
    assert {r.headers["Authorization"] for r, _ in fhir_stub.log} == {f"Bearer {TOKEN}"}


def test_without_an_access_token_the_fetch_carries_no_authorization(fhir_stub, access):
    serve_everything(fhir_stub)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=None)
    resolve(PATIENT_VIEW, request, access())
    assert fhir_stub.log and all("Authorization" not in r.headers for r, _ in fhir_stub.log)


# -- required and optional ----------------------------------------------------------


def test_a_required_key_neither_sent_nor_fetchable_is_412_naming_the_key():
    sent = {k: v for k, v in full_prefetch().items() if k != "procedures"}
    with pytest.raises(ApiError) as caught:
        resolve(PATIENT_VIEW, validated_request(context={"patientId": PATIENT_ID}, prefetch=sent), None)
    error = caught.value
    assert (error.status, error.error) == (412, "prefetch_unavailable")
    assert "procedures (Procedure search)" in error.detail and "no fhirServer" in error.detail
    assert "conditions" not in error.detail


def test_an_optional_key_that_cannot_be_had_is_recorded_and_the_call_goes_on():
    sent = {k: v for k, v in full_prefetch().items() if k not in ("observations", "patient")}
    result = resolve(PATIENT_VIEW, validated_request(context={"patientId": PATIENT_ID}, prefetch=sent), None)
    assert set(result.unavailable) == {"patient", "observations"}
    assert result.unavailable["observations"] == "not prefetched and no fhirServer was given to fetch it from"
    assert "observations" not in result.data and result.data["conditions"] == sent["conditions"]


@pytest.mark.parametrize("status", [401, 403, 404, 500])
def test_a_required_search_the_server_refuses_is_412_with_a_safe_reason(fhir_stub, access, caplog, status):
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": f"{TOKEN} {PATIENT_ID}"}],
        },
        status=status,
        content_type=FHIR,
    )
    sent = {k: v for k, v in full_prefetch().items() if k != "conditions"}
    request = validated_request(
        context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN, prefetch=sent
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ApiError) as caught:
        resolve(PATIENT_VIEW, request, access())
    assert caught.value.status == 412
    assert f"conditions (Condition search): FHIR server answered {status}" in caught.value.detail
    client_side_logs = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("werkzeug"))
    assert "prefetch conditions (Condition search) unavailable" in client_side_logs
    for text in (caught.value.detail, client_side_logs):
        assert TOKEN not in text and PATIENT_ID not in text and "127.0.0.1" not in text


def test_an_optional_key_the_server_fails_on_is_unavailable_and_the_rest_is_fetched(fhir_stub, access):
    serve_everything(fhir_stub, statuses={"Observation": 503})
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    result = resolve(PATIENT_VIEW, request, access())
    assert result.unavailable == {"observations": "FHIR server answered 503"}
    assert result.fetched == ("patient", "conditions", "procedures", "medicationRequests", "medicationStatements")


def test_a_patient_read_answered_404_is_no_data(fhir_stub, access):
    fhir_stub.expect_request(f"/fhir/Patient/{PATIENT_ID}").respond_with_data("", status=404)
    sent = {k: v for k, v in full_prefetch().items() if k != "patient"}
    request = validated_request(
        context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN, prefetch=sent
    )
    result = resolve(PATIENT_VIEW, request, access())
    assert result.data["patient"] is None
    assert result.fetched == ("patient",) and result.unavailable == {}


def test_a_template_that_cannot_be_rendered_makes_its_key_unavailable(fhir_stub, access):
    svc = service(
        ("draft", "MedicationRequest?_id={{context.draftOrders}}", False),
        ("sel", "MedicationRequest?_id={{context.selections}}", True),
    )
    request = validated_request(
        context={"patientId": "1", "selections": ["MedicationRequest/1"], "draftOrders": {"resourceType": "Bundle"}},
        fhir_server=base(fhir_stub),
        access_token=TOKEN,
    )
    with pytest.raises(ApiError) as caught:
        resolve(svc, request, access())
    assert (
        "sel (MedicationRequest search): cannot build the query: context.selections is not a primitive"
        in caught.value.detail
    )
    assert fhir_stub.log == []


def test_a_fhir_server_off_the_allowlist_is_not_contacted(fhir_stub, access):
    serve_everything(fhir_stub)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    with pytest.raises(ApiError) as caught:
        resolve(PATIENT_VIEW, request, access(fhir_server_allowlist=("https://ehr.example.org/fhir",)))
    assert "conditions (Condition search): fhirServer is not on this service's allowlist" in caught.value.detail
    assert fhir_stub.log == []


def test_a_fhir_server_that_is_not_http_is_refused():
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server="file:///etc", access_token=TOKEN)
    with pytest.raises(ApiError, match="not an http"):
        resolve(PATIENT_VIEW, request, FhirAccess(Settings()))


# -- time ---------------------------------------------------------------------------


def test_missing_keys_are_fetched_concurrently(fhir_stub, access, hold):
    serve_everything(fhir_stub, delay=0.5, hold=hold)
    sent = {"patient": patient(), "conditions": searchset()}
    request = validated_request(
        context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN, prefetch=sent
    )
    started = time.monotonic()
    result = resolve(PATIENT_VIEW, request, access())
    elapsed = time.monotonic() - started
    assert result.fetched == ("procedures", "observations", "medicationRequests", "medicationStatements")
    assert 0.5 <= elapsed < 1.0, elapsed


def test_a_server_slower_than_the_budget_ends_the_call_within_the_budget(fhir_stub, access, hold):
    serve_everything(fhir_stub, delay=5.0, hold=hold)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        resolve(PATIENT_VIEW, request, access(fhir_time_budget_s=0.6))
    elapsed = time.monotonic() - started
    assert caught.value.status == 412
    assert "within the time budget" in caught.value.detail
    assert elapsed < 0.6 + 0.25, elapsed


def test_the_budget_is_one_deadline_for_the_whole_call(fhir_stub, access, hold):
    """Pages fetched one after the other share the deadline: 3 pages of 0.3 s do not fit in 0.5 s."""

    def page(request):
        hold.wait(0.3)
        n = int(request.args.get("page", "1"))
        nxt = fhir_stub.url_for("/fhir/Condition") + f"?page={n + 1}" if n < 3 else None
        return Response(json.dumps(searchset(resource("Condition", n), next_url=nxt)), content_type=FHIR)

    fhir_stub.expect_request("/fhir/Condition").respond_with_handler(page)
    svc = service(("conditions", "Condition?patient={{context.patientId}}", True))
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    started = time.monotonic()
    with pytest.raises(ApiError, match="time budget"):
        resolve(svc, request, access(fhir_time_budget_s=0.5))
    assert time.monotonic() - started < 0.75


def test_an_explicit_deadline_from_the_caller_is_honoured(fhir_stub, access, hold):
    serve_everything(fhir_stub, delay=1.0, hold=hold)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    started = time.monotonic()
    with pytest.raises(ApiError):
        resolve(PATIENT_VIEW, request, access(fhir_time_budget_s=30), deadline=time.monotonic() + 0.3)
    assert time.monotonic() - started < 0.55


# -- paging -------------------------------------------------------------------------


def paged_conditions(server, pages: int) -> None:
    def page(request):
        n = int(request.args.get("page", "1"))
        nxt = server.url_for("/fhir/Condition") + f"?page={n + 1}" if n < pages else None
        return Response(
            json.dumps(searchset(resource("Condition", 2 * n - 1), resource("Condition", 2 * n), next_url=nxt)),
            content_type=FHIR,
        )

    server.expect_request("/fhir/Condition").respond_with_handler(page)


def conditions_only():
    return service(("conditions", "Condition?patient={{context.patientId}}", True))


def test_search_pages_are_followed_and_merged(fhir_stub, access):
    paged_conditions(fhir_stub, pages=3)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    result = resolve(conditions_only(), request, access())
    ids = [e["resource"]["id"] for e in result.data["conditions"]["entry"]]
    assert ids == [f"condition-{n}" for n in range(1, 7)]
    assert result.incomplete == {}
    assert [r.headers["Authorization"] for r, _ in fhir_stub.log] == [f"Bearer {TOKEN}"] * 3


def test_paging_is_bounded_by_max_pages_and_recorded_as_incomplete(fhir_stub, access):
    paged_conditions(fhir_stub, pages=50)
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    result = resolve(conditions_only(), request, access(fhir_max_pages=3))
    assert len(result.data["conditions"]["entry"]) == 6
    assert len(fhir_stub.log) == 3
    assert result.incomplete == {"conditions": "more than 3 pages; the rest was not read"}
    assert result.fetched == ("conditions",) and result.unavailable == {}


def test_a_next_link_to_another_server_is_not_followed_and_gets_no_token(fhir_stub, elsewhere_stub, access):
    elsewhere_stub.expect_request("/fhir/Condition").respond_with_json(
        searchset(resource("Condition", 99)), content_type=FHIR
    )
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(
        searchset(resource("Condition", 1), next_url=elsewhere_stub.url_for("/fhir/Condition?page=2")),
        content_type=FHIR,
    )
    request = validated_request(context={"patientId": PATIENT_ID}, fhir_server=base(fhir_stub), access_token=TOKEN)
    result = resolve(conditions_only(), request, access())
    assert [e["resource"]["id"] for e in result.data["conditions"]["entry"]] == ["condition-1"]
    assert result.incomplete == {"conditions": "next page link points outside the FHIR server; not followed"}
    assert elsewhere_stub.log == []


# -- cost ---------------------------------------------------------------------------


def test_resolving_a_fully_prefetched_request_is_cheap():
    big = searchset(*(resource("Observation", n) for n in range(1100)))
    sent = {**full_prefetch(), "observations": big}
    request = validated_request(context={"patientId": PATIENT_ID}, prefetch=sent)
    started = time.perf_counter()
    for _ in range(1000):
        resolve(PATIENT_VIEW, request, None)
    per_call_ms = (time.perf_counter() - started) * 1000 / 1000
    assert per_call_ms < 0.5, f"{per_call_ms:.3f} ms per call"


def test_gaps_name_missing_and_partly_retrieved_keys_for_the_cards():
    from cds_service.fhir.prefetch import PrefetchResult

    result = PrefetchResult(
        data={"observations": {"resourceType": "Bundle", "type": "searchset"}},
        unavailable={"medicationRequests": "FHIR server answered 500"},
        fetched=("observations", "medicationRequests"),
        incomplete={"observations": "page limit of 10 reached"},
    )
    assert result.gaps == {
        "observations": "only partly retrieved (page limit of 10 reached)",
        "medicationRequests": "FHIR server answered 500",
    }
