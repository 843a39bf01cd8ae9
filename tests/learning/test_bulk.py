"""fhir/bulk.py against a scripted server: capability detection, polling bounds, where the
token goes, and the paged-search fallback."""

from __future__ import annotations

import json
import time

import pytest
from werkzeug import Response

from cds_service.fhir.bulk import BulkClient, BulkError

TOKEN = "Bearer test-token-7f3a9c"
NO_BULK = {"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "operation": []}]}
BULK = {
    "resourceType": "CapabilityStatement",
    "rest": [
        {"mode": "server", "operation": [{"name": "export", "definition": "http://x/OperationDefinition/export"}]}
    ],
}


def _client(stub, **kwargs) -> BulkClient:
    return BulkClient(stub.url_for("/fhir"), lambda: TOKEN, poll_initial_s=0.01, **kwargs)


def _ndjson(*resources) -> str:
    return "\n".join(json.dumps(r) for r in resources) + "\n"


def test_a_server_whose_capability_statement_has_no_export_is_read_by_paged_searches(fhir_stub):
    base = fhir_stub.url_for("/fhir")
    fhir_stub.expect_request("/fhir/metadata").respond_with_json(NO_BULK)
    page2 = f"{base}/Patient?_count=2&page=2"
    fhir_stub.expect_request("/fhir/Patient", query_string="_count=500").respond_with_json(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Patient", "id": "a"}}],
            "link": [{"relation": "next", "url": page2}],
        }
    )
    fhir_stub.expect_request("/fhir/Patient", query_string="_count=2&page=2").respond_with_json(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Patient", "id": "b"}}],
        }
    )
    fhir_stub.expect_request("/fhir/Condition").respond_with_json({"resourceType": "Bundle", "type": "searchset"})
    extraction = _client(fhir_stub).extract(("Patient", "Condition"))
    assert extraction.info.method == "search"
    assert [r["id"] for r in extraction.resources] == ["a", "b"]
    assert extraction.counts == {"Patient": 2}
    assert all(request.headers["Authorization"] == TOKEN for request, _ in fhir_stub.log)


def test_a_next_link_to_another_server_is_not_followed(fhir_stub, elsewhere_stub):
    fhir_stub.expect_request("/fhir/metadata").respond_with_json(NO_BULK)
    fhir_stub.expect_request("/fhir/Patient").respond_with_json(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": elsewhere_stub.url_for("/fhir/Patient?page=2")}],
        }
    )
    with pytest.raises(BulkError, match="next link leaves the FHIR server"):
        list(_client(fhir_stub).extract(("Patient",)).resources)
    assert elsewhere_stub.log == []


def test_an_export_is_kicked_off_async_with_type_and_its_files_streamed(fhir_stub):
    base = fhir_stub.url_for("/fhir")
    fhir_stub.expect_request("/fhir/metadata").respond_with_json(BULK)
    fhir_stub.expect_request("/fhir/$export").respond_with_data(
        "", status=202, headers={"Content-Location": f"{base}/status/1"}
    )
    polls = iter([Response(status=202, headers={"Retry-After": "0"}), None])

    def status(request):
        answer = next(polls)
        if answer is not None:
            return answer
        manifest = {
            "transactionTime": "2026-01-01T00:00:00Z",
            "requiresAccessToken": True,
            "output": [{"type": "Patient", "url": f"{base}/files/p.ndjson"}],
        }
        return Response(json.dumps(manifest), status=200, content_type="application/json")

    fhir_stub.expect_request("/fhir/status/1", method="GET").respond_with_handler(status)
    fhir_stub.expect_request("/fhir/status/1", method="DELETE").respond_with_data("", status=202)
    fhir_stub.expect_request("/fhir/files/p.ndjson").respond_with_data(
        _ndjson({"resourceType": "Patient", "id": "x"}, {"resourceType": "Patient", "id": "y"})
    )
    extraction = _client(fhir_stub).extract(("Patient", "Condition"))
    assert [r["id"] for r in extraction.resources] == ["x", "y"]
    assert extraction.info.method == "bulk-data" and extraction.info.polls == 2
    kickoff = next(request for request, _ in fhir_stub.log if request.path == "/fhir/$export")
    assert kickoff.headers["Prefer"] == "respond-async"
    assert kickoff.args["_type"] == "Patient,Condition"
    assert kickoff.args["_outputFormat"] == "application/fhir+ndjson"


def test_an_export_that_never_completes_is_cancelled_after_the_bounded_wait(fhir_stub):
    base = fhir_stub.url_for("/fhir")
    fhir_stub.expect_request("/fhir/metadata").respond_with_json(BULK)
    fhir_stub.expect_request("/fhir/$export").respond_with_data(
        "", status=202, headers={"Content-Location": f"{base}/status/2"}
    )
    fhir_stub.expect_request("/fhir/status/2", method="GET").respond_with_data(
        "", status=202, headers={"Retry-After": "3600"}
    )
    fhir_stub.expect_request("/fhir/status/2", method="DELETE").respond_with_data("", status=202)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    client = _client(fhir_stub, max_wait_s=0.3, poll_max_s=0.05, sleep=sleep)
    with pytest.raises(BulkError, match=r"did not complete within 0\.3 s; it was cancelled"):
        client.extract(("Patient",))
    assert max(waits) <= 0.05  # the server's Retry-After of an hour is clamped
    assert any(request.method == "DELETE" for request, _ in fhir_stub.log)


def test_the_token_is_not_sent_to_export_files_on_another_origin(fhir_stub, elsewhere_stub):
    base = fhir_stub.url_for("/fhir")
    fhir_stub.expect_request("/fhir/metadata").respond_with_json(BULK)
    fhir_stub.expect_request("/fhir/$export").respond_with_data(
        "", status=202, headers={"Content-Location": f"{base}/status/3"}
    )
    fhir_stub.expect_request("/fhir/status/3").respond_with_json(
        {
            "transactionTime": "2026-01-01T00:00:00Z",
            "requiresAccessToken": True,
            "output": [{"type": "Patient", "url": elsewhere_stub.url_for("/files/p.ndjson")}],
        }
    )
    with pytest.raises(BulkError, match="not on the FHIR server's origin"):
        _client(fhir_stub).extract(("Patient",))
    assert elsewhere_stub.log == []


def test_a_failed_export_job_is_an_error_without_the_servers_text(fhir_stub):
    base = fhir_stub.url_for("/fhir")
    fhir_stub.expect_request("/fhir/metadata").respond_with_json(BULK)
    fhir_stub.expect_request("/fhir/$export").respond_with_data(
        "", status=202, headers={"Content-Location": f"{base}/status/4"}
    )
    fhir_stub.expect_request("/fhir/status/4").respond_with_json(
        {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "Patient/secret-id broke"}]}, status=400
    )
    with pytest.raises(BulkError) as caught:
        _client(fhir_stub).extract(("Patient",))
    assert "secret-id" not in caught.value.reason and "(400)" in caught.value.reason


def test_group_level_export_is_offered_only_when_the_group_resource_has_the_operation():
    group_only = {
        "resourceType": "CapabilityStatement",
        "rest": [{"resource": [{"type": "Group", "operation": [{"name": "export"}]}]}],
    }
    assert BulkClient.offers_export(group_only, "g1")
    assert not BulkClient.offers_export(group_only, None)
    assert not BulkClient.offers_export(NO_BULK, "g1")
