"""`cds-service selftest` (issue 19) run by the tests against the real service: on one
instance, and on two instances behind the nginx proxy of the deployment tests; and it
fails, with a non-zero exit, against a service that does not conform."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jwt.algorithms import ECAlgorithm
from support.served import ISSUER, KID, ClientSigner, ServedService

from .test_proxy_instances import Proxy, deployment  # noqa: F401  (the two-instance fixture)

CLI = str(Path(sys.executable).parent / "cds-service")


def trust_file(folder: Path, signer: ClientSigner) -> Path:
    """The selftest's client profile: the issuer and the private key the service trusts."""
    folder.mkdir(parents=True, exist_ok=True)
    private = json.loads(ECAlgorithm.to_jwk(signer.private_key))
    (folder / "client-jwks.json").write_text(json.dumps({"keys": [{**private, "kid": KID, "alg": "ES384"}]}))
    path = folder / "selftest.toml"
    path.write_text(f'iss = "{ISSUER}"\njwks_file = "client-jwks.json"\n')
    return path


def selftest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "selftest", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def served(tmp_path):
    signer = ClientSigner()
    service = ServedService(tmp_path / "svc", signer, workers=1).start()
    try:
        yield service
    finally:
        service.stop()


def test_selftest_passes_against_the_service_with_signed_calls(served, tmp_path):
    done = selftest("--against", served.base_url, "--trust", str(trust_file(tmp_path, served.signer)))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")]
    for name in (
        "discovery: version and hookVersion",
        "FHIR fallback",
        "paging",
        "a replayed token (same jti) is refused",
        "a token valid for a year is refused",
        "412 without prefetch or fhirServer names the prefetch key",
    ):
        assert any(name in line for line in lines if line.startswith("PASS")), name
    assert "-> 200" in done.stdout  # the exchanges are shown


def test_selftest_fails_with_a_non_zero_exit_when_the_service_accepts_unsigned_calls(tmp_path):
    signer = ClientSigner()
    service = ServedService(tmp_path / "dev", signer, workers=1, env={"CDS_ALLOW_UNSIGNED": "true"}).start()
    try:
        done = selftest("--against", service.base_url, "--trust", str(trust_file(tmp_path, signer)))
    finally:
        service.stop()
    assert done.returncode == 1
    assert "FAIL  an unsigned call is refused (bare 401)" in done.stdout
    assert done.stdout.rstrip().endswith("1 failed")


def test_selftest_says_why_it_cannot_run():
    done = selftest("--against", "http://127.0.0.1:9", "--trust", "/nonexistent/selftest.toml")
    assert done.returncode == 2 and "trust file" in done.stderr


@pytest.mark.postgres
def test_selftest_passes_against_two_instances_behind_the_proxy(deployment, tmp_path):  # noqa: F811
    proxy, _instances, signer = deployment
    trust = trust_file(tmp_path / "client", signer)
    done = selftest("--against", proxy.base_url, "--trust", str(trust), "--ca-file", str(proxy.cert))
    assert done.returncode == 0, done.stdout + done.stderr
