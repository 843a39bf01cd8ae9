"""A sekmet FHIR server with SMART Backend Services, loaded with seeded synthetic cohorts.

Its own instance (not the shared `fhir_server`), so that a system-level $export holds only
these cohorts: RFA and AMR patients (learned at system level), three BTX-A cohorts (an effect,
a no-effect and, for the monitor, a drifted one) each in a Group (learned and monitored at
Group level), and bystanders in no cohort.
Two SMART clients are registered: one RS384 (RSA) and one ES384 (P-384) key.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support import log_guard
from support.fhir_server_fixture import _free_port, created_ids, running_sekmet
from support.synthetic_cohort import BtxaTruth, Generator

SEED = 11
N_RFA, N_AMR, N_BTXA, N_NULL, N_BYSTANDERS = 300, 450, 500, 300, 100
NULL_TRUTH = BtxaTruth(intercept=-1.1, b_hypertension=0.0, b_male=0.0, b_drinking=0.0, b_diabetes=0.0)
# The monitor's drifted cohort (issue 20): the default truth with the odds of a poor response
# 1.8 times higher (observed / expected about 1.5 for a model of the default truth).
N_DRIFT = 400
DRIFT_TRUTH = BtxaTruth(intercept=BtxaTruth().intercept + math.log(1.8))


@dataclass
class SmartServer:
    base_url: str
    token: str  # a static bearer token (loading data; the bearer-token path of `learn`)
    rsa_key: Path
    ec_key: Path
    groups: dict[str, str] = field(default_factory=dict)  # cohort -> Group id
    identifiers: set[str] = field(default_factory=set)  # names, MRNs, birth dates, resource ids loaded

    def post(self, body: dict) -> dict:
        response = requests.post(
            self.base_url,
            json=body,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/fhir+json"},
            timeout=120,
        )
        assert response.status_code < 300, response.text[:1000]
        return response.json()


def _jwk(public, alg: str, kid: str) -> dict:
    import json

    algorithm = RSAAlgorithm if alg == "RS384" else ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(public))
    jwk.update({"alg": alg, "kid": kid, "use": "sig"})
    return jwk


def _write_key(key, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


@pytest.fixture(scope="session")
def smart_fhir(tmp_path_factory) -> SmartServer:
    workdir = tmp_path_factory.mktemp("sekmet-smart")
    port = _free_port()
    token = secrets.token_urlsafe(24)
    log_guard.sensitive(token, "fhir-token")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    _write_key(rsa_key, workdir / "learn-rsa.pem")
    _write_key(ec_key, workdir / "learn-ec.pem")
    server_auth = {
        "types": ["bearer", "smart"],
        "tokens": [token],
        "smart_clients": [
            {
                "client_id": "cds-learn-rsa",
                "jwks": {"keys": [_jwk(rsa_key.public_key(), "RS384", "rsa-1")]},
                "scopes": "system/*.read",
            },
            {
                "client_id": "cds-learn-ec",
                "jwks": {"keys": [_jwk(ec_key.public_key(), "ES384", "ec-1")]},
                "scopes": "system/*.read",
            },
        ],
    }
    simulator = {"enabled": False, "delay_seconds": 0.2}
    with running_sekmet(workdir, port, server_auth, simulator) as base_url:
        server = SmartServer(base_url, token, workdir / "learn-rsa.pem", workdir / "learn-ec.pem")
        _load(server)
        yield server


def _load(server: SmartServer) -> None:
    cohorts = {}
    for name, build in (
        ("rfa", lambda g: g.rfa(N_RFA)),
        ("amr", lambda g: g.amr(N_AMR)),
        ("btxa", lambda g: g.btxa(N_BTXA)),
        ("btxa-null", lambda g: g.btxa(N_NULL, NULL_TRUTH)),
        ("bystanders", lambda g: g.bystanders(N_BYSTANDERS)),
        ("btxa-drift", lambda g: g.btxa(N_DRIFT, DRIFT_TRUTH)),  # last: the seeds above stay as they were
    ):
        generator = Generator(seed=SEED + len(cohorts))
        build(generator)
        patients = []
        for bundle in generator.population.transactions():
            response = server.post(bundle)
            patients += created_ids(response, "Patient")
            for entry in response.get("entry", []):
                location = (entry.get("response") or {}).get("location", "")
                server.identifiers.add(location.split("/_history")[0].rsplit("/", 1)[-1])
        server.identifiers |= generator.population.identifiers
        cohorts[name] = patients
    for name in ("btxa", "btxa-null", "btxa-drift"):
        group = {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in cohorts[name]],
        }
        response = server.post(
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"resource": group, "request": {"method": "POST", "url": "Group"}}],
            }
        )
        server.groups[name] = created_ids(response, "Group")[0]
