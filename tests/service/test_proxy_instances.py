"""Many instances: two `cds-service serve` on one PostgreSQL behind nginx with TLS.

The deployment of README "Deployment" on loopback: nginx (Debian's package; scripts/test
installs it when missing) terminates TLS with a test certificate made here and balances
two instances that share one PostgreSQL schema. `public_base_url` is the proxy's URL, so
the JWT `aud` a client signs for the proxy holds at either instance.

- One instance, then the other, is restarted while a client keeps calling through the
  proxy: no call fails.
- A jti used through one instance is refused through the other (the store is shared).
- A worker killed in the middle of a hook call gives the client a 502, never a 401: nginx
  does not resend a call the service may have started (its jti is already spent).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.fhir import hook_request
from support.hanging_fhir import HangingFhirServer
from support.scenario_requests import hfs_after_mvd_patient_view
from support.served import ClientSigner, ServedService, free_port

SERVICE = "/cds-services/hfs-outcomes-patient-view"

# The proxy configuration README "Deployment" points to, as shipped; only the ports and the
# certificate paths are replaced, and nginx's main context (pid, logs, temp paths) is added.
DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nginx.conf"
MAIN_CONF = """\
worker_processes 1;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {run}/access.log;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    include {run}/cds_service.conf;
}}
"""


def deployed_conf(run: Path, port: int, port_a: int, port_b: int) -> str:
    text = DEPLOY_CONF.read_text()
    replacements = {
        "server 127.0.0.1:8081 ": f"server 127.0.0.1:{port_a} ",
        "server 127.0.0.1:8082 ": f"server 127.0.0.1:{port_b} ",
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "/etc/ssl/cds/cert.pem": f"{run}/cert.pem",
        "/etc/ssl/cds/key.pem": f"{run}/key.pem",
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"deploy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    return text


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def write_test_certificate(folder: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path = folder / "cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


class Proxy:
    def __init__(self, folder: Path, port_a: int, port_b: int) -> None:
        binary = nginx_binary()
        if binary is None:
            pytest.skip("nginx is not installed (scripts/test installs it: apt-get install -y nginx)")
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.cert = write_test_certificate(folder)
        (folder / "cds_service.conf").write_text(deployed_conf(folder, self.port, port_a, port_b))
        conf = folder / "nginx.conf"
        conf.write_text(MAIN_CONF.format(run=folder))
        self.process = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(folder), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "stderr.log", "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(self.base_url + "/healthz", verify=str(self.cert), timeout=1)
                return
            except requests.RequestException:
                if self.process.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not start: {(folder / 'stderr.log').read_text()[-2000:]}")

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def deployment(tmp_path, postgres_url):
    signer = ClientSigner()
    port_a, port_b = free_port(), free_port()
    instances = []
    proxy = None
    try:
        # The proxy needs the instance ports, the instances the proxy's URL: pick the
        # instance ports first, start the proxy, then the instances.
        proxy = Proxy(tmp_path / "nginx", port_a, port_b)
        env = {"CDS_PUBLIC_BASE_URL": proxy.base_url, "CDS_DRAIN_DELAY_S": "0.5", "CDS_FHIR_TIME_BUDGET_S": "10"}
        for name, port in (("a", port_a), ("b", port_b)):
            service = ServedService(
                tmp_path / name, signer, workers=1, database_url=postgres_url, port=port, env=env
            ).start()
            instances.append(service)
        yield proxy, instances, signer
    finally:
        for service in instances:
            service.stop()
        if proxy is not None:
            proxy.stop()


def call_through(proxy: Proxy, signer: ClientSigner, patient: str) -> requests.Response:
    token = signer.token(proxy.base_url + SERVICE)
    return requests.post(
        proxy.base_url + SERVICE,
        json=hfs_after_mvd_patient_view(patient),
        headers={"Authorization": f"Bearer {token}"},
        verify=str(proxy.cert),
        timeout=15,
    )


@pytest.mark.postgres
def test_restarting_either_instance_behind_the_proxy_fails_no_call(deployment):
    proxy, (first, second), signer = deployment
    failures: list[str] = []
    answered: list[int] = []
    stop = threading.Event()

    def keep_calling() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                answer = call_through(proxy, signer, f"proxy-pt-{n}")
                if answer.status_code != 200 or not answer.json()["cards"]:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")
                answered.append(answer.status_code)
            except requests.RequestException as exc:
                failures.append(type(exc).__name__)

    client = threading.Thread(target=keep_calling)
    client.start()
    try:
        time.sleep(1.0)
        for service in (first, second):
            service.stop()
            time.sleep(0.5)
            service.start()
            time.sleep(1.0)
    finally:
        stop.set()
        client.join(timeout=30)
    assert failures == []
    assert len(answered) >= 10


@pytest.mark.postgres
def test_a_jti_used_through_one_instance_is_refused_through_the_other(deployment):
    proxy, (first, second), signer = deployment
    # The token is for the public URL (the proxy's), and each instance checks `aud`
    # against public_base_url, so it is valid at both; its jti can be spent only once.
    headers = {"Authorization": "Bearer " + signer.token(proxy.base_url + "/cds-services")}
    assert requests.get(first.base_url + "/cds-services", headers=headers, timeout=5).status_code == 200
    assert requests.get(second.base_url + "/cds-services", headers=headers, timeout=5).status_code == 401
    assert (
        requests.get(proxy.base_url + "/cds-services", headers=headers, verify=str(proxy.cert), timeout=5).status_code
        == 401
    )


def worker_pids(service: ServedService) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(service.process.pid)], capture_output=True, text=True, check=False)
    return [int(pid) for pid in out.stdout.split()]


@pytest.mark.postgres
def test_a_worker_killed_mid_call_gives_a_502_not_a_401_from_a_resent_call(deployment):
    proxy, instances, signer = deployment
    fhir = HangingFhirServer()
    try:
        body = hook_request("patient-view", patient_id="proxy-crash", fhir_server=fhir.base_url, token="fhir-token")
        token = signer.token(proxy.base_url + SERVICE)
        answers: list[requests.Response] = []
        call = threading.Thread(
            target=lambda: answers.append(
                requests.post(
                    proxy.base_url + SERVICE,
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                    verify=str(proxy.cert),
                    timeout=30,
                )
            )
        )
        call.start()
        # The worker has checked the JWT (its jti is spent) and is reading the FHIR server.
        assert fhir.asked.wait(10)
        for service in instances:  # whichever worker has the call: kill both
            for pid in worker_pids(service):
                os.kill(pid, signal.SIGKILL)
        call.join(timeout=30)
    finally:
        fhir.stop()
    assert answers, "no answer through the proxy"
    assert answers[0].status_code == 502, (answers[0].status_code, answers[0].text[:200])
