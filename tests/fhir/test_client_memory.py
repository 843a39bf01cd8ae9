"""Memory under a hostile FHIR server: answers larger than the cap, sent chunked (no
Content-Length, so nothing to refuse up front), are refused while they stream.

The cap holds for one hook call as a whole (every key, every page, read in parallel), the
client never buffers past it, and it hangs up rather than reading the rest.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
from support.chunked_fhir import ChunkedFhirServer
from support.fhir import condition, searchset

from cds_service.fhir.client import FhirClient, FhirUnavailable, new_session

CAP = 2 * 1024 * 1024
ENDLESS = 200 * 1024 * 1024
FHIR = "application/fhir+json"


@pytest.fixture
def session():
    s = new_session(pool_size=8)
    yield s
    s.close()


def client(session, base_url: str, cap: int = CAP) -> FhirClient:
    return FhirClient(session, base_url, "token", time.monotonic() + 5.0, 10, max_response_bytes=cap)


def peak_python_bytes(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_chunked_answer_over_the_cap_is_refused_while_streaming_and_not_read_to_the_end(session):
    with ChunkedFhirServer(total_bytes=ENDLESS) as fhir:

        def search() -> None:
            with pytest.raises(FhirUnavailable, match="larger than the size limit"):
                client(session, fhir.base_url).search("Condition?patient=p")

        started = time.monotonic()
        peak = peak_python_bytes(search)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + 2
        while not fhir.sent and time.monotonic() < deadline:
            time.sleep(0.01)
    assert peak < 1.5 * CAP + 1024 * 1024, f"{peak} bytes held for a {CAP}-byte cap"
    # The server could send only about the cap (plus socket buffers) before the hang-up.
    assert fhir.sent and fhir.sent[0] < CAP + 8 * 1024 * 1024, fhir.sent
    assert elapsed < 2.0


def test_the_cap_holds_for_all_the_keys_of_a_call_read_in_parallel(session):
    with ChunkedFhirServer(total_bytes=ENDLESS) as fhir:
        call = client(session, fhir.base_url)

        def six_keys() -> None:
            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(call.search, f"Observation?patient=p&k={n}") for n in range(6)]
                for future in futures:
                    with pytest.raises(FhirUnavailable, match="larger than the size limit"):
                        future.result()

        peak = peak_python_bytes(six_keys)
    # Six answers of one call share one cap (before: each had its own, six times the memory).
    assert peak < 2 * CAP + 2 * 1024 * 1024, f"{peak} bytes held by six keys for a {CAP}-byte cap"


def test_pages_and_keys_under_the_cap_each_still_count_towards_it(session, fhir_stub):
    page = json.dumps(searchset(*(condition(id=f"c{n}", patient="p") for n in range(400))))
    fhir_stub.expect_request("/fhir/Condition").respond_with_data(page, content_type=FHIR)
    fhir_stub.expect_request("/fhir/Procedure").respond_with_data(page, content_type=FHIR)
    cap = len(page) + len(page) // 2  # one answer fits, two do not
    call = client(session, fhir_stub.url_for("/fhir").rstrip("/"), cap=cap)
    assert len(call.search("Condition?patient=p")["entry"]) == 400
    with pytest.raises(FhirUnavailable, match="larger than the size limit of a hook call"):
        call.search("Procedure?patient=p")
    # A new call has the whole cap again.
    fresh = client(session, fhir_stub.url_for("/fhir").rstrip("/"), cap=cap)
    assert len(fresh.search("Procedure?patient=p")["entry"]) == 400
