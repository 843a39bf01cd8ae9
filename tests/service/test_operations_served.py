"""Operations through the real service (`cds-service serve`, gunicorn) on loopback.

- Eight concurrent hook calls without prefetch against a FHIR server that answers in 1.2 s
  (inside the 2 s budget) are all answered, none with 412 for requests never sent, none
  later than the budget plus a small margin; beyond capacity, calls get a fast 503.
- SIGTERM turns /readyz to 503 first, keeps answering during the drain delay, and lets
  in-flight calls finish.
- Metrics are summed over both workers (multiprocess mode); two instances on one host do
  not share a gunicorn control socket.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support.served import ClientSigner, ServedService
from werkzeug import Response

PATIENT_ID = "ops-served-pt-31"
TOKEN = "fhir-at-ops-served-secret"
SERVICE = "/cds-services/hfs-outcomes-patient-view"
FHIR = "application/fhir+json"
FHIR_DELAY_S = 1.2
BUDGET_S = 2.0
MARGIN_S = 0.6
METRICS_TOKEN = "ops-scrape-secret"


def slow_fhir(server, delay: float = FHIR_DELAY_S) -> None:
    """Every read and search answers after `delay` (the threaded stub answers concurrently)."""

    def answer(request):
        time.sleep(delay)
        kind = request.path.split("/")[2]
        if kind == "Patient":
            body = {"resourceType": "Patient", "id": PATIENT_ID, "birthDate": "1960-01-01"}
        else:
            body = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        return Response(json.dumps(body), content_type=FHIR)

    server.expect_request(re.compile(r"/fhir/.*")).respond_with_handler(answer)


def no_prefetch_call(fhir_base: str) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_base,
        "fhirAuthorization": {
            "access_token": TOKEN,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-service",
        },
        "context": {"userId": "Practitioner/dr-ops", "patientId": PATIENT_ID},
    }


def timed_post(served: ServedService, body: dict) -> tuple[int, float, dict, str]:
    started = time.monotonic()
    with requests.Session() as session:
        answer = session.post(served.base_url + SERVICE, json=body, headers=served.auth(SERVICE), timeout=15)
    return answer.status_code, time.monotonic() - started, dict(answer.headers), answer.text


@pytest.fixture
def make_served(tmp_path):
    started: list[ServedService] = []

    def make(name: str = "served", **kwargs) -> ServedService:
        service = ServedService(tmp_path / name, ClientSigner(), **kwargs).start()
        started.append(service)
        return service

    yield make
    for service in started:
        service.stop()


def test_eight_concurrent_calls_against_a_slow_fhir_server_all_finish_within_the_budget(make_served, fhir_stub):
    slow_fhir(fhir_stub)
    served = make_served(workers=2, threads=4, env={"CDS_FHIR_TIME_BUDGET_S": str(BUDGET_S)})
    fhir_base = fhir_stub.url_for("/fhir").rstrip("/")
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: timed_post(served, no_prefetch_call(fhir_base)), range(8)))
    statuses = [status for status, *_ in results]
    assert statuses == [200] * 8, [(status, round(elapsed, 2), text[:120]) for status, elapsed, _, text in results]
    assert max(elapsed for _, elapsed, _, _ in results) < BUDGET_S + MARGIN_S
    assert not any("budget" in text for *_, text in results)
    # Every call fetched its six keys: 48 GETs, all with the token.
    assert len(fhir_stub.log) == 48


def test_calls_beyond_capacity_get_a_fast_503_with_retry_after(make_served, fhir_stub):
    slow_fhir(fhir_stub)
    served = make_served(workers=1, threads=2, env={"CDS_FHIR_TIME_BUDGET_S": str(BUDGET_S)})
    fhir_base = fhir_stub.url_for("/fhir").rstrip("/")
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: timed_post(served, no_prefetch_call(fhir_base)), range(10)))
    statuses = sorted(status for status, *_ in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 2
    refused = [(elapsed, headers) for status, elapsed, headers, _ in results if status == 503]
    assert len(refused) >= 4
    assert all(headers.get("Retry-After") == "1" for _, headers in refused)
    fast = [elapsed for elapsed, _ in refused if elapsed < 0.5]
    assert len(fast) >= 4, sorted(elapsed for elapsed, _ in refused)
    assert max(elapsed for _, elapsed, _, _ in results) < BUDGET_S + MARGIN_S


def test_sigterm_turns_readiness_off_first_and_in_flight_calls_complete(make_served, fhir_stub):
    slow_fhir(fhir_stub, delay=1.5)
    served = make_served(workers=1, env={"CDS_DRAIN_DELAY_S": "2", "CDS_FHIR_TIME_BUDGET_S": "3"})
    assert requests.get(served.base_url + "/readyz", timeout=5).status_code == 200
    fhir_base = fhir_stub.url_for("/fhir").rstrip("/")
    with ThreadPoolExecutor(max_workers=2) as pool:
        in_flight = [pool.submit(timed_post, served, no_prefetch_call(fhir_base)) for _ in range(2)]
        time.sleep(0.4)
        served.process.terminate()
        deadline = time.monotonic() + 1.0
        ready = None
        while time.monotonic() < deadline:
            ready = requests.get(served.base_url + "/readyz", timeout=2)
            if ready.status_code == 503:
                break
            time.sleep(0.05)
        assert ready is not None and ready.status_code == 503
        assert ready.json()["checks"]["draining"] == "yes"
        # Still alive, and a call arriving during the drain delay is still answered.
        assert requests.get(served.base_url + "/healthz", timeout=2).status_code == 200
        late = requests.get(served.base_url + "/cds-services", headers=served.auth("/cds-services"), timeout=5)
        assert late.status_code == 200
        assert [future.result()[0] for future in in_flight] == [200, 200]
    served.process.wait(timeout=15)
    assert served.process.returncode == 0


def test_metrics_are_summed_over_both_workers_and_need_the_token(make_served):
    from support.scenario_requests import hfs_after_mvd_patient_view

    served = make_served(workers=2, env={"CDS_METRICS_TOKEN": METRICS_TOKEN})
    for _ in range(6):
        with requests.Session() as session:
            answer = session.post(
                served.base_url + SERVICE, json=hfs_after_mvd_patient_view(PATIENT_ID), headers=served.auth(SERVICE)
            )
            assert answer.status_code == 200
    assert requests.get(served.base_url + "/metrics", timeout=5).status_code == 401
    scrape = requests.get(served.base_url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    assert scrape.status_code == 200
    line = 'cds_hook_calls_total{hook="patient-view",service="hfs-outcomes-patient-view",status="200"}'
    counts = [float(row.split()[-1]) for row in scrape.text.splitlines() if row.startswith(line)]
    assert counts == [6.0]
    assert PATIENT_ID not in scrape.text
    assert list((served.folder / "instance" / "prometheus").glob("*.db"))


def test_two_instances_on_one_host_share_no_control_socket(make_served, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    saved = os.environ.pop("XDG_RUNTIME_DIR", None)
    try:
        first = make_served("first", workers=1, env=env)
        second = make_served("second", workers=1, env=env)
    finally:
        if saved is not None:
            os.environ["XDG_RUNTIME_DIR"] = saved
    assert not (home / ".gunicorn").exists()
    first.stop()
    assert requests.get(second.base_url + "/healthz", timeout=5).status_code == 200
