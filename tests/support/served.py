"""Run the real service (`cds-service serve`, gunicorn) on loopback for integration tests.

`ServedService` starts the console command in a subprocess with its own instance folder,
trust file and store, waits until it answers, and keeps its log for the leak checks.
`ClientSigner` signs CDS client JWTs (ES384) with a key the trust file trusts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from support import log_guard

ISSUER = "https://ehr.test.example/"
KID = "served-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ClientSigner:
    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def jwks(self) -> dict:
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": KID, "alg": "ES384", "use": "sig"})
        return {"keys": [jwk]}

    def token(self, audience: str, **claims) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": audience, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
        payload.update(claims)
        token = jwt.encode(payload, self.private_key, algorithm="ES384", headers={"kid": KID})
        log_guard.register_authorization(f"Bearer {token}", "jwt")
        return token


@dataclass
class ServedService:
    folder: Path
    signer: ClientSigner
    workers: int = 2
    database_url: str | None = None
    port: int = field(default_factory=free_port)
    # Extra environment for the service (settings as CDS_*); the drain delay after SIGTERM
    # is 0 unless given here, so that stopping a test service is quick.
    env: dict = field(default_factory=dict)
    threads: int | None = None
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.folder / "service.log"

    def auth(self, path: str, **claims) -> dict:
        return {"Authorization": "Bearer " + self.signer.token(self.base_url + path, **claims)}

    def start(self) -> ServedService:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "jwks.json").write_text(json.dumps(self.signer.jwks()))
        (self.folder / "trust.toml").write_text(f'[[issuers]]\niss = "{ISSUER}"\njwks_file = "jwks.json"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "DATABASE_URL"}
        env.update(
            {
                "CDS_TRUST_FILE": str(self.folder / "trust.toml"),
                "CDS_PUBLIC_BASE_URL": self.base_url,
            }
        )
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env["CDS_DRAIN_DELAY_S"] = "0"
        env.update(self.env)
        command = [
            str(Path(sys.executable).parent / "cds-service"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--instance",
            str(self.folder / "instance"),
        ]
        if self.threads:
            command += ["--threads", str(self.threads)]
        log_guard.watch_file(self.log_path)
        self._log_start = len(self.log_path.read_text(errors="replace")) if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cds-service exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                requests.options(self.base_url + "/cds-services", timeout=0.5)
                if self._workers_ready() >= self.workers:  # every worker has loaded the app
                    return self
                time.sleep(0.1)
            except (requests.ConnectionError, requests.Timeout):  # workers still booting
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("cds-service did not answer within 30 s")

    def _workers_ready(self) -> int:
        text = self.log_path.read_text(errors="replace")
        return len(text[self._log_start :].split("worker ready (pid:")) - 1

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None
