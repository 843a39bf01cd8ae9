"""Pytest plugin: FHIR servers for tests.

- `fhir_server` (session): the real sekmet FHIR R4 server (sekmet-fhir 0.1.1) on
  127.0.0.1 and a free port, with static bearer-token auth. It yields a `SekmetServer`
  with `base_url` (the /fhir base), `token` and `load(bundle)`. Tests using it should be
  marked `@pytest.mark.fhir_server`. A missing sekmet executable fails the tests: the
  fallback to a real FHIR server must be proven in CI, not skipped.
- `fhir_stub` (function): a threaded pytest-httpserver on 127.0.0.1 for scripted faults
  (concurrent requests are answered concurrently, so slow handlers do not serialise);
  `elsewhere_stub`: a second one on another port, to prove a token never goes there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from pytest_httpserver import HTTPServer

STARTUP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class SekmetServer:
    base_url: str  # e.g. http://127.0.0.1:40123/fhir
    token: str  # the bearer token the server accepts
    log_path: Path

    def load(self, bundle: dict) -> dict:
        """POST a transaction Bundle with the token; the transaction-response Bundle."""
        response = requests.post(
            self.base_url,
            json=bundle,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/fhir+json",
                "Accept": "application/fhir+json",
            },
            timeout=30,
        )
        if response.status_code >= 300:
            raise AssertionError(f"transaction refused by sekmet: {response.status_code} {response.text[:2000]}")
        return response.json()


def created_ids(transaction_response: dict, resource_type: str) -> list[str]:
    """Server-assigned ids of one resource type in a transaction-response Bundle."""
    ids = []
    for entry in transaction_response.get("entry", []):
        location = (entry.get("response") or {}).get("location", "")
        marker = f"/{resource_type}/"
        if marker in f"/{location}":
            ids.append(f"/{location}".split(marker, 1)[1].split("/", 1)[0])
    return ids


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sekmet_executable() -> str:
    candidate = Path(sys.executable).parent / "sekmet"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("sekmet")
    if found:
        return found
    pytest.fail(
        "the sekmet FHIR server (sekmet-fhir==0.1.1) is not installed: the FHIR fallback tests "
        "cannot run; install the test extras (pip install -e .[test])",
        pytrace=False,
    )


@contextlib.contextmanager
def running_sekmet(workdir: Path, port: int, server_auth: dict, simulator: dict | None = None) -> Iterator[str]:
    """The sekmet FHIR server on 127.0.0.1:`port` for the with-block, its state in `workdir`
    (settings.yaml, data, keys, sekmet.log); yields its /fhir base URL once it answers, and
    stops it (terminate, then kill) afterwards."""
    base_url = f"http://127.0.0.1:{port}/fhir"
    settings = {
        "base_url": base_url,
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(workdir / "data"),
        "own_private_key_path": str(workdir / "keys" / "sekmet_private.pem"),
        "server_auth": server_auth,
        "simulator": simulator or {"enabled": False},
        "validation": {"inbound": "strict"},
        "log_inbound": False,
    }
    settings_path = workdir / "settings.yaml"
    settings_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    log_path = workdir / "sekmet.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [_sekmet_executable(), "serve", "-c", str(settings_path)],
            cwd=workdir,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_up(process, base_url, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory) -> SekmetServer:
    workdir = tmp_path_factory.mktemp("sekmet")
    token = secrets.token_urlsafe(24)
    from support import log_guard  # the plugin (tests/conftest.py); imported here so pytest loads it first

    log_guard.sensitive(token, "fhir-token")
    with running_sekmet(workdir, _free_port(), {"types": ["bearer"], "tokens": [token]}) as base_url:
        yield SekmetServer(base_url=base_url, token=token, log_path=workdir / "sekmet.log")


def _wait_until_up(process: subprocess.Popen, base_url: str, log_path: Path) -> None:
    end = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"sekmet exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if requests.get(f"{base_url}/metadata", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.terminate()
    pytest.fail(
        f"sekmet did not answer within {STARTUP_TIMEOUT_S:.0f} s:\n{log_path.read_text(errors='replace')[-4000:]}"
    )


class StubServer(HTTPServer):
    """pytest-httpserver that knows when no request is being handled, so that a request
    a previous test abandoned (slow handler) is logged before the log is cleared."""

    def __init__(self) -> None:
        super().__init__(host="127.0.0.1", port=0, threaded=True)
        self._busy = 0
        self._idle = threading.Condition()

    def application(self, request):
        with self._idle:
            self._busy += 1
        try:
            return super().application(request)
        finally:
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()

    def reset(self, timeout: float = 10.0) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout=timeout)
        self.clear()


@pytest.fixture(scope="session")
def _stub_servers():
    servers = [StubServer() for _ in range(2)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.clear()
        if server.is_running():
            server.stop()


@pytest.fixture
def fhir_stub(_stub_servers):
    """A scripted FHIR server (threaded pytest-httpserver), reset before and after each test."""
    server = _stub_servers[0]
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def elsewhere_stub(_stub_servers):
    """A second scripted server on another port: where a token must never arrive."""
    server = _stub_servers[1]
    server.reset()
    yield server
    server.reset()
