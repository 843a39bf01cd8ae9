"""The evidence page as a SMART app link (issue 19), per issuer: an EHR that launches apps
gets `type: "smart"` with the page token as appContext; other clients keep the URL."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from support.chart import Chart

from cds_service.config import ConfigError
from cds_service.security.trust import parse_trust

LAUNCHING = "https://launching-ehr.example.org/fhir"
OPENING = "https://opening-ehr.example.org/fhir"
LAUNCH_URL = "https://cds.example.org/evidence-app/launch"
CALL = "/cds-services/hfs-outcomes-patient-view"


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def app(make_app, tmp_path, key):
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": "k1", "alg": "ES384", "use": "sig"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    trust = tmp_path / "trust.toml"
    trust.write_text(
        f'[[issuers]]\niss = "{LAUNCHING}"\njwks_file = "jwks.json"\nevidence_smart_launch_url = "{LAUNCH_URL}"\n\n'
        f'[[issuers]]\niss = "{OPENING}"\njwks_file = "jwks.json"\n',
        encoding="utf-8",
    )
    return make_app(trust_file=trust, allow_unsigned=False, as_of="2026-01-15")


def signed(key, iss: str) -> dict:
    now = int(time.time())
    claims = {"iss": iss, "aud": f"http://localhost{CALL}", "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm="ES384", headers={"kid": "k1"})}


def first_link(app, key, iss: str) -> dict:
    body = Chart(patient_id="pt-smart-1").hfs().mvd("2025-06-10T08:00:00Z").hook_request("patient-view")
    response = app.test_client().post(CALL, json=body, headers=signed(key, iss))
    assert response.status_code == 200, response.get_json()
    return response.get_json()["cards"][0]["links"][0]


def test_an_issuer_that_launches_apps_gets_the_evidence_page_as_a_smart_link(app, key):
    link = first_link(app, key, LAUNCHING)
    assert (link["type"], link["url"]) == ("smart", LAUNCH_URL)
    page = app.test_client().get(f"/evidence/{link['appContext']}")  # the token opens the page
    assert page.status_code == 200 and "text/html" in page.content_type


def test_other_issuers_keep_the_absolute_url_with_the_same_kind_of_token(app, key):
    link = first_link(app, key, OPENING)
    assert link["type"] == "absolute" and "/evidence/" in link["url"] and "appContext" not in link


def test_a_launch_url_must_be_an_http_url():
    with pytest.raises(ConfigError, match="evidence_smart_launch_url"):
        parse_trust(
            {"issuers": [{"iss": LAUNCHING, "jku_allowlist": ["https://x/j"], "evidence_smart_launch_url": "x"}]}
        )
