"""EHR client profiles (issue 19): trust-file presets for Epic and Oracle Health, tested with
tokens shaped as the vendors document them, and the maximum client-JWT lifetime."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from cds_service.config import ConfigError, load_settings
from cds_service.security.client_auth import ClientAuthError, MemoryReplayGuard, audiences_for, verify_client_jwt
from cds_service.security.trust import TrustConfig, parse_trust, trust_from_settings

NOW = time.time()
BASE = "https://cds.example.org"
ENDPOINT = audiences_for(BASE, "/cds-services/hfs-outcomes-order-sign")
# Epic (open.epic "CDS Hooks": Trusting CDS Clients): RS384, a jku under the organisation's
# FHIR base, a base64 kid, iss = the organisation's FHIR endpoint, aud = the endpoint the
# health system configured, exp 15 minutes after iat, nbf 5 minutes before iat, sub = client id.
EPIC_BASE = "https://fhir.hospital.example.org/interconnect-fhir-oauth"
EPIC_JKU = f"{EPIC_BASE}/api/epic/2019/Security/Open/PublicKeys/530013/530013"
EPIC_KID = "d3bmo5HzW61TUgikHZH+A8Tx4UOXz2iOs4KvVU4eLY0="
EPIC_AUD = "https://cds.example.org/savecdshooksrequest"
ORACLE_ISS = "https://authorization.cerner.example.com/tenants/ec2458f2-1e24-41c8-b71b-0e701af7583d"
ORACLE_TENANT = "ec2458f2-1e24-41c8-b71b-0e701af7583d"


@pytest.fixture(scope="module")
def rsa_private():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_private():
    return ec.generate_private_key(ec.SECP384R1())


def jwks(private, kid: str, alg: str) -> str:
    algorithm = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
    public = json.loads(algorithm.to_jwk(private.public_key()))
    return json.dumps({"keys": [{**public, "kid": kid, "use": "sig"}]})


def trust(*issuers: dict, **kwargs) -> TrustConfig:
    return TrustConfig(issuers=parse_trust({"issuers": list(issuers)}), **kwargs)


def epic_entry(rsa_private, **more) -> dict:
    return {
        "iss": EPIC_BASE,
        "preset": "epic",
        "jwks": jwks(rsa_private, EPIC_KID, "RS384"),
        "jku_allowlist": [EPIC_JKU],
        "audiences": [EPIC_AUD],
        **more,
    }


def epic_token(private, alg: str = "RS384", **claims) -> str:
    iat = int(NOW) - 2
    payload = {
        "aud": EPIC_AUD,
        "exp": iat + 900,
        "iat": iat,
        "iss": EPIC_BASE,
        "jti": str(uuid.uuid4()),
        "nbf": iat - 300,
        "sub": "cds-client-id-1234",
        **claims,
    }
    headers = {"jku": EPIC_JKU, "kid": EPIC_KID, "typ": "JWT"}
    return "Bearer " + jwt.encode(payload, private, algorithm=alg, headers=headers)


def verify(token: str, config: TrustConfig, audience=ENDPOINT):
    return verify_client_jwt(token, audience, config, MemoryReplayGuard(), now=NOW)


def refusal(token: str, config: TrustConfig, audience=ENDPOINT) -> str:
    with pytest.raises(ClientAuthError) as refused:
        verify(token, config, audience)
    return refused.value.reason


def test_an_epic_token_as_epic_documents_it_is_accepted_with_the_epic_preset(rsa_private):
    identity = verify(epic_token(rsa_private), trust(epic_entry(rsa_private)))
    assert (identity.iss, identity.sub, identity.kid) == (EPIC_BASE, "cds-client-id-1234", EPIC_KID)


def test_without_the_preset_the_same_token_is_refused_for_its_early_nbf(rsa_private):
    entry = {k: v for k, v in epic_entry(rsa_private).items() if k != "preset"}
    assert refusal(epic_token(rsa_private), trust(entry)) == "nbf too long before iat"
    assert verify(epic_token(rsa_private), trust({**entry, "nbf_before_iat_s": 300})).iss == EPIC_BASE


def test_the_epic_preset_allows_five_minutes_of_nbf_and_rs384_only(rsa_private, ec_private):
    config = trust(epic_entry(rsa_private))
    iat = int(NOW) - 2
    assert refusal(epic_token(rsa_private, iat=iat, exp=iat + 600, nbf=iat - 400), config) == "nbf too long before iat"
    es_entry = epic_entry(rsa_private, jwks=jwks(ec_private, EPIC_KID, "ES384"))
    assert refusal(epic_token(ec_private, alg="ES384"), trust(es_entry)) == "alg not allowed for issuer"


def test_the_configured_aud_is_accepted_beside_the_endpoint_and_nothing_else(rsa_private):
    config = trust(epic_entry(rsa_private))
    assert verify(epic_token(rsa_private, aud=ENDPOINT[0]), config).iss == EPIC_BASE
    assert refusal(epic_token(rsa_private, aud="https://elsewhere.example.org/cds"), config) == "wrong aud"
    unconfigured = trust(epic_entry(rsa_private, audiences=None))
    assert refusal(epic_token(rsa_private), unconfigured) == "wrong aud"


@pytest.mark.parametrize(
    ("lifetime", "accepted"), [(900, True), (901 + 30, False), (3600, False), (365 * 24 * 3600, False)]
)
def test_a_client_jwt_lives_at_most_15_minutes_by_default(rsa_private, lifetime, accepted):
    entry = epic_entry(rsa_private)
    iat = int(NOW) - 2
    token = epic_token(rsa_private, iat=iat, exp=iat + lifetime)
    if accepted:
        assert verify(token, trust(entry)).iss == EPIC_BASE
    else:
        assert refusal(token, trust(entry)) == "lifetime too long (exp - iat)"


def test_the_maximum_lifetime_is_configurable_globally_and_per_issuer(rsa_private):
    iat = int(NOW) - 2
    hour = epic_token(rsa_private, iat=iat, exp=iat + 3600)
    assert verify(hour, trust(epic_entry(rsa_private), max_lifetime_s=3600)).iss == EPIC_BASE
    hour = epic_token(rsa_private, iat=iat, exp=iat + 3600)
    assert verify(hour, trust(epic_entry(rsa_private, max_lifetime_s=3600))).iss == EPIC_BASE
    assert trust_from_settings(load_settings({"jwt_max_lifetime_s": 60}, environ={})).max_lifetime_s == 60
    assert trust_from_settings(load_settings({}, environ={})).max_lifetime_s == 900
    with pytest.raises(ConfigError, match="jwt_max_lifetime_s"):
        trust_from_settings(load_settings({"jwt_max_lifetime_s": 0}, environ={}))


def oracle_token(private, **claims) -> str:
    iat = int(NOW) - 1
    payload = {
        "iss": ORACLE_ISS,
        "aud": ENDPOINT[0],
        "exp": iat + 300,
        "iat": iat,
        "jti": str(uuid.uuid4()),
        "tenant": ORACLE_TENANT,
        **claims,
    }
    return "Bearer " + jwt.encode(payload, private, algorithm="ES384", headers={"kid": "oracle-1", "typ": "JWT"})


def oracle_entry(ec_private, **more) -> dict:
    return {
        "iss": ORACLE_ISS,
        "preset": "oracle-health",
        "jwks": jwks(ec_private, "oracle-1", "ES384"),
        "tenants": [ORACLE_TENANT],
        **more,
    }


def test_an_oracle_health_token_for_a_listed_tenant_is_accepted(ec_private):
    config = trust(oracle_entry(ec_private))
    assert verify(oracle_token(ec_private), config).tenant == ORACLE_TENANT
    assert refusal(oracle_token(ec_private, tenant="another-tenant"), config) == "tenant not allowed"


def test_the_oracle_health_preset_needs_an_https_issuer_and_unknown_presets_are_refused(ec_private):
    with pytest.raises(ConfigError, match="oracle-health"):
        parse_trust({"issuers": [oracle_entry(ec_private, iss="urn:oracle")]})
    with pytest.raises(ConfigError, match="preset"):
        parse_trust({"issuers": [oracle_entry(ec_private, preset="meditech")]})
