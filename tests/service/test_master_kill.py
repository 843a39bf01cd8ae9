"""A master killed with SIGKILL (OOM killer, `kill -9`) frees its port within about a
second: its orphaned workers stop listening at once, so a supervisor's immediate restart
binds the port and serves (before, they held it for up to graceful_timeout_s, 30 s)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

import pytest
import requests
from support.served import ClientSigner, ServedService

SERVICE = "/cds-services/hfs-outcomes-patient-view"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.skipif(not os.path.exists("/proc"), reason="needs Linux process information")
def test_killing_the_master_frees_the_port_for_an_immediate_restart(tmp_path):
    # A long grace period, and an open connection that never sends a request: the
    # orphaned workers must not wait for it before they let go of the port.
    service = ServedService(tmp_path / "svc", ClientSigner(), workers=2, env={"CDS_GRACEFUL_TIMEOUT_S": "30"})
    service.start()
    workers = _children(service.process.pid)
    assert len(workers) == 2
    idle = socket.create_connection(("127.0.0.1", service.port))  # a connection that never sends
    try:
        killed = time.monotonic()
        os.kill(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=5)
        while not _port_is_free(service.port):
            assert time.monotonic() - killed < 3.0, "the orphaned workers still hold the port"
            time.sleep(0.05)
        freed_after = time.monotonic() - killed
        service.process = None
        service.start()  # the supervisor's immediate restart
        answer = requests.get(service.base_url + "/healthz", timeout=5)
        assert answer.status_code == 200
        print(f"port free {freed_after:.2f} s after SIGKILL; restarted and serving")
    finally:
        idle.close()
        service.stop()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
