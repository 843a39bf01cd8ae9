"""The CDS client's JWT for one HTTP request: checked against the URL it called (the
public base URL when one is set), with the store as replay guard; a refusal is a bare 401
and the reason goes to the log."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import request
from jwt.algorithms import ECAlgorithm
from support.fhir import full_prefetch, patient_view

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


# -- the jti claim of a hook call, made beside its evaluation ------------------------------
CALL = "/cds-services/hfs-outcomes-patient-view"


def hfs_patient_prefetch() -> dict:
    """Hemifacial spasm and a microvascular decompression: a chart that gets a card."""
    return full_prefetch(
        {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1967-04-02"},
        conditions=[
            {
                "resourceType": "Condition",
                "id": "hfs",
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G51.31"}]},
                "subject": {"reference": "Patient/p1"},
                "onsetDateTime": "2018-03-01",
            }
        ],
        procedures=[
            {
                "resourceType": "Procedure",
                "id": "mvd",
                "status": "completed",
                "code": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "00NM0ZZ"}]},
                "subject": {"reference": "Patient/p1"},
                "performedDateTime": "2025-06-01",
            }
        ],
    )


class _HeldGuard:
    """A replay guard whose claims wait for the test, then answer as told."""

    def __init__(self, answer=True) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.answer = answer
        self.settled_at: float | None = None

    def claim_jti(self, issuer, jti, expires_at):
        self.started.set()
        self.release.wait(10)
        self.settled_at = time.monotonic()
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _signed_call(app, key, body=None):
    body = body if body is not None else patient_view("p1", prefetch=hfs_patient_prefetch())
    headers = {"Authorization": f"Bearer {token(key, 'http://localhost' + CALL)}"}
    return app.test_client().post(CALL, json=body, headers=headers)


def _call_while_held(app, key, guard, body=None):
    """The call on a thread: (its response, when it came), released once the claim began."""
    app.extensions["cds_service"].replay_guard = guard
    out: dict = {}

    def run():
        out["response"] = _signed_call(app, key, body)
        out["at"] = time.monotonic()

    caller = threading.Thread(target=run)
    caller.start()
    assert guard.started.wait(10), "the claim was never made"
    time.sleep(0.2)  # the call has read the record by now, but must not have answered
    assert "response" not in out, "answered before the jti claim was settled"
    guard.release.set()
    caller.join(10)
    return out["response"], out["at"]


def test_a_signed_call_is_answered_only_once_its_jti_claim_has_committed(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False)
    guard = _HeldGuard(answer=True)
    response, answered_at = _call_while_held(app, key, guard)
    assert response.status_code == 200 and response.get_json()["cards"]
    assert guard.settled_at is not None and guard.settled_at <= answered_at


def test_a_replay_found_while_the_call_was_evaluated_gets_the_401_and_no_cards(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False)
    response, _ = _call_while_held(app, key, _HeldGuard(answer=False))
    assert response.status_code == 401
    assert b"cards" not in response.get_data()


def test_a_replay_goes_before_what_else_is_wrong_with_the_call(make_app, trust_file, key):
    """A replayed token with a malformed body is refused as a replay, as when the claim was
    made in line before the body was read."""
    app = make_app(trust_file=trust_file, allow_unsigned=False)
    response, _ = _call_while_held(app, key, _HeldGuard(answer=False), body={"hook": "patient-view"})
    assert response.status_code == 401


def test_a_claim_the_store_cannot_make_is_a_503_with_retry_after(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False)
    refused = ApiError(
        503, "store_unavailable", "the service's database is unavailable; retry later", {"Retry-After": "2"}
    )
    response, _ = _call_while_held(app, key, _HeldGuard(answer=refused))
    assert response.status_code == 503 and response.headers["Retry-After"] == "2"
    assert b"cards" not in response.get_data()


def test_a_claim_that_never_settles_is_a_503_within_the_bound(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False, db_statement_timeout_s=0.2)
    guard = _HeldGuard(answer=True)
    app.extensions["cds_service"].replay_guard = guard
    started = time.monotonic()
    response = _signed_call(app, key)
    guard.release.set()
    assert response.status_code == 503 and "Retry-After" in response.headers
    assert time.monotonic() - started < 5  # statement bound + 1 s, not the guard's 10 s


def test_a_token_used_twice_on_hook_calls_gets_cards_once(make_app, trust_file, key):
    app = make_app(trust_file=trust_file, allow_unsigned=False)
    headers = {"Authorization": f"Bearer {token(key, 'http://localhost' + CALL)}"}
    body = patient_view("p1", prefetch=hfs_patient_prefetch())
    client = app.test_client()
    assert client.post(CALL, json=body, headers=headers).status_code == 200
    second = client.post(CALL, json=body, headers=headers)
    assert second.status_code == 401 and b"cards" not in second.get_data()


def test_the_call_is_evaluated_while_its_jti_claim_is_being_made(make_app, trust_file, key, monkeypatch):
    """The claim's commit (an fsync on SQLite) overlaps the reading of the record instead of
    adding its latency to every signed call."""
    from cds_service import hook_call

    app = make_app(trust_file=trust_file, allow_unsigned=False)
    guard = _HeldGuard(answer=True)
    evaluated_while_held = []
    original = hook_call.answer

    def noting(*args, **kwargs):
        evaluated_while_held.append(not guard.release.is_set())
        return original(*args, **kwargs)

    monkeypatch.setattr(hook_call, "answer", noting)
    response, _ = _call_while_held(app, key, guard)
    assert response.status_code == 200
    assert evaluated_while_held == [True]
