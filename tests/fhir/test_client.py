"""FhirClient against a scripted FHIR server: what a hostile or broken server can and cannot do."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time

import pytest
from support.fhir import condition, searchset
from werkzeug import Response

from cds_service.config import Settings
from cds_service.fhir.client import (
    FhirAccess,
    FhirClient,
    FhirNotFound,
    FhirUnavailable,
    check_fhir_server,
    is_under,
    new_session,
)

TOKEN = "tok-9f8e7d.6c5b4a-secret"
PATIENT_ID = "pat-4711"
FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def session():
    s = new_session(pool_size=8)
    yield s
    s.close()


@pytest.fixture
def hold(fhir_stub):
    """Slow handlers wait on this; set at teardown so the stub server can stop at once."""
    event = threading.Event()
    yield event
    event.set()


def base(server) -> str:
    return server.url_for("/fhir").rstrip("/")


def make_client(session, server, *, token=TOKEN, budget=2.0, max_pages=10, max_bytes=1024 * 1024):
    return FhirClient(session, base(server), token, time.monotonic() + budget, max_pages, max_response_bytes=max_bytes)


def patient() -> dict:
    return {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": "1970-01-01"}


def assert_safe(reason: str) -> None:
    assert TOKEN not in reason
    assert PATIENT_ID not in reason
    assert "http" not in reason


# -- the bearer token -------------------------------------------------------------


def test_a_read_sends_exactly_the_bearer_token_and_asks_for_fhir_json(session, fhir_stub):
    fhir_stub.expect_request(f"/fhir/Patient/{PATIENT_ID}").respond_with_json(patient(), content_type=FHIR)
    resource = make_client(session, fhir_stub).read(f"Patient/{PATIENT_ID}")
    assert resource == patient()
    ((request, _),) = fhir_stub.log
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == FHIR


def test_without_a_token_no_authorization_header_is_sent(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(
        searchset(condition(id="c1", patient=PATIENT_ID)), content_type=FHIR
    )
    make_client(session, fhir_stub, token=None).search(f"Condition?patient={PATIENT_ID}")
    ((request, _),) = fhir_stub.log
    assert "Authorization" not in request.headers
    assert request.args["patient"] == PATIENT_ID


@pytest.mark.parametrize("bad_token", ["abc\r\nX-Injected: 1", "tök-ən"])
def test_a_token_that_cannot_be_a_header_value_is_not_sent_at_all(session, fhir_stub, bad_token):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_json(patient(), content_type=FHIR)
    with pytest.raises(FhirUnavailable) as caught:
        make_client(session, fhir_stub, token=bad_token).read("Patient/p")
    assert bad_token not in caught.value.reason
    assert fhir_stub.log == []


def test_a_plain_application_json_answer_is_accepted(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_json(
        patient(), content_type="application/json; charset=utf-8"
    )
    assert make_client(session, fhir_stub).read("Patient/p")["resourceType"] == "Patient"


# -- error statuses ---------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 429, 500, 502, 503])
def test_an_error_status_makes_the_data_unavailable_with_the_status_as_reason(session, fhir_stub, status):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "login", "diagnostics": f"token {TOKEN} patient {PATIENT_ID}"}],
    }
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(outcome, status=status, content_type=FHIR)
    with pytest.raises(FhirUnavailable) as caught:
        make_client(session, fhir_stub).search(f"Condition?patient={PATIENT_ID}")
    assert caught.value.reason == f"FHIR server answered {status}"
    assert not isinstance(caught.value, FhirNotFound)


def test_a_read_of_a_missing_resource_is_not_found_but_a_missing_search_base_is_unavailable(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/gone").respond_with_data("", status=404)
    fhir_stub.expect_request("/fhir/Condition").respond_with_data("", status=404)
    client = make_client(session, fhir_stub)
    with pytest.raises(FhirNotFound):
        client.read("Patient/gone")
    with pytest.raises(FhirUnavailable) as caught:
        client.search("Condition?patient=gone")
    assert not isinstance(caught.value, FhirNotFound)
    assert caught.value.reason == "FHIR server answered 404"


def test_a_redirect_is_not_followed_so_the_token_does_not_travel(session, fhir_stub, elsewhere_stub):
    elsewhere_stub.expect_request("/fhir/Patient/p").respond_with_json(patient(), content_type=FHIR)
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_data(
        "", status=302, headers={"Location": elsewhere_stub.url_for("/fhir/Patient/p")}
    )
    with pytest.raises(FhirUnavailable) as caught:
        make_client(session, fhir_stub).read("Patient/p")
    assert "redirect" in caught.value.reason
    assert elsewhere_stub.log == []


# -- bodies that are not FHIR ------------------------------------------------------


def test_malformed_json_is_unavailable(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_data('{"resourceType": "Patient", ', content_type=FHIR)
    with pytest.raises(FhirUnavailable) as caught:
        make_client(session, fhir_stub).read("Patient/p")
    assert caught.value.reason == "FHIR server answered malformed JSON"


def test_an_empty_body_is_unavailable(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_data("", content_type=FHIR)
    with pytest.raises(FhirUnavailable, match="malformed JSON"):
        make_client(session, fhir_stub).read("Patient/p")


@pytest.mark.parametrize(
    "body",
    [
        [{"resourceType": "Patient"}],
        {"id": "p", "birthDate": "1970-01-01"},
        {"resourceType": 7},
        {"resourceType": ""},
        {"resourceType": "<script>"},
        "Patient",
        None,
    ],
)
def test_json_that_is_not_a_fhir_resource_is_unavailable(session, fhir_stub, body):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_json(body, content_type=FHIR)
    with pytest.raises(FhirUnavailable) as caught:
        make_client(session, fhir_stub).read("Patient/p")
    assert caught.value.reason == "FHIR server answered JSON that is not a FHIR resource"


def test_a_body_declared_as_html_is_unavailable_even_if_it_parses(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_data(json.dumps(patient()), content_type="text/html")
    with pytest.raises(FhirUnavailable, match="not JSON"):
        make_client(session, fhir_stub).read("Patient/p")


def test_a_read_answered_with_another_resource_type_is_unavailable(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_json(searchset(patient()), content_type=FHIR)
    with pytest.raises(FhirUnavailable, match="a Bundle for a Patient read"):
        make_client(session, fhir_stub).read("Patient/p")


def test_an_operation_outcome_with_status_200_is_not_data(session, fhir_stub):
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(outcome, content_type=FHIR)
    with pytest.raises(FhirUnavailable, match="OperationOutcome"):
        make_client(session, fhir_stub).search("Condition?patient=p")


@pytest.mark.parametrize(
    "answer",
    [
        patient(),
        {"resourceType": "Bundle", "type": "transaction-response", "entry": []},
        {"resourceType": "Bundle", "type": "searchset", "entry": {"resource": {}}},
    ],
)
def test_a_search_must_answer_a_searchset_bundle(session, fhir_stub, answer):
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(answer, content_type=FHIR)
    with pytest.raises(FhirUnavailable):
        make_client(session, fhir_stub).search("Condition?patient=p")


# -- size -------------------------------------------------------------------------


def test_a_body_declared_larger_than_the_cap_is_refused(session, fhir_stub):
    big = json.dumps(searchset(*(condition(id=f"c{n}", patient=PATIENT_ID) for n in range(5000))))
    fhir_stub.expect_request("/fhir/Condition").respond_with_data(big, content_type=FHIR)
    with pytest.raises(FhirUnavailable, match="larger than the size limit"):
        make_client(session, fhir_stub, max_bytes=64 * 1024).search("Condition?patient=p")


def test_an_endless_streamed_body_is_cut_at_the_cap(session, fhir_stub):
    sent = {"bytes": 0}

    def endless():
        yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
        chunk = (json.dumps({"resource": condition(id="c1", patient=PATIENT_ID)}) + ",").encode() * 100
        while sent["bytes"] < 50 * 1024 * 1024:
            sent["bytes"] += len(chunk)
            yield chunk

    fhir_stub.expect_request("/fhir/Condition").respond_with_handler(
        lambda request: Response(endless(), content_type=FHIR)
    )
    started = time.monotonic()
    with pytest.raises(FhirUnavailable, match="larger than the size limit"):
        make_client(session, fhir_stub, max_bytes=256 * 1024).search("Condition?patient=p")
    assert time.monotonic() - started < 2.0


def test_a_compressed_body_is_capped_after_decompression(session, fhir_stub):
    inflated = json.dumps(searchset(condition(id="c1", patient=PATIENT_ID))).encode() + b" " * (4 * 1024 * 1024)
    bomb = gzip.compress(inflated)
    assert len(bomb) < 64 * 1024
    fhir_stub.expect_request("/fhir/Condition").respond_with_data(
        bomb, content_type=FHIR, headers={"Content-Encoding": "gzip"}
    )
    with pytest.raises(FhirUnavailable, match="larger than the size limit"):
        make_client(session, fhir_stub, max_bytes=1024 * 1024).search("Condition?patient=p")


def test_a_compressed_body_within_the_cap_is_read(session, fhir_stub):
    body = searchset(*(condition(id=f"c{n}", patient=PATIENT_ID) for n in range(50)))
    fhir_stub.expect_request("/fhir/Condition").respond_with_data(
        gzip.compress(json.dumps(body).encode()), content_type=FHIR, headers={"Content-Encoding": "gzip"}
    )
    assert len(make_client(session, fhir_stub).search("Condition?patient=p")["entry"]) == 50


# -- time -------------------------------------------------------------------------


def test_a_server_that_does_not_answer_is_cut_at_the_deadline(session, fhir_stub, hold):
    def slow(request):
        hold.wait(5)
        return Response(json.dumps(patient()), content_type=FHIR)

    fhir_stub.expect_request("/fhir/Patient/p").respond_with_handler(slow)
    started = time.monotonic()
    with pytest.raises(FhirUnavailable) as caught:
        make_client(session, fhir_stub, budget=0.4).read("Patient/p")
    elapsed = time.monotonic() - started
    assert 0.3 < elapsed < 0.7
    assert caught.value.reason == "FHIR server did not answer within the time budget"


def test_a_server_that_trickles_its_body_is_cut_at_the_deadline(session, fhir_stub, hold):
    def trickle(request):
        def body():
            yield b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
            for _ in range(100):
                if hold.wait(0.1):
                    return
                yield b" "
            yield b"]}"

        return Response(body(), content_type=FHIR)

    fhir_stub.expect_request("/fhir/Condition").respond_with_handler(trickle)
    started = time.monotonic()
    with pytest.raises(FhirUnavailable, match="time budget"):
        make_client(session, fhir_stub, budget=0.5).search("Condition?patient=p")
    assert time.monotonic() - started < 0.8


def test_no_request_is_made_once_the_budget_is_spent(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Patient/p").respond_with_json(patient(), content_type=FHIR)
    client = FhirClient(session, base(fhir_stub), TOKEN, time.monotonic() - 0.01, 5)
    with pytest.raises(FhirUnavailable, match="time budget"):
        client.read("Patient/p")
    assert fhir_stub.log == []


def test_a_closed_port_is_unreachable(session):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = FhirClient(session, f"http://127.0.0.1:{port}/fhir", TOKEN, time.monotonic() + 2, 5)
    started = time.monotonic()
    with pytest.raises(FhirUnavailable) as caught:
        client.search(f"Condition?patient={PATIENT_ID}")
    assert caught.value.reason == "FHIR server could not be reached"
    assert time.monotonic() - started < 1.0


# -- paging -----------------------------------------------------------------------


def test_pages_are_followed_and_merged_in_order(session, fhir_stub):
    url = fhir_stub.url_for("/fhir/Condition")
    fhir_stub.expect_request("/fhir/Condition", query_string={"patient": "p"}).respond_with_json(
        searchset(
            condition(id="c1", patient=PATIENT_ID),
            condition(id="c2", patient=PATIENT_ID),
            next_url=f"{url}?page=2",
            self_url="x",
        ),
        content_type=FHIR,
    )
    fhir_stub.expect_request("/fhir/Condition", query_string={"page": "2"}).respond_with_json(
        searchset(condition(id="c3", patient=PATIENT_ID), next_url=f"{url}?page=3", self_url="x"), content_type=FHIR
    )
    fhir_stub.expect_request("/fhir/Condition", query_string={"page": "3"}).respond_with_json(
        searchset(condition(id="c4", patient=PATIENT_ID)), content_type=FHIR
    )
    result = make_client(session, fhir_stub).search_pages("Condition?patient=p")
    assert [e["resource"]["id"] for e in result.bundle["entry"]] == ["c1", "c2", "c3", "c4"]
    assert result.pages == 3 and result.incomplete is None
    assert result.bundle["type"] == "searchset" and "link" not in result.bundle
    assert all(r.headers["Authorization"] == f"Bearer {TOKEN}" for r, _ in fhir_stub.log)


def test_a_next_link_of_the_form_base_query_is_followed(session, fhir_stub):
    """HAPI-style paging: the next link is the base URL itself with _getpages."""
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(
        searchset(
            condition(id="c1", patient=PATIENT_ID),
            next_url=fhir_stub.url_for("/fhir") + "?_getpages=abc&_getpagesoffset=1",
            self_url="x",
        ),
        content_type=FHIR,
    )
    fhir_stub.expect_request("/fhir").respond_with_json(
        searchset(condition(id="c2", patient=PATIENT_ID)), content_type=FHIR
    )
    bundle = make_client(session, fhir_stub).search("Condition?patient=p")
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["c1", "c2"]


def test_endless_paging_stops_at_max_pages_and_says_so(session, fhir_stub):
    counter = {"n": 0}

    def page(request):
        counter["n"] += 1
        n = counter["n"]
        body = searchset(
            condition(id=f"c{n}", patient=PATIENT_ID),
            next_url=fhir_stub.url_for("/fhir/Condition") + f"?page={n + 1}",
            self_url="x",
        )
        return Response(json.dumps(body), content_type=FHIR)

    fhir_stub.expect_request("/fhir/Condition").respond_with_handler(page)
    result = make_client(session, fhir_stub, max_pages=4).search_pages("Condition?patient=p")
    assert counter["n"] == 4
    assert result.pages == 4
    assert [e["resource"]["id"] for e in result.bundle["entry"]] == ["c1", "c2", "c3", "c4"]
    assert result.incomplete == "more than 4 pages; the rest was not read"
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
        "display": "Resource content has been reduced",
    } in result.bundle["meta"]["tag"]


@pytest.mark.parametrize(
    "where", ["other port", "other path", "dot segments", "encoded dot segments", "userinfo", "other scheme"]
)
def test_a_next_link_outside_the_fhir_base_is_not_followed_and_the_token_stays_home(
    session, fhir_stub, elsewhere_stub, where
):
    elsewhere_stub.expect_request("/fhir/Condition").respond_with_json(
        searchset(condition(id="c9", patient=PATIENT_ID)), content_type=FHIR
    )
    root = fhir_stub.url_for("/").rstrip("/")
    next_url = {
        "other port": elsewhere_stub.url_for("/fhir/Condition?page=2"),
        "other path": f"{root}/fhir-other/Condition?page=2",
        "dot segments": f"{root}/fhir/../admin/Condition?page=2",
        "encoded dot segments": f"{root}/fhir/%2e%2e/admin/Condition?page=2",
        "userinfo": root.replace("http://", "http://user:pw@") + "/fhir/Condition?page=2",
        "other scheme": root.replace("http://", "https://") + "/fhir/Condition?page=2",
    }[where]
    fhir_stub.expect_request("/fhir/Condition").respond_with_json(
        searchset(condition(id="c1", patient=PATIENT_ID), next_url=next_url, self_url="x"), content_type=FHIR
    )
    result = make_client(session, fhir_stub).search_pages("Condition?patient=p")
    assert [e["resource"]["id"] for e in result.bundle["entry"]] == ["c1"]
    assert result.incomplete == "next page link points outside the FHIR server; not followed"
    assert elsewhere_stub.log == []
    assert len(fhir_stub.log) == 1


def test_a_failing_later_page_makes_the_search_unavailable(session, fhir_stub):
    fhir_stub.expect_request("/fhir/Condition", query_string={"patient": "p"}).respond_with_json(
        searchset(
            condition(id="c1", patient=PATIENT_ID),
            next_url=fhir_stub.url_for("/fhir/Condition") + "?page=2",
            self_url="x",
        ),
        content_type=FHIR,
    )
    fhir_stub.expect_request("/fhir/Condition", query_string={"page": "2"}).respond_with_data("", status=500)
    with pytest.raises(FhirUnavailable, match="answered 500"):
        make_client(session, fhir_stub).search("Condition?patient=p")


# -- URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relative",
    [
        "http://evil.example/Patient/p",
        "//evil.example/Patient/p",
        "/Patient/p",
        "Patient/../../admin",
        "Patient/%2e%2e",
        "Patient/p#frag",
        "",
    ],
)
def test_only_relative_urls_under_the_base_are_requested(session, fhir_stub, relative):
    with pytest.raises(FhirUnavailable, match="not a relative FHIR URL"):
        make_client(session, fhir_stub).read(relative)
    assert fhir_stub.log == []


def test_reasons_never_carry_the_token_or_the_patient_id(session, fhir_stub):
    fhir_stub.expect_request(f"/fhir/Patient/{PATIENT_ID}").respond_with_data(
        f"<html>{TOKEN} {PATIENT_ID}</html>", content_type="text/html"
    )
    fhir_stub.expect_request("/fhir/Condition").respond_with_data(f"{{{TOKEN}", content_type=FHIR)
    client = make_client(session, fhir_stub)
    for call in (
        lambda: client.read(f"Patient/{PATIENT_ID}"),
        lambda: client.search(f"Condition?patient={PATIENT_ID}"),
    ):
        with pytest.raises(FhirUnavailable) as caught:
            call()
        assert_safe(caught.value.reason)
        assert_safe(str(caught.value))
    assert TOKEN not in repr(client)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ehr.example.org/fhir",
        "file:///etc/passwd",
        "ehr.example.org/fhir",
        "https://user:pw@ehr.example.org/fhir",
        "https://ehr.example.org:99999/fhir",
        "https://ehr.example.org/fhir?x=1",
        "javascript:alert(1)",
    ],
)
def test_a_fhir_server_that_is_not_a_plain_http_url_is_refused(url):
    with pytest.raises(FhirUnavailable):
        check_fhir_server(url)


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://ehr.example.org/fhir", True),
        ("https://ehr.example.org/fhir/", True),
        ("https://EHR.example.org:443/fhir/r4", True),
        ("https://ehr.example.org.evil.com/fhir", False),
        ("https://ehr.example.org/fhirevil", False),
        ("http://ehr.example.org/fhir", False),
        ("https://ehr.example.org:8443/fhir", False),
        ("https://other.example.org/fhir", False),
    ],
)
def test_the_allowlist_matches_origin_and_path_prefix_not_a_string_prefix(url, allowed):
    allowlist = ("https://ehr.example.org/fhir",)
    if allowed:
        assert check_fhir_server(url, allowlist) == url.rstrip("/")
    else:
        with pytest.raises(FhirUnavailable, match="allowlist"):
            check_fhir_server(url, allowlist)


def test_an_empty_allowlist_accepts_any_http_url():
    assert check_fhir_server("http://10.0.0.5:8080/baseR4/") == "http://10.0.0.5:8080/baseR4"


def test_is_under_compares_default_ports():
    assert is_under("https://h.example/fhir/Condition?page=2", "https://h.example:443/fhir")
    assert not is_under("https://h.example/fhir", "https://h.example/fhir")
    assert is_under("https://h.example/fhir?_getpages=x", "https://h.example/fhir", allow_equal=True)


def test_fhir_access_hands_out_clients_with_the_settings(fhir_stub):
    settings = Settings(fhir_max_pages=3, fhir_server_allowlist=(base(fhir_stub),), fhir_max_workers=2)
    access = FhirAccess(settings)
    try:
        deadline = time.monotonic() + 1
        client = access.client(base(fhir_stub) + "/", TOKEN, deadline)
        assert (client.base_url, client.max_pages, client.deadline) == (base(fhir_stub), 3, deadline)
        with pytest.raises(FhirUnavailable, match="allowlist"):
            access.client("http://127.0.0.2:1/fhir", TOKEN, deadline)
        assert access.session.trust_env is False
        assert access.session.get_adapter("https://x.example")._pool_maxsize >= 2
    finally:
        access.close()
