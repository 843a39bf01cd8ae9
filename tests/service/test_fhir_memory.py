"""A worker's memory against a FHIR server whose every answer is endless and chunked.

Each hook call is refused as the FHIR-fault rules say (a required key that cannot be had:
412 prefetch_unavailable, naming the size limit), and the worker gives the memory back:
before, each such call left the worker about 196 MB larger (six keys, 32 MB each, never
returned to the system); now five calls together leave it less than one cap larger.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from support import error_body
from support.chunked_fhir import ChunkedFhirServer
from support.fhir import hook_request
from support.served import ClientSigner, ServedService

SERVICE = "/cds-services/hfs-outcomes-patient-view"
CAP_MB = 32  # fhir/client.py DEFAULT_MAX_RESPONSE_BYTES


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_oversized_chunked_fhir_answers_are_refused_and_the_memory_returned(tmp_path):
    with ChunkedFhirServer(total_bytes=400 * 1024 * 1024) as fhir:
        env = {"CDS_FHIR_TIME_BUDGET_S": "10", "CDS_FHIR_SERVER_ALLOWLIST": fhir.base_url}  # reasons told
        service = ServedService(tmp_path / "svc", ClientSigner(), workers=1, env=env).start()
        try:
            worker = int((tmp_path / "svc" / "service.log").read_text().split("worker ready (pid: ")[1].split(")")[0])
            body = hook_request("patient-view", fhir_server=fhir.base_url, token="fhir-token")
            warm = requests.post(service.base_url + SERVICE, json=body, headers=service.auth(SERVICE), timeout=30)
            before = rss_mb(worker)
            answers = [
                requests.post(service.base_url + SERVICE, json=body, headers=service.auth(SERVICE), timeout=30)
                for _ in range(5)
            ]
            after = rss_mb(worker)
        finally:
            service.stop()
    for answer in [warm, *answers]:
        assert answer.status_code == 412, answer.text
        assert error_body.code(answer.json()) == "prefetch_unavailable"
        assert "larger than the size limit" in error_body.text(answer.json())
    print(f"worker RSS {before:.0f} MB before, {after:.0f} MB after five oversized calls")
    assert after - before < CAP_MB, f"worker grew from {before:.0f} to {after:.0f} MB"
