"""Clients and FHIR servers that hold request threads do not stop the service.

- Ten slow-body connections (more than the request threads) each hold a thread at most
  `body_read_timeout_s`, then get 408 and are closed; meanwhile /healthz answers, and a
  normal hook call gets an immediate 503 + Retry-After (after the deadline: its cards).
  Before, nothing answered for as long as the clients kept trickling (15-20 s seen).
- When every thread is held by a slow FHIR call, a new hook call gets its 503 at once, not
  when a thread comes free (about 1.8 s seen).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests
from support.fhir import hook_request
from support.hanging_fhir import HangingFhirServer
from support.scenario_requests import hfs_after_mvd_patient_view
from support.served import ClientSigner, ServedService
from support.slow_clients import SlowBodyClients

SERVICE = "/cds-services/hfs-outcomes-patient-view"
ENV = {"CDS_BODY_READ_TIMEOUT_S": "2", "CDS_FHIR_TIME_BUDGET_S": "5"}


def timed(action) -> tuple[requests.Response, float]:
    started = time.monotonic()
    answer = action()
    return answer, time.monotonic() - started


def call(service: ServedService, body: dict) -> requests.Response:
    return requests.post(service.base_url + SERVICE, json=body, headers=service.auth(SERVICE), timeout=10)


def test_slow_body_clients_hold_threads_only_until_their_deadline(tmp_path):
    service = ServedService(tmp_path / "svc", ClientSigner(), workers=1, threads=2, env=ENV).start()
    try:
        with SlowBodyClients(service.port, 10, headers=lambda: service.auth(SERVICE), byte_every_s=0.2) as slow:
            time.sleep(0.6)  # every thread held longer than admission_max_wait_s
            health, health_s = timed(lambda: requests.get(service.base_url + "/healthz", timeout=10))
            assert health.status_code == 200 and health_s < 1.0, health_s
            shed, shed_s = timed(lambda: call(service, hfs_after_mvd_patient_view("slow-1")))
            assert shed.status_code == 503 and shed.headers["Retry-After"] and shed_s < 1.0, (shed.status_code, shed_s)
            time.sleep(1.5)  # past the body deadline (2 s)
            answered = call(service, hfs_after_mvd_patient_view("slow-2"))
            assert answered.status_code == 200, answered.text
            timed_out = [a for a in slow.answers if " 408 " in a]
        assert len(timed_out) >= 2, slow.answers  # those that had a thread
        assert all(" 408 " in a or " 503 " in a for a in slow.answers), slow.answers
    finally:
        service.stop()


@contextmanager
def both_threads_held_by_a_hanging_fhir_server(tmp_path) -> Iterator[ServedService]:
    """A one-worker, two-thread service whose two threads are each held by a hook call
    waiting on a FHIR server that never answers (released when the block ends)."""
    service = ServedService(tmp_path / "svc", ClientSigner(), workers=1, threads=2, env=ENV).start()
    try:
        with HangingFhirServer() as fhir:
            body = hook_request("patient-view", fhir_server=fhir.base_url, token="fhir-token")
            holders = [threading.Thread(target=call, args=(service, body)) for _ in range(2)]
            for holder in holders:
                holder.start()
            assert fhir.asked.wait(5)
            yield service
        for holder in holders:
            holder.join(timeout=10)
    finally:
        service.stop()


def test_threads_held_by_slow_fhir_calls_give_a_503_at_once(tmp_path):
    with both_threads_held_by_a_hanging_fhir_server(tmp_path) as service:
        time.sleep(0.6)  # both threads held longer than admission_max_wait_s (0.5 s)
        shed, shed_s = timed(lambda: call(service, hfs_after_mvd_patient_view("held-1")))
        # Held for less than the admission wait: queued, then moved to the shedding
        # lane when the wait is over, still before any thread is free.
        print(f"503 after {shed_s:.3f} s with every thread held by a slow FHIR call")
        assert shed.status_code == 503, shed.text
        assert shed.headers["Retry-After"] == "1"
        assert shed_s < 0.45


def test_a_call_queued_behind_fresh_slow_calls_gets_its_503_when_its_wait_is_over(tmp_path):
    with both_threads_held_by_a_hanging_fhir_server(tmp_path) as service:
        shed, shed_s = timed(lambda: call(service, hfs_after_mvd_patient_view("held-2")))
        print(f"503 after {shed_s:.3f} s queued behind fresh slow FHIR calls")
        assert shed.status_code == 503, shed.text
        assert shed_s < 0.5 + 0.2 + 0.3  # admission_max_wait_s + accept pause + slack
