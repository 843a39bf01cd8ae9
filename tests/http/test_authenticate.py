"""The CDS client's JWT for one HTTP request: checked against the URL it called (the
public base URL when one is set), with the store as replay guard; a refusal is a bare 401
and the reason goes to the log."""

from __future__ import annotations

import json
import logging
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import request
from jwt.algorithms import ECAlgorithm

from cds_service.errors import ApiError
from cds_service.http.authenticate import authenticate

ISS = "https://ehr.example.org/fhir"
KID = "ehr-authenticate-es384"
PUBLIC_BASE = "https://cds.example.org"


@pytest.fixture(scope="module")
def key():
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture
def trust_file(tmp_path, key):
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": KID, "alg": "ES384", "use": "sig"}
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}), encoding="utf-8")
    trust = tmp_path / "trust.toml"
    trust.write_text(f'[[issuers]]\niss = "{ISS}"\njwks_file = "jwks.json"\n', encoding="utf-8")
    return trust


def token(key, aud: str, **claims) -> str:
    now = int(time.time())
    body = {"iss": ISS, "sub": "ehr-client-7", "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode({**body, **claims}, key, algorithm="ES384", headers={"kid": KID})


def identify(app, path: str, authorization: str | None):
    headers = {"Authorization": authorization} if authorization is not None else {}
    with app.test_request_context(path, method="POST", headers=headers):
        return authenticate(app.extensions["cds_service"], request)


def test_a_token_signed_for_the_url_called_identifies_the_client(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False)
    identity = identify(
        app,
        "/cds-services/hfs-outcomes-order-sign",
        f"Bearer {token(key, 'http://localhost/cds-services/hfs-outcomes-order-sign')}",
    )
    assert (identity.iss, identity.sub, identity.kid, identity.anonymous) == (ISS, "ehr-client-7", KID, False)


def test_behind_a_proxy_the_audience_is_the_public_base_url_not_the_host_the_request_reached(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False, public_base_url=PUBLIC_BASE)
    path = "/cds-services/hfs-outcomes-order-sign"
    assert identify(app, path, f"Bearer {token(key, PUBLIC_BASE + path)}").iss == ISS
    with pytest.raises(ApiError) as refused:
        identify(app, path, f"Bearer {token(key, 'http://localhost' + path)}")
    assert refused.value.status == 401


def test_feedback_accepts_a_token_for_the_service_it_belongs_to(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False, public_base_url=PUBLIC_BASE)
    signed = token(key, f"{PUBLIC_BASE}/cds-services/hfs-outcomes-order-sign")
    assert identify(app, "/cds-services/hfs-outcomes-order-sign/feedback", f"Bearer {signed}").iss == ISS


def test_a_token_used_twice_is_refused_the_second_time(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False, public_base_url=PUBLIC_BASE)
    signed = token(key, f"{PUBLIC_BASE}/cds-services")
    assert identify(app, "/cds-services", f"Bearer {signed}").iss == ISS
    with pytest.raises(ApiError) as refused:
        identify(app, "/cds-services", f"Bearer {signed}")
    assert refused.value.status == 401


def test_a_refusal_tells_the_client_nothing_and_the_log_why(make_app, trust_file, caplog):
    app = make_app(trust_file=trust_file, allow_unsigned=False)
    with caplog.at_level(logging.WARNING, logger="cds_service.http.authenticate"), pytest.raises(ApiError) as refused:
        identify(app, "/cds-services", None)
    assert (refused.value.status, refused.value.error, refused.value.detail) == (401, "unauthorized", "")
    assert "client authentication refused: missing Authorization header" in caplog.text


def test_in_development_mode_a_call_without_a_token_is_anonymous(make_app):
    identity = identify(make_app(allow_unsigned=True), "/cds-services", None)
    assert identity.anonymous and identity.iss is None
