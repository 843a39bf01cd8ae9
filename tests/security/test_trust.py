"""Trust configuration: which CDS clients (issuers) we trust, and how their keys are found."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support.paths import SPEC_EXAMPLES_DIR
from werkzeug import Response

from cds_service.config import ConfigError, load_settings
from cds_service.security.trust import (
    SANDBOX_ISS,
    SANDBOX_JKU,
    SANDBOX_JWKS_PATH,
    SUPPORTED_ALGORITHMS,
    KeyResolutionError,
    RemoteKeySet,
    load_trust_file,
    parse_jwk,
    parse_trust,
    trust_from_settings,
)

PUBLISHED_SANDBOX_JWKS = SPEC_EXAMPLES_DIR / "sandbox-jwks.json"
ISS = "https://ehr.example.org/fhir"


def ec_jwk(kid: str, curve=ec.SECP384R1(), **extra) -> dict:
    public = ec.generate_private_key(curve).public_key()
    return {**ECAlgorithm.to_jwk(public, as_dict=True), "kid": kid, **extra}


def ec_private_jwk(kid: str) -> dict:
    return {**ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()), as_dict=True), "kid": kid}


def rsa_jwk(kid: str, bits: int = 2048) -> dict:
    public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    return {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": kid}


@pytest.fixture(scope="module")
def jwks() -> dict:
    return {"keys": [ec_jwk("k-ec"), rsa_jwk("k-rsa")]}


# --------------------------------------------------------------------------- trust file


def test_a_trust_file_lists_issuers_with_inline_file_and_remote_keys(tmp_path, jwks):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "b.json").write_text(json.dumps(jwks))
    inline = json.dumps(jwks).replace('"', '\\"')
    trust_file = tmp_path / "trust.toml"
    trust_file.write_text(f"""
[[issuers]]
iss = "https://a.example"
jwks = "{inline}"
tenants = ["t1", "t2"]
algorithms = ["ES384"]

[[issuers]]
iss = "https://b.example"
jwks_file = "keys/b.json"

[[issuers]]
iss = "https://c.example"
jku_allowlist = ["https://c.example/jwks.json"]
jwks_min_refresh_s = 120

[[issuers]]
iss = "https://d.example"
[issuers.jwks]
keys = [{json.dumps(jwks["keys"][0]).replace('":', '" =')}]
""")
    issuers = load_trust_file(trust_file)
    assert set(issuers) == {"https://a.example", "https://b.example", "https://c.example", "https://d.example"}
    a, b, c, d = (issuers[i] for i in sorted(issuers))
    assert sorted(a.static_keys) == ["k-ec", "k-rsa"] and a.tenants == {"t1", "t2"}
    assert a.algorithms == {"ES384"}
    assert sorted(b.static_keys) == ["k-ec", "k-rsa"] and b.tenants is None
    assert b.algorithms == SUPPORTED_ALGORITHMS
    assert c.static_keys == {} and c.jku_allowlist == ("https://c.example/jwks.json",)
    assert list(d.static_keys) == ["k-ec"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"jwks": "{}"}, "'iss' is required"),
        ({"iss": ISS}, "needs keys"),
        ({"iss": ISS, "jwks": "not json"}, "not a JSON string"),
        ({"iss": ISS, "jwks": {"keys": []}}, "empty"),
        ({"iss": ISS, "jwks_file": "no-such-folder/jwks.json"}, "cannot read jwks_file"),
        ({"iss": ISS, "jwks": {"keys": []}, "jwks_file": "x.json"}, "not both"),
        ({"iss": ISS, "jku_allowlist": ["ftp://x/jwks"]}, "not an http(s) URL"),
        ({"iss": ISS, "jku_allowlist": "https://x/jwks"}, "list of non-empty strings"),
        ({"iss": ISS, "jku_allowlist": ["https://x/jwks"], "algorithms": ["HS256"]}, "not allowed"),
        ({"iss": ISS, "jku_allowlist": ["https://x/jwks"], "algorithms": ["none"]}, "not allowed"),
        ({"iss": ISS, "jku_allowlist": ["https://x/jwks"], "algorithms": []}, "must not be empty"),
        ({"iss": ISS, "jku_allowlist": ["https://x/jwks"], "jwks_min_refresh_s": 0}, "positive"),
        ({"iss": ISS, "jku_allowlist": ["https://x/jwks"], "tenant": ["t"]}, "unknown keys ['tenant']"),
    ],
)
def test_a_trust_file_mistake_is_a_clear_start_up_error(entry, message):
    with pytest.raises(ConfigError) as error:
        parse_trust({"issuers": [entry]})
    assert message in str(error.value)


@pytest.mark.parametrize(
    "key, message",
    [
        ({"kty": "oct", "kid": "s", "k": "c2VjcmV0"}, "private or symmetric"),
        ("private-ec", "private or symmetric"),
        ("rsa-1024", "at least 2048 bits"),
        ("no-kid", "without 'kid'"),
        ("enc", "is not 'sig'"),
        ("hs-alg", "not a supported signing algorithm"),
        ({"kty": "EC", "kid": "bad", "crv": "P-384", "x": "AAAA", "y": "AAAA"}, "not a usable public key"),
    ],
)
def test_only_public_signing_keys_may_be_trusted(key, message):
    key = (
        {
            "private-ec": lambda: ec_private_jwk("p"),
            "rsa-1024": lambda: rsa_jwk("small", bits=1024),
            "no-kid": lambda: {k: v for k, v in ec_jwk("x").items() if k != "kid"},
            "enc": lambda: ec_jwk("e", use="enc"),
            "hs-alg": lambda: ec_jwk("h", alg="HS256"),
        }.get(key, lambda: key)()
        if isinstance(key, str)
        else key
    )
    with pytest.raises(ConfigError) as error:
        parse_trust({"issuers": [{"iss": ISS, "jwks": {"keys": [key]}}]})
    assert message in str(error.value)


def test_an_issuer_listed_twice_is_an_error(jwks):
    entry = {"iss": ISS, "jwks": jwks}
    with pytest.raises(ConfigError, match="listed twice"):
        parse_trust({"issuers": [entry, entry]})


def test_unknown_top_level_keys_and_bad_toml_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        parse_trust({"issuer": []})
    bad = tmp_path / "trust.toml"
    bad.write_text("[[issuers]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_trust_file(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_trust_file(tmp_path / "missing.toml")


def test_key_type_and_curve_decide_which_algorithms_a_key_accepts():
    p384 = parse_jwk(ec_jwk("a"))
    p256 = parse_jwk(ec_jwk("b", ec.SECP256R1()))
    rsa_key = parse_jwk(rsa_jwk("c"))
    pinned = parse_jwk({**rsa_jwk("d"), "alg": "PS256"})
    assert [p384.accepts(a) for a in ("ES384", "ES256", "ES512", "RS384", "EdDSA")] == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert p256.accepts("ES256") and not p256.accepts("ES384")
    assert all(rsa_key.accepts(a) for a in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"))
    assert not rsa_key.accepts("ES384") and not rsa_key.accepts("HS256")
    assert pinned.accepts("PS256") and not pinned.accepts("RS256")


# --------------------------------------------------------------------------- settings and sandbox


def test_the_sandbox_issuer_is_added_only_when_asked(tmp_path):
    assert trust_from_settings(load_settings(environ={})).issuers == {}
    trust = trust_from_settings(load_settings({"trust_sandbox": True, "jwt_leeway_s": 10}, environ={}))
    sandbox = trust.issuer(SANDBOX_ISS)
    assert sandbox is not None and trust.leeway_s == 10 and not trust.allow_unsigned
    assert sandbox.algorithms == {"ES384"}
    assert sandbox.jku_allowlist == (SANDBOX_JKU,)
    assert list(sandbox.static_keys) == ["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"]
    assert sandbox.static_keys["44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"].accepts("ES384")


def test_the_packaged_sandbox_key_set_is_the_published_one():
    assert json.loads(SANDBOX_JWKS_PATH.read_text()) == json.loads(PUBLISHED_SANDBOX_JWKS.read_text())


def test_settings_combine_the_trust_file_and_the_sandbox(tmp_path, jwks):
    trust_file = tmp_path / "trust.toml"
    trust_file.write_text(f'[[issuers]]\niss = "{ISS}"\njwks_file = "jwks.json"\n')
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    trust = trust_from_settings(
        load_settings({"trust_file": str(trust_file), "trust_sandbox": "true", "allow_unsigned": "true"}, environ={})
    )
    assert set(trust.issuers) == {ISS, SANDBOX_ISS}
    assert trust.allow_unsigned is True


def test_a_broken_trust_file_stops_start_up(tmp_path):
    trust_file = tmp_path / "trust.toml"
    trust_file.write_text('[[issuers]]\niss = "https://x"\nalgorithms = ["HS256"]\njku_allowlist = ["https://x/k"]\n')
    with pytest.raises(ConfigError, match="HS256"):
        trust_from_settings(load_settings({"trust_file": str(trust_file)}, environ={}))


# --------------------------------------------------------------------------- key resolution


def test_a_jku_must_be_on_the_issuers_allowlist_even_when_the_kid_is_static(jwks):
    issuer = parse_trust({"issuers": [{"iss": ISS, "jwks": jwks}]})[ISS]
    assert issuer.resolve_key("k-ec", None).kid == "k-ec"
    with pytest.raises(KeyResolutionError) as refused:
        issuer.resolve_key("k-ec", "https://ehr.example.org/jwks.json")
    assert refused.value.reason == "jku not allowed"
    with pytest.raises(KeyResolutionError) as unknown:
        issuer.resolve_key("k-other", None)
    assert unknown.value.reason == "unknown kid"


# --------------------------------------------------------------------------- remote key sets


class FakeClock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def fetches(server) -> int:
    return sum(1 for request, _ in server.log if request.path == "/jwks.json")


def test_the_cache_is_refreshed_when_older_than_its_maximum_age(httpserver, jwks):
    httpserver.expect_request("/jwks.json").respond_with_json(jwks)
    clock = FakeClock()
    remote = RemoteKeySet(
        httpserver.url_for("/jwks.json"), session=session(), clock=clock, min_refresh_s=60, max_age_s=600
    )
    assert remote.get("k-ec").kid == "k-ec"
    clock.t += 599
    assert remote.get("k-rsa").kid == "k-rsa"
    assert fetches(httpserver) == 1
    clock.t += 2
    assert remote.get("k-ec") is not None
    assert fetches(httpserver) == 2


def test_a_failed_refresh_keeps_the_keys_already_held(httpserver, jwks):
    httpserver.expect_ordered_request("/jwks.json").respond_with_json(jwks)
    httpserver.expect_ordered_request("/jwks.json").respond_with_data("down", status=503)
    clock = FakeClock()
    remote = RemoteKeySet(
        httpserver.url_for("/jwks.json"), session=session(), clock=clock, min_refresh_s=60, max_age_s=600
    )
    assert remote.get("k-ec") is not None
    clock.t += 700
    assert remote.get("k-ec") is not None
    assert fetches(httpserver) == 2


@pytest.mark.parametrize(
    "respond, what",
    [
        (lambda s: s.respond_with_data("x" * 70_000, content_type="application/json"), "too large"),
        (
            lambda s: s.respond_with_handler(lambda r: Response(_chunked_big(), content_type="application/json")),
            "too large, no Content-Length",
        ),
        (lambda s: s.respond_with_data("<html>", content_type="text/html"), "not JSON"),
        (lambda s: s.respond_with_json({"keys": "nope"}), "not a key set"),
        (lambda s: s.respond_with_data("[" * 60_000, content_type="application/json"), "nested too deep"),
        (lambda s: s.respond_with_data("", status=404), "404"),
        (
            lambda s: s.respond_with_data("", status=302, headers={"Location": "https://evil.example/jwks.json"}),
            "redirect",
        ),
    ],
)
def test_an_unusable_jwks_response_yields_no_keys(httpserver, respond, what):
    respond(httpserver.expect_request("/jwks.json"))
    remote = RemoteKeySet(httpserver.url_for("/jwks.json"), session=session(), clock=FakeClock())
    assert remote.get("k-ec") is None, what


def _chunked_big():
    for _ in range(100):
        yield b" " * 1024


def test_a_fetched_set_skips_unusable_keys_and_keeps_the_rest(httpserver):
    good = ec_jwk("good")
    httpserver.expect_request("/jwks.json").respond_with_json(
        {
            "keys": [
                {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
                rsa_jwk("small", bits=1024),
                {"kid": "junk"},
                "not a key",
                good,
            ]
        }
    )
    remote = RemoteKeySet(httpserver.url_for("/jwks.json"), session=session(), clock=FakeClock())
    assert remote.get("good").kid == "good"
    assert remote.get("secret") is None and remote.get("small") is None


def test_a_slow_jwks_endpoint_is_given_up_after_the_timeout(httpserver, jwks):
    release = threading.Event()

    def slow(request):
        release.wait(5)
        return Response(json.dumps(jwks), content_type="application/json")

    httpserver.expect_request("/jwks.json").respond_with_handler(slow)
    remote = RemoteKeySet(httpserver.url_for("/jwks.json"), session=session(), clock=FakeClock(), timeout_s=0.2)
    started = time.monotonic()
    try:
        assert remote.get("k-ec") is None
        assert time.monotonic() - started < 1.0
    finally:
        release.set()
        deadline = time.monotonic() + 5  # let the server finish before the next test
        while not httpserver.log and time.monotonic() < deadline:
            time.sleep(0.01)
