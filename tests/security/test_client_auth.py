"""Client authentication: the CDS client's JWT on every CDS Hooks request (CDS Hooks 2.0).

Keys are generated at test time; only the specification's public example key set and its
example token are stored (tests/data/auth/).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from support.paths import DATA_DIR
from werkzeug import Response

from cds_service.config import load_settings
from cds_service.security.client_auth import (
    ANONYMOUS_CLIENT,
    ClientAuthError,
    ClientIdentity,
    audiences_for,
    log_dev_mode_warning,
    unauthorized_response,
    verify_client_jwt,
)
from cds_service.security.trust import TrustConfig, parse_trust

AUTH_DATA = DATA_DIR / "auth"
ISS = "https://ehr.example.org/fhir"
OTHER_ISS = "https://other-ehr.example.net"
BASE = "https://cds.example.org"
SERVICE_AUD = f"{BASE}/cds-services/hfs-mvd-order"
NOW = 1_760_000_000.0


# --------------------------------------------------------------------------- helpers


class MemoryReplayGuard:
    """In-memory ReplayGuard for one process (the service uses Store.claim_jti)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        with self._lock:
            if (issuer, jti) in self.seen:
                return False
            self.seen[(issuer, jti)] = expires_at
            return True


@dataclass
class SigningKey:
    kid: str
    private: object
    alg: str
    public_jwk: dict

    def sign(self, claims: dict, *, alg: str | None = None, kid: str | None = "same", **headers) -> str:
        header = {"kid": self.kid if kid == "same" else kid, **headers}
        if header["kid"] is None:
            del header["kid"]
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=header)


def ec_key(kid: str, curve=ec.SECP384R1(), alg: str = "ES384") -> SigningKey:
    private = ec.generate_private_key(curve)
    return SigningKey(kid, private, alg, {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid})


def rsa_key(kid: str, alg: str = "RS384", bits: int = 2048) -> SigningKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return SigningKey(kid, private, alg, {**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid})


def ed_key(kid: str) -> SigningKey:
    private = ed25519.Ed25519PrivateKey.generate()
    return SigningKey(kid, private, "EdDSA", {**OKPAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid})


def claims(**overrides) -> dict:
    base = {
        "iss": ISS,
        "aud": SERVICE_AUD,
        "iat": int(NOW) - 5,
        "exp": int(NOW) + 295,
        "jti": str(uuid.uuid4()),
        "sub": "ehr-client-42",
        "tenant": "hospital-a",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made_token(header: dict, payload: dict, signature: bytes = b"") -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(signature)}"


@dataclass
class Client:
    """One trusted CDS client (issuer) and the trust configuration built around it."""

    es384: SigningKey
    rs384: SigningKey
    trust: TrustConfig
    replay: MemoryReplayGuard = field(default_factory=MemoryReplayGuard)

    def verify(self, header: str | None, audience=SERVICE_AUD, now: float = NOW) -> ClientIdentity:
        return verify_client_jwt(header, audience, self.trust, self.replay, now=now)


def trust_for(issuers: list[dict], **kwargs) -> TrustConfig:
    return TrustConfig(issuers=parse_trust({"issuers": issuers}), **kwargs)


@pytest.fixture(scope="module")
def keys() -> dict[str, SigningKey]:
    return {
        "es384": ec_key("ehr-es384"),
        "rs384": rsa_key("ehr-rs384"),
        "es256": ec_key("ehr-es256", ec.SECP256R1(), "ES256"),
        "es512": ec_key("ehr-es512", ec.SECP521R1(), "ES512"),
        "ps256": rsa_key("ehr-ps256", "PS256"),
        "rs512": rsa_key("ehr-rs512", "RS512"),
        "eddsa": ed_key("ehr-ed25519"),
        "attacker": ec_key("ehr-es384"),  # same kid, other key
        "other": ec_key("other-es384"),
    }


@pytest.fixture
def ehr(keys) -> Client:
    """The trusted EHR: signs tokens and verifies them against its trust configuration.
    (Named `ehr`, not `client`: `client` is the app's test client, tests/conftest.py.)"""
    own = ["es384", "rs384", "es256", "es512", "ps256", "rs512", "eddsa"]
    trust = trust_for(
        [
            {"iss": ISS, "jwks": {"keys": [keys[k].public_jwk for k in own]}, "tenants": ["hospital-a", "hospital-b"]},
            {"iss": OTHER_ISS, "jwks": json.dumps({"keys": [keys["other"].public_jwk]}), "algorithms": ["ES384"]},
        ]
    )
    return Client(es384=keys["es384"], rs384=keys["rs384"], trust=trust)


def bearer(token: str) -> str:
    return f"Bearer {token}"


# --------------------------------------------------------------------------- accepted


def test_a_valid_es384_token_from_a_trusted_ehr_identifies_the_client(ehr):
    c = claims()
    identity = ehr.verify(bearer(ehr.es384.sign(c)))
    assert identity == ClientIdentity(iss=ISS, sub="ehr-client-42", tenant="hospital-a", jti=c["jti"], kid="ehr-es384")
    assert not identity.anonymous


def test_a_valid_rs384_token_is_accepted_and_its_jti_is_remembered_until_exp_plus_leeway(ehr):
    c = claims(exp=int(NOW) + 120)
    identity = ehr.verify(bearer(ehr.rs384.sign(c)))
    assert identity.kid == "ehr-rs384"
    assert ehr.replay.seen[(ISS, c["jti"])] == datetime.fromtimestamp(NOW + 120 + 30, tz=UTC)


@pytest.mark.parametrize("name", ["es256", "es512", "ps256", "rs512", "eddsa"])
def test_every_supported_asymmetric_algorithm_verifies(ehr, keys, name):
    identity = ehr.verify(bearer(keys[name].sign(claims())))
    assert identity.kid == keys[name].kid


def test_aud_may_be_an_array_containing_the_endpoint_and_a_trailing_slash_is_tolerated(ehr):
    assert ehr.verify(bearer(ehr.es384.sign(claims(aud=["https://x.example", SERVICE_AUD + "/"]))))


def test_clock_skew_within_the_leeway_is_tolerated(ehr):
    token = ehr.es384.sign(claims(iat=int(NOW) + 20, exp=int(NOW) - 20, nbf=int(NOW) + 25))
    assert ehr.verify(bearer(token)).iss == ISS


def test_the_bearer_scheme_is_case_insensitive(ehr):
    assert ehr.verify("bearer  " + ehr.es384.sign(claims())).iss == ISS


def test_the_same_jti_from_two_issuers_is_two_different_tokens(ehr, keys):
    jti = "shared-nonce"
    ehr.verify(bearer(ehr.es384.sign(claims(jti=jti))))
    other = keys["other"].sign(claims(iss=OTHER_ISS, jti=jti, tenant=DROP))
    assert ehr.verify(bearer(other)).iss == OTHER_ISS


def test_the_specification_example_token_verifies_inside_its_validity_window():
    token = (AUTH_DATA / "spec-example-jwt-es384.txt").read_text().strip()
    payload = json.loads((AUTH_DATA / "spec-example-jwt-payload.json").read_text())
    trust = trust_for(
        [
            {
                "iss": payload["iss"],
                "jwks_file": str(AUTH_DATA / "spec-example-jwks.json"),
                # The example header names this jku: it must be allowlisted, but the kid is found in
                # the static key set, so nothing is fetched.
                "jku_allowlist": ["https://fhir-ehr.example.com/jwk_uri"],
                "tenants": [payload["tenant"]],
                "algorithms": ["ES384"],
                # The example is valid far longer than the 15 minutes accepted by default.
                "max_lifetime_s": payload["exp"] - payload["iat"],
            }
        ]
    )
    audience = audiences_for("https://cds.example.org/", "/cds-services/some-service")
    now = (payload["iat"] + payload["exp"]) / 2
    identity = verify_client_jwt(bearer(token), audience, trust, MemoryReplayGuard(), now=now)
    assert identity == ClientIdentity(
        iss="https://fhir-ehr.example.com/", sub=None, tenant=payload["tenant"], jti=payload["jti"], kid="example-kid"
    )

    with pytest.raises(ClientAuthError) as today:
        verify_client_jwt(bearer(token), audience, trust, MemoryReplayGuard())
    assert today.value.reason == "expired"


# --------------------------------------------------------------------------- refused


def _replayed(ehr, keys):
    token = ehr.es384.sign(claims())
    ehr.verify(bearer(token))
    return bearer(token)


def _hs256_with_public_key_as_secret(ehr, keys):
    header = {"alg": "HS256", "typ": "JWT", "kid": "ehr-es384"}
    payload = claims()
    secret = ehr.es384.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    unsigned = hand_made_token(header, payload).rsplit(".", 1)[0]
    signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return bearer(f"{unsigned}.{b64(signature)}")


def _hs256_with_the_jwk_as_secret(ehr, keys):
    header = {"alg": "HS256", "kid": "ehr-es384"}
    secret = json.dumps(ehr.es384.public_jwk).encode()
    unsigned = hand_made_token(header, claims()).rsplit(".", 1)[0]
    return bearer(f"{unsigned}.{b64(hmac.new(secret, unsigned.encode(), hashlib.sha256).digest())}")


def _alg_none(ehr, keys):
    return bearer(hand_made_token({"alg": "none", "kid": "ehr-es384"}, claims()))


def _alg_none_capitalised(ehr, keys):
    return bearer(hand_made_token({"alg": "None", "kid": "ehr-es384"}, claims()))


def _rs384_header_on_an_ec_key(ehr, keys):
    # kid names the EC key, the token is RS384 (signed with some RSA key)
    return bearer(keys["rs384"].sign(claims(), kid="ehr-es384"))


def _es256_header_on_a_p384_key(ehr, keys):
    other = ec_key("ehr-es384", ec.SECP256R1(), "ES256")
    return bearer(other.sign(claims()))


def _eddsa_header_on_an_rsa_key(ehr, keys):
    return bearer(keys["eddsa"].sign(claims(), kid="ehr-rs384"))


def _jwk_alg_differs_from_token_alg(ehr, keys):
    # PS384 token on the RSA key published with "alg": "RS384" in its JWK
    rsa = keys["rs384"]
    ehr.trust = trust_for([{"iss": ISS, "jwks": {"keys": [{**rsa.public_jwk, "alg": "RS384"}]}}])
    return bearer(rsa.sign(claims(), alg="PS384"))


REFUSALS = {
    "bad signature (other key, same kid)": (lambda c, k: bearer(k["attacker"].sign(claims())), "bad signature"),
    "payload changed after signing": (
        lambda c, k: bearer(_swap_payload(c.es384.sign(claims()), claims(sub="admin"))),
        "bad signature",
    ),
    "own key embedded in the header (jwk)": (
        lambda c, k: bearer(k["attacker"].sign(claims(), jwk=k["attacker"].public_jwk)),
        "bad signature",
    ),
    "unknown kid": (lambda c, k: bearer(c.es384.sign(claims(), kid="no-such-kid")), "unknown kid"),
    "no kid": (lambda c, k: bearer(c.es384.sign(claims(), kid=None)), "missing kid"),
    "untrusted iss": (lambda c, k: bearer(c.es384.sign(claims(iss="https://evil.example"))), "iss not trusted"),
    "iss of another trusted client with our key": (
        lambda c, k: bearer(c.es384.sign(claims(iss=OTHER_ISS))),
        "unknown kid",
    ),
    "wrong aud": (lambda c, k: bearer(c.es384.sign(claims(aud=f"{BASE}/cds-services/other"))), "wrong aud"),
    "aud of the discovery endpoint on a call": (
        lambda c, k: bearer(c.es384.sign(claims(aud=f"{BASE}/cds-services"))),
        "wrong aud",
    ),
    "aud array without the endpoint": (lambda c, k: bearer(c.es384.sign(claims(aud=["https://x"]))), "wrong aud"),
    "expired": (lambda c, k: bearer(c.es384.sign(claims(exp=int(NOW) - 31))), "expired"),
    "iat in the future": (lambda c, k: bearer(c.es384.sign(claims(iat=int(NOW) + 60))), "iat in the future"),
    "nbf in the future": (lambda c, k: bearer(c.es384.sign(claims(nbf=int(NOW) + 60))), "not yet valid (nbf)"),
    "replayed jti": (_replayed, "replayed jti"),
    "alg none": (_alg_none, "alg not allowed"),
    "alg None": (_alg_none_capitalised, "alg not allowed"),
    "HS256 with the public key PEM as secret": (_hs256_with_public_key_as_secret, "alg not allowed"),
    "HS256 with the public JWK as secret": (_hs256_with_the_jwk_as_secret, "alg not allowed"),
    "RS384 header, EC key": (_rs384_header_on_an_ec_key, "key type does not match alg"),
    "ES256 header, P-384 key": (_es256_header_on_a_p384_key, "key type does not match alg"),
    "EdDSA header, RSA key": (_eddsa_header_on_an_rsa_key, "key type does not match alg"),
    "token alg differs from the JWK's alg": (_jwk_alg_differs_from_token_alg, "key type does not match alg"),
    "alg outside the issuer's list": (lambda c, k: bearer(_other_issuer_rs(k)), "alg not allowed for issuer"),
    "missing iss": (lambda c, k: bearer(c.es384.sign(claims(iss=DROP))), "missing iss"),
    "missing aud": (lambda c, k: bearer(c.es384.sign(claims(aud=DROP))), "missing aud"),
    "missing exp": (lambda c, k: bearer(c.es384.sign(claims(exp=DROP))), "missing exp"),
    "missing iat": (lambda c, k: bearer(c.es384.sign(claims(iat=DROP))), "missing iat"),
    "missing jti": (lambda c, k: bearer(c.es384.sign(claims(jti=DROP))), "missing jti"),
    "empty jti": (lambda c, k: bearer(c.es384.sign(claims(jti=""))), "malformed jti"),
    "exp as a string": (lambda c, k: bearer(c.es384.sign(claims(exp="tomorrow"))), "malformed exp"),
    "jku not allowlisted": (
        lambda c, k: bearer(c.es384.sign(claims(), jku="https://evil.example/jwks.json")),
        "jku not allowed",
    ),
    "tenant not allowed": (lambda c, k: bearer(c.es384.sign(claims(tenant="hospital-z"))), "tenant not allowed"),
    "tenant missing where tenants are listed": (
        lambda c, k: bearer(c.es384.sign(claims(tenant=DROP))),
        "tenant not allowed",
    ),
    "crit header": (lambda c, k: bearer(c.es384.sign(claims(), crit=["exp"])), "unsupported crit header"),
    "no Authorization header": (lambda c, k: None, "missing Authorization header"),
    "Basic scheme": (lambda c, k: "Basic dXNlcjpwYXNz", "malformed Authorization header"),
    "Bearer without token": (lambda c, k: "Bearer ", "malformed Authorization header"),
    "token without scheme": (lambda c, k: c.es384.sign(claims()), "malformed Authorization header"),
    "two tokens": (
        lambda c, k: f"Bearer {c.es384.sign(claims())} {c.es384.sign(claims())}",
        "malformed Authorization header",
    ),
    "two segments": (lambda c, k: "Bearer abc.def", "malformed Authorization header"),
    "header segment not JSON": (lambda c, k: "Bearer bm90IGpzb24.e30.c2ln", "malformed token header"),
    "deeply nested claims": (
        lambda c, k: f"Bearer {b64(json.dumps({'alg': 'ES384', 'kid': 'ehr-es384'}).encode())}.{b64(b'[' * 5000)}.c2ln",
        "malformed claims",
    ),
    "claims not an object": (
        lambda c, k: f"Bearer {b64(json.dumps({'alg': 'ES384', 'kid': 'ehr-es384'}).encode())}.{b64(b'[1]')}.c2ln",
        "malformed claims",
    ),
    "exp NaN": (lambda c, k: _with_raw_claims(c, '"exp": NaN'), "malformed claims"),
    "oversized token": (lambda c, k: "Bearer " + "a" * 20000 + ".b.c", "token too large"),
}


def _with_raw_claims(ehr, raw_member: str) -> str:
    # PyJWT would not emit NaN; sign a hand-written payload with the trusted key.
    c = {k: v for k, v in claims().items() if k != "exp"}
    payload = json.dumps(c)[:-1] + ", " + raw_member + "}"
    header = b64(json.dumps({"alg": "ES384", "kid": "ehr-es384"}).encode())
    signing_input = f"{header}.{b64(payload.encode())}".encode()
    algorithm = ECAlgorithm(ECAlgorithm.SHA384)
    return bearer(f"{signing_input.decode()}.{b64(algorithm.sign(signing_input, ehr.es384.private))}")


def _other_issuer_rs(keys):
    # OTHER_ISS accepts ES384 only; an RS384 token naming its kid is refused before any key use.
    return keys["rs384"].sign(claims(iss=OTHER_ISS, tenant=DROP), kid="other-es384")


def _swap_payload(token: str, payload: dict) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(payload).encode())}.{signature}"


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_a_token_that_does_not_prove_a_trusted_client_is_refused(ehr, keys, case):
    make, reason = REFUSALS[case]
    header = make(ehr, keys)
    with pytest.raises(ClientAuthError) as refused:
        ehr.verify(header)
    assert refused.value.reason == reason


def test_the_negative_matrix_covers_the_required_attacks():
    assert len(REFUSALS) >= 12


def test_a_refused_token_does_not_consume_its_jti(ehr):
    c = claims(aud=f"{BASE}/cds-services/other")
    with pytest.raises(ClientAuthError):
        ehr.verify(bearer(ehr.es384.sign(c)))
    assert ehr.verify(bearer(ehr.es384.sign(c)), audience=f"{BASE}/cds-services/other").jti == c["jti"]


def test_the_refusal_reason_never_contains_the_token_or_sub(ehr, caplog):
    token = ehr.es384.sign(claims(sub="dr-jones", aud="https://elsewhere"))
    with pytest.raises(ClientAuthError) as refused:
        ehr.verify(bearer(token))
    text = str(refused.value)
    assert token not in text and "dr-jones" not in text
    assert text == f"wrong aud (iss={ISS!r})"


def test_the_401_answer_says_nothing_useful_to_an_attacker():
    body, status, headers = unauthorized_response()
    assert (body, status) == ({"error": "unauthorized"}, 401)
    assert headers == {"WWW-Authenticate": "Bearer"}


# --------------------------------------------------------------------------- audiences


def test_audiences_follow_the_endpoint_called():
    assert audiences_for("https://cds.example.org/", "/cds-services") == ("https://cds.example.org/cds-services",)
    assert audiences_for("https://cds.example.org", "/cds-services/hfs-order") == (
        "https://cds.example.org/cds-services/hfs-order",
    )
    assert audiences_for("https://cds.example.org/base", "/cds-services/hfs-order/feedback") == (
        "https://cds.example.org/base/cds-services/hfs-order/feedback",
        "https://cds.example.org/base/cds-services/hfs-order",
    )


def test_feedback_accepts_a_token_for_the_feedback_url_or_for_its_service(ehr):
    audience = audiences_for(BASE, "/cds-services/hfs-mvd-order/feedback")
    assert ehr.verify(bearer(ehr.es384.sign(claims(aud=SERVICE_AUD + "/feedback"))), audience)
    assert ehr.verify(bearer(ehr.es384.sign(claims(aud=SERVICE_AUD))), audience)
    with pytest.raises(ClientAuthError):
        ehr.verify(bearer(ehr.es384.sign(claims(aud=f"{BASE}/cds-services/other"))), audience)


def test_a_token_for_discovery_cannot_be_used_on_a_service(ehr):
    discovery = ehr.es384.sign(claims(aud=f"{BASE}/cds-services"))
    assert ehr.verify(bearer(discovery), audiences_for(BASE, "/cds-services")).iss == ISS
    with pytest.raises(ClientAuthError) as refused:
        ehr.verify(
            bearer(ehr.es384.sign(claims(aud=f"{BASE}/cds-services"))),
            audiences_for(BASE, "/cds-services/hfs-mvd-order"),
        )
    assert refused.value.reason == "wrong aud"


# --------------------------------------------------------------------------- development mode


def test_unsigned_requests_are_refused_by_default():
    assert load_settings(environ={}).allow_unsigned is False
    assert TrustConfig().allow_unsigned is False
    with pytest.raises(ClientAuthError):
        verify_client_jwt(None, SERVICE_AUD, TrustConfig(), MemoryReplayGuard())


def test_development_mode_accepts_a_request_without_a_token_as_anonymous():
    trust = TrustConfig(allow_unsigned=True)
    assert verify_client_jwt(None, SERVICE_AUD, trust, MemoryReplayGuard()) is ANONYMOUS_CLIENT
    assert verify_client_jwt("", SERVICE_AUD, trust, MemoryReplayGuard()).anonymous


def test_development_mode_still_verifies_a_token_that_is_sent(ehr, keys):
    ehr.trust.allow_unsigned = True
    assert ehr.verify(bearer(ehr.es384.sign(claims()))).iss == ISS
    with pytest.raises(ClientAuthError) as refused:
        ehr.verify(bearer(keys["attacker"].sign(claims())))
    assert refused.value.reason == "bad signature"
    with pytest.raises(ClientAuthError):
        ehr.verify("Basic Zm9vOmJhcg==")


def test_development_mode_is_announced_loudly(caplog):
    logger = logging.getLogger("cds_service.test")
    with caplog.at_level(logging.WARNING, logger="cds_service.test"):
        log_dev_mode_warning(logger)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "allow_unsigned" in record.getMessage() and "DEVELOPMENT" in record.getMessage()


# --------------------------------------------------------------------------- remote key sets (jku)


@pytest.fixture
def jwks_server(httpserver):
    return httpserver


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def remote_trust(url: str, clock, **issuer) -> TrustConfig:
    return TrustConfig(issuers=parse_trust({"issuers": [{"iss": ISS, "jku_allowlist": [url], **issuer}]}, clock=clock))


def jwks_requests(server) -> int:
    return sum(1 for request, _ in server.log if request.path == "/jwks.json")


def test_keys_are_fetched_from_an_allowlisted_jku_once_and_then_served_from_the_cache(jwks_server, keys):
    jwks_server.expect_request("/jwks.json").respond_with_json({"keys": [keys["es384"].public_jwk]})
    url = jwks_server.url_for("/jwks.json")
    clock = FakeClock()
    trust, replay = remote_trust(url, clock), MemoryReplayGuard()

    first = verify_client_jwt(bearer(keys["es384"].sign(claims(), jku=url)), SERVICE_AUD, trust, replay, now=NOW)
    clock.t += 30
    second = verify_client_jwt(bearer(keys["es384"].sign(claims(), jku=url)), SERVICE_AUD, trust, replay, now=NOW)
    # Without a jku header the issuer's allowlisted sets are used too.
    third = verify_client_jwt(bearer(keys["es384"].sign(claims())), SERVICE_AUD, trust, replay, now=NOW)

    assert first.kid == second.kid == third.kid == "ehr-es384"
    assert jwks_requests(jwks_server) == 1


def test_an_unknown_kid_triggers_one_refresh_which_finds_a_rotated_key(jwks_server, keys):
    old, new = keys["es384"], keys["rs384"]
    jwks_server.expect_ordered_request("/jwks.json").respond_with_json({"keys": [old.public_jwk]})
    jwks_server.expect_ordered_request("/jwks.json").respond_with_json({"keys": [old.public_jwk, new.public_jwk]})
    url = jwks_server.url_for("/jwks.json")
    clock = FakeClock()
    trust, replay = remote_trust(url, clock, jwks_min_refresh_s=60), MemoryReplayGuard()

    assert verify_client_jwt(bearer(old.sign(claims(), jku=url)), SERVICE_AUD, trust, replay, now=NOW)
    clock.t += 61
    identity = verify_client_jwt(bearer(new.sign(claims(), jku=url)), SERVICE_AUD, trust, replay, now=NOW)
    assert identity.kid == "ehr-rs384"
    assert jwks_requests(jwks_server) == 2
    jwks_server.check_assertions()


def test_made_up_kids_cannot_make_the_service_refetch_on_every_request(jwks_server, keys):
    jwks_server.expect_request("/jwks.json").respond_with_json({"keys": [keys["es384"].public_jwk]})
    url = jwks_server.url_for("/jwks.json")
    clock = FakeClock()
    trust, replay = remote_trust(url, clock, jwks_min_refresh_s=60), MemoryReplayGuard()
    verify_client_jwt(bearer(keys["es384"].sign(claims(), jku=url)), SERVICE_AUD, trust, replay, now=NOW)

    for i in range(20):
        clock.t += 2
        with pytest.raises(ClientAuthError) as refused:
            verify_client_jwt(
                bearer(keys["es384"].sign(claims(), kid=f"made-up-{i}", jku=url)), SERVICE_AUD, trust, replay, now=NOW
            )
        assert refused.value.reason == "unknown kid"
    assert jwks_requests(jwks_server) == 1  # 40 s: still inside the minimum interval

    clock.t += 30  # 70 s after the fetch: one more is allowed
    with pytest.raises(ClientAuthError):
        verify_client_jwt(
            bearer(keys["es384"].sign(claims(), kid="made-up-x", jku=url)), SERVICE_AUD, trust, replay, now=NOW
        )
    assert jwks_requests(jwks_server) == 2


def test_concurrent_requests_with_an_unknown_kid_cause_a_single_fetch(jwks_server, keys):
    def slow_jwks(request):
        time.sleep(0.2)
        return Response(json.dumps({"keys": [keys["es384"].public_jwk]}), content_type="application/json")

    jwks_server.expect_request("/jwks.json").respond_with_handler(slow_jwks)
    url = jwks_server.url_for("/jwks.json")
    trust, replay = remote_trust(url, time.monotonic), MemoryReplayGuard()
    results: list = []

    def call():
        token = keys["es384"].sign(claims(), jku=url)
        results.append(verify_client_jwt(bearer(token), SERVICE_AUD, trust, replay, now=NOW).kid)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ehr-es384"] * 8
    assert jwks_requests(jwks_server) == 1


def test_a_jku_on_another_issuers_allowlist_is_not_accepted(jwks_server, keys):
    jwks_server.expect_request("/jwks.json").respond_with_json({"keys": [keys["es384"].public_jwk]})
    url = jwks_server.url_for("/jwks.json")
    trust = TrustConfig(
        issuers=parse_trust(
            {
                "issuers": [
                    {"iss": ISS, "jwks": {"keys": [keys["rs384"].public_jwk]}},
                    {"iss": OTHER_ISS, "jku_allowlist": [url]},
                ]
            }
        )
    )
    with pytest.raises(ClientAuthError) as refused:
        verify_client_jwt(
            bearer(keys["es384"].sign(claims(), jku=url)), SERVICE_AUD, trust, MemoryReplayGuard(), now=NOW
        )
    assert refused.value.reason == "jku not allowed"
    assert jwks_requests(jwks_server) == 0


# --------------------------------------------------------------------------- with the real store


def test_replay_is_refused_by_the_database_backed_store(tmp_path, ehr):
    store_module = pytest.importorskip("cds_service.storage.store")
    store = store_module.Store(f"sqlite:///{tmp_path / 'auth.sqlite3'}")
    # Real time: the store forgets a jti once its token has expired by the wall clock.
    now = int(time.time())
    token = bearer(ehr.es384.sign(claims(iat=now, exp=now + 300)))
    identity = verify_client_jwt(token, SERVICE_AUD, ehr.trust, store)
    assert identity.iss == ISS
    # Another worker process would open the same database: a second Store instance.
    other_worker = store_module.Store(f"sqlite:///{tmp_path / 'auth.sqlite3'}")
    with pytest.raises(ClientAuthError) as refused:
        verify_client_jwt(token, SERVICE_AUD, ehr.trust, other_worker)
    assert refused.value.reason == "replayed jti"
