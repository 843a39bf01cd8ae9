"""Which CDS clients we trust, and with which keys (CDS Hooks 2.0, "Trusting CDS Clients").

Trust is configuration. A TOML trust file (setting `trust_file`) lists the issuers:

    [[issuers]]
    iss = "https://ehr.example.org"                 # exact `iss` claim value
    jwks_file = "keys/ehr-jwks.json"                # relative to the trust file's folder
    # or: jwks = '{"keys": [...]}'   (inline JSON string)   or   [issuers.jwks] keys = [...]
    jku_allowlist = ["https://ehr.example.org/.well-known/jwks.json"]
    tenants = ["2ddd6c3a-8e9a-44c6-a305-52111ad302a2"]    # optional
    algorithms = ["ES384", "RS384"]                       # optional subset
    jwks_min_refresh_s = 60                               # optional, remote key sets
    jwks_max_age_s = 3600                                 # optional, remote key sets
    preset = "epic"                 # optional: "epic" or "oracle-health" (EHR client profiles)
    audiences = ["https://cds.example.org/cds-services/hfs-outcomes-order-sign"]  # optional
    max_lifetime_s = 900            # optional: longest exp - iat accepted (setting jwt_max_lifetime_s)
    nbf_before_iat_s = 300          # optional: how long before iat nbf may be (default 0)
    evidence_smart_launch_url = "https://cds.example.org/evidence-app/launch"  # optional
    site = "hospital-a"      # optional: the site overlay (setting site_overlays) its calls use;
                             # or { "<tenant>" = "hospital-a", ... } per tenant

An issuer needs at least one key source: static keys (`jwks` or `jwks_file`, public keys
only) and/or `jku_allowlist`. A remote key set is only ever fetched from a URL on the
issuer's allowlist, with a short timeout and a size cap, cached by `kid`, refetched when an
unknown `kid` is seen or the cache is older than `jwks_max_age_s`, and never more often
than once per `jwks_min_refresh_s` (so a stream of made-up kids cannot make us refetch on
every request).

EHR client profiles (issue 19). `preset = "epic"`: Epic signs RS384 (the algorithms default
to that), sets `nbf` 5 minutes before `iat` (accepted: `nbf_before_iat_s` 300) and `aud` to
the endpoint the health system typed into Epic (give it in `audiences` when it is not the URL
the service sees). `preset = "oracle-health"`: `iss` must be the https URL Oracle Health
names as the issuer, and its tenants (the `tenant` claim) should be listed. `audiences`
are accepted as `aud` besides the URL of the endpoint called. `evidence_smart_launch_url`:
this issuer's EHR launches apps rather than opening URLs, so the evidence page link on its
cards is a SMART app link (`type: "smart"`, that launch URL, `appContext` = the page token).

`trust_sandbox = true` adds the public CDS Hooks Sandbox (its public key set is shipped in
the package as `trust_sandbox_jwks.json`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import requests
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt import PyJWK
from jwt.exceptions import PyJWTError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from cds_service.config import ConfigError, Settings

log = logging.getLogger(__name__)

# Asymmetric algorithms only: `none` and every HMAC algorithm are refused by construction.
SUPPORTED_ALGORITHMS: frozenset[str] = frozenset(
    {
        "ES256",
        "ES384",
        "ES512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
    }
)

SANDBOX_ISS = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_JWKS_PATH = Path(__file__).with_name("trust_sandbox_jwks.json")

JWKS_FETCH_TIMEOUT_S = 2.0
JWKS_MAX_BYTES = 64 * 1024
JWKS_MIN_REFRESH_S = 60.0
JWKS_MAX_AGE_S = 3600.0
MIN_RSA_BITS = 2048

# EHR client profiles: what a preset sets unless the issuer's entry says otherwise.
PRESETS: dict[str, dict[str, Any]] = {
    # Epic's CDS Hooks JWT: alg RS384 by default, nbf "typically set to 5 minutes prior to the
    # issue time", aud configured by the health system, exp 15 minutes after iat.
    "epic": {"algorithms": ["RS384"], "nbf_before_iat_s": 300.0},
    # Oracle Health: its issuer URL (checked to be https) and tenants come from the site.
    "oracle-health": {},
}

_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_EC_CURVE_FOR_ALG = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


class KeyResolutionError(Exception):
    """No usable key for a token; `reason` is a short, log-safe phrase."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TrustedKey:
    kid: str
    key: PublicKey
    alg: str | None  # the JWK's own `alg`, if it names one

    def accepts(self, alg: str) -> bool:
        """True if this key may verify a signature made with `alg` (key type and curve match)."""
        if self.alg is not None and self.alg != alg:
            return False
        key = self.key
        if alg in _EC_CURVE_FOR_ALG:
            return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_CURVE_FOR_ALG[alg]
        if alg[:2] in ("RS", "PS"):
            return isinstance(key, rsa.RSAPublicKey)
        if alg == "EdDSA":
            return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
        return False


def parse_jwk(jwk: Any) -> TrustedKey:
    """One public JWK -> TrustedKey. Raises ValueError with a short reason."""
    if not isinstance(jwk, dict):
        raise ValueError("a JWK must be a JSON object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("a JWK without 'kid' cannot be selected")
    if jwk.get("kty") not in ("EC", "RSA", "OKP"):
        raise ValueError(f"key {kid!r}: kty {jwk.get('kty')!r} is not an asymmetric signing key")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"key {kid!r}: use {jwk.get('use')!r} is not 'sig'")
    alg = jwk.get("alg")
    if alg is not None and alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"key {kid!r}: alg {alg!r} is not a supported signing algorithm")
    public_part = {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}
    try:
        key = PyJWK(public_part).key
    except (PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"key {kid!r}: not a usable public key") from exc
    if not isinstance(
        key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)
    ):
        raise ValueError(f"key {kid!r}: not a public signing key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise ValueError(f"key {kid!r}: RSA keys must have at least {MIN_RSA_BITS} bits")
    return TrustedKey(kid=kid, key=key, alg=alg)


def parse_jwks(document: Any, *, strict: bool) -> dict[str, TrustedKey]:
    """A JWK Set -> keys by kid. Strict (configuration): any bad key is an error.
    Lenient (fetched): unusable keys are skipped, the rest are kept."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("a JWK Set must be an object with a 'keys' list")
    keys: dict[str, TrustedKey] = {}
    for jwk in document["keys"]:
        if strict and isinstance(jwk, dict) and any(m in jwk for m in _PRIVATE_MEMBERS):
            raise ValueError(f"key {jwk.get('kid')!r}: private or symmetric key material in a trust file")
        try:
            parsed = parse_jwk(jwk)
        except ValueError:
            if strict:
                raise
            continue
        if parsed.kid in keys:
            if strict:
                raise ValueError(f"key {parsed.kid!r} appears twice")
            continue
        keys[parsed.kid] = parsed
    return keys


class RemoteKeySet:
    """The JWK Set at one allowlisted URL, fetched on demand and cached by kid.

    Thread-safe. A fetch happens when a kid is not cached or the cache is older than
    `max_age_s`, but never sooner than `min_refresh_s` after the previous attempt. If a
    refetch fails, the keys already held are kept."""

    def __init__(
        self,
        url: str,
        *,
        session: requests.Session,
        min_refresh_s: float = JWKS_MIN_REFRESH_S,
        max_age_s: float = JWKS_MAX_AGE_S,
        timeout_s: float = JWKS_FETCH_TIMEOUT_S,
        max_bytes: int = JWKS_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._session = session
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._keys: dict[str, TrustedKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()

    def get(self, kid: str) -> TrustedKey | None:
        now = self._clock()
        key = self._keys.get(kid)
        if key is not None and not self._stale(now):
            return key
        with self._lock:
            now = self._clock()
            key = self._keys.get(kid)
            if key is not None and not self._stale(now):
                return key
            if self._attempted_at is None or now - self._attempted_at >= self._min_refresh_s:
                self._attempted_at = now
                self._refresh(now)
            return self._keys.get(kid)

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self._max_age_s

    def _refresh(self, now: float) -> None:
        try:
            document = self._download()
            keys = parse_jwks(document, strict=False)
        except (requests.RequestException, ValueError) as exc:
            log.warning("JWKS fetch failed: url=%s reason=%s", self.url, _fetch_reason(exc))
            return
        self._keys = keys
        self._fetched_at = now
        log.info("JWKS fetched: url=%s keys=%d", self.url, len(keys))

    def _download(self) -> Any:
        with self._session.get(
            self.url,
            timeout=self._timeout_s,
            stream=True,
            allow_redirects=False,
            headers={"Accept": "application/jwk-set+json, application/json"},
        ) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code}")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > self._max_bytes:
                raise ValueError("response too large")
            body = bytearray()
            for chunk in response.iter_content(chunk_size=8192):
                body.extend(chunk)
                if len(body) > self._max_bytes:
                    raise ValueError("response too large")
        try:
            return json.loads(bytes(body))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ValueError("response is not JSON") from exc


def _fetch_reason(exc: Exception) -> str:
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.RequestException):
        return "connection failed"
    return str(exc)


@dataclass
class Issuer:
    iss: str
    static_keys: dict[str, TrustedKey] = field(default_factory=dict)
    remote_sets: dict[str, RemoteKeySet] = field(default_factory=dict)  # by allowlisted URL
    tenants: frozenset[str] | None = None
    algorithms: frozenset[str] = SUPPORTED_ALGORITHMS
    audiences: frozenset[str] = frozenset()  # accepted as `aud` besides the endpoint called
    max_lifetime_s: float | None = None  # None: the setting jwt_max_lifetime_s
    nbf_before_iat_s: float = 0.0  # how long before `iat` an `nbf` may be
    preset: str | None = None
    evidence_smart_launch_url: str | None = None  # evidence link as a SMART app link
    # The site (hospital) whose overlay this client's calls are evaluated with: one name, or
    # a name per tenant ({tenant = site}); None: the deployment's shared content.
    site: str | dict[str, str] | None = None

    def site_for(self, tenant: str | None) -> str | None:
        if isinstance(self.site, dict):
            return self.site.get(tenant) if tenant is not None else None
        return self.site

    @property
    def jku_allowlist(self) -> tuple[str, ...]:
        return tuple(self.remote_sets)

    def resolve_key(self, kid: str, jku: str | None) -> TrustedKey:
        """The key named `kid` for this issuer.

        A token that names a `jku` must name one on the allowlist (even when the kid is one
        of the static keys). Static keys are looked up first; then the set at the token's
        `jku`, or without a `jku` every allowlisted set."""
        if jku is not None and jku not in self.remote_sets:
            raise KeyResolutionError("jku not allowed")
        key = self.static_keys.get(kid)
        if key is not None:
            return key
        sets = [self.remote_sets[jku]] if jku is not None else list(self.remote_sets.values())
        for remote in sets:
            key = remote.get(kid)
            if key is not None:
                return key
        raise KeyResolutionError("unknown kid")


@dataclass
class TrustConfig:
    issuers: dict[str, Issuer] = field(default_factory=dict)
    leeway_s: int = 30
    max_lifetime_s: float = 900.0  # longest exp - iat of a client JWT (setting jwt_max_lifetime_s)
    allow_unsigned: bool = False  # development only: see client_auth.log_dev_mode_warning

    def issuer(self, iss: str) -> Issuer | None:
        return self.issuers.get(iss)


class TrustDocument(BaseModel):
    """The trust file: `[[issuers]]` tables (each checked by IssuerEntry)."""

    model_config = ConfigDict(extra="forbid")

    issuers: list[Any] = Field(default_factory=list)


def _non_empty_strings(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value is not None and (not isinstance(value, list) or not all(isinstance(x, str) and x for x in value)):
            raise ValueError(f"'{name}' must be a list of non-empty strings")
        return value

    return check


def _positive_seconds(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"'{name}' must be a positive number of seconds")
        return float(value)

    return check


class IssuerEntry(BaseModel):
    """One `[[issuers]]` table as written; the key material is checked after (parse_jwks)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    iss: str
    jwks: Any = None
    jwks_file: Any = None
    jku_allowlist: Annotated[list[str] | None, BeforeValidator(_non_empty_strings("jku_allowlist"))] = None
    tenants: Annotated[list[str] | None, BeforeValidator(_non_empty_strings("tenants"))] = None
    algorithms: Annotated[list[str] | None, BeforeValidator(_non_empty_strings("algorithms"))] = None
    jwks_min_refresh_s: Annotated[float, BeforeValidator(_positive_seconds("jwks_min_refresh_s"))] = JWKS_MIN_REFRESH_S
    jwks_max_age_s: Annotated[float, BeforeValidator(_positive_seconds("jwks_max_age_s"))] = JWKS_MAX_AGE_S
    preset: str | None = None
    audiences: Annotated[list[str] | None, BeforeValidator(_non_empty_strings("audiences"))] = None
    max_lifetime_s: Annotated[float | None, BeforeValidator(_positive_seconds("max_lifetime_s"))] = None
    nbf_before_iat_s: float | None = None
    evidence_smart_launch_url: str | None = None

    @field_validator("evidence_smart_launch_url")
    @classmethod
    def _launch_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("'evidence_smart_launch_url' must be an http(s) URL")
        return value

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str | None) -> str | None:
        if value is not None and value not in PRESETS:
            raise ValueError(f"preset {value!r} is not one of {sorted(PRESETS)}")
        return value

    @field_validator("nbf_before_iat_s", mode="before")
    @classmethod
    def _not_negative(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ValueError("'nbf_before_iat_s' must be a number of seconds, 0 or more")
        return value

    site: str | dict[str, str] | None = None  # the site overlay its calls use (multi-site deployments)

    @field_validator("iss", mode="before")
    @classmethod
    def _iss(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("'iss' is required (the exact iss claim of the client's JWTs)")
        return value

    @field_validator("jku_allowlist")
    @classmethod
    def _http_urls(cls, value: list[str] | None) -> list[str] | None:
        for url in value or ():
            if not url.startswith(("https://", "http://")):
                raise ValueError(f"jku_allowlist entry {url!r} is not an http(s) URL")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        refused = set(value) - SUPPORTED_ALGORITHMS
        if refused:
            raise ValueError(
                f"algorithms {sorted(refused)} are not allowed; choose from {sorted(SUPPORTED_ALGORITHMS)}"
            )
        if not value:
            raise ValueError("'algorithms' must not be empty")
        return value

    @model_validator(mode="after")
    def _preset_rules(self) -> IssuerEntry:
        if self.preset == "oracle-health" and not self.iss.startswith("https://"):
            raise ValueError("preset 'oracle-health': 'iss' must be the https issuer URL Oracle Health gives")
        return self

    @model_validator(mode="after")
    def _key_sources(self) -> IssuerEntry:
        if self.jwks is not None and self.jwks_file is not None:
            raise ValueError("give 'jwks' or 'jwks_file', not both")
        if self.jwks is None and self.jwks_file is None and not self.jku_allowlist:
            raise ValueError("needs keys: 'jwks', 'jwks_file' and/or 'jku_allowlist'")
        return self


def _why(error: ValidationError) -> str:
    """The clearest single reason in a pydantic error, in the trust file's own terms."""
    errors = error.errors(include_url=False)
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return f"unknown keys {unknown}"
    for item in errors:
        if item["loc"] and item["loc"][0] == "iss":
            return "'iss' is required (the exact iss claim of the client's JWTs)"
    item = errors[0]
    return item["msg"].removeprefix("Value error, ")


def parse_trust(
    document: Mapping[str, Any],
    *,
    base_dir: Path = Path("."),
    session: requests.Session | None = None,
    clock: Callable[[], float] = time.monotonic,
    source: str = "trust file",
) -> dict[str, Issuer]:
    """The `[[issuers]]` of a parsed trust file -> issuers by iss. Raises ConfigError."""
    try:
        parsed = TrustDocument.model_validate(document)
    except ValidationError as exc:
        unknown = sorted(str(e["loc"][0]) for e in exc.errors() if e["type"] == "extra_forbidden")
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {unknown}") from None
        raise ConfigError(f"{source}: 'issuers' must be an array of tables ([[issuers]])") from None
    session = session or _jwks_session()
    issuers: dict[str, Issuer] = {}
    for index, entry in enumerate(parsed.issuers):
        where = f"{source}: issuers[{index}]"
        issuer = _parse_issuer(entry, where, base_dir, session, clock)
        if issuer.iss in issuers:
            raise ConfigError(f"{where}: issuer {issuer.iss!r} is listed twice")
        issuers[issuer.iss] = issuer
    return issuers


def _parse_issuer(
    raw: Any, where: str, base_dir: Path, session: requests.Session, clock: Callable[[], float]
) -> Issuer:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table")
    if isinstance(raw.get("iss"), str) and raw["iss"].strip():
        where = f"{where} ({raw['iss']})"
    try:
        entry = IssuerEntry.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_why(exc)}") from None

    static_keys: dict[str, TrustedKey] = {}
    if entry.jwks is not None or entry.jwks_file is not None:
        document = _read_jwks_entry(entry, where, base_dir)
        try:
            static_keys = parse_jwks(document, strict=True)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if not static_keys:
            raise ConfigError(f"{where}: the key set is empty")

    remote_sets = {
        url: RemoteKeySet(
            url, session=session, min_refresh_s=entry.jwks_min_refresh_s, max_age_s=entry.jwks_max_age_s, clock=clock
        )
        for url in entry.jku_allowlist or ()
    }
    preset = PRESETS.get(entry.preset or "", {})
    algorithms = entry.algorithms if entry.algorithms is not None else preset.get("algorithms")
    nbf_before_iat = entry.nbf_before_iat_s if entry.nbf_before_iat_s is not None else preset.get("nbf_before_iat_s")
    return Issuer(
        iss=entry.iss,
        static_keys=static_keys,
        remote_sets=remote_sets,
        tenants=frozenset(entry.tenants) if entry.tenants is not None else None,
        algorithms=frozenset(algorithms) if algorithms is not None else SUPPORTED_ALGORITHMS,
        audiences=frozenset(entry.audiences or ()),
        max_lifetime_s=entry.max_lifetime_s,
        nbf_before_iat_s=float(nbf_before_iat or 0.0),
        preset=entry.preset,
        evidence_smart_launch_url=entry.evidence_smart_launch_url,
        site=entry.site,
    )


def _read_jwks_entry(entry: IssuerEntry, where: str, base_dir: Path) -> Any:
    if entry.jwks_file is not None:
        raw_path = entry.jwks_file
        if not isinstance(raw_path, str) or not raw_path:
            raise ConfigError(f"{where}: 'jwks_file' must be a path")
        path = Path(raw_path)
        if not path.is_absolute():
            path = base_dir / path
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read jwks_file {path}: {exc.strerror}") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{where}: jwks_file {path} is not JSON") from exc
    value = entry.jwks
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: 'jwks' is not a JSON string") from exc
    if isinstance(value, dict):
        return value
    raise ConfigError(f"{where}: 'jwks' must be a JSON string or a table with 'keys'")


def _jwks_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    return session


def sandbox_issuer(session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic) -> Issuer:
    """The public CDS Hooks Sandbox: ES384, its shipped key set, its jku on the allowlist."""
    document = json.loads(SANDBOX_JWKS_PATH.read_text(encoding="utf-8"))
    return Issuer(
        iss=SANDBOX_ISS,
        static_keys=parse_jwks(document, strict=True),
        remote_sets={SANDBOX_JKU: RemoteKeySet(SANDBOX_JKU, session=session or _jwks_session(), clock=clock)},
        tenants=None,
        algorithms=frozenset({"ES384"}),
    )


def load_trust_file(
    path: Path, *, session: requests.Session | None = None, clock: Callable[[], float] = time.monotonic
) -> dict[str, Issuer]:
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"trust file {path}: cannot read it ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"trust file {path}: not valid TOML ({exc})") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"trust file {path}: not UTF-8 text") from None
    return parse_trust(document, base_dir=Path(path).parent, source=f"trust file {path}", session=session, clock=clock)


# Said at start-up when no CDS client can be trusted: how to call the service instead of a 401.
NO_TRUST_WARNING = (
    "no trusted CDS clients are configured: every CDS Hooks call will be answered 401. To call the service: "
    "`cds-service demo` (runs the service and calls it as an EHR would, printing the cards); "
    "`scripts/serve --allow-unsigned` for local development only (accepts calls without a client JWT); "
    "a trust file for an EHR (`CDS_TRUST_FILE=trust.toml`, or `trust_file` in the --config file: its issuers "
    "and their JWKS); `CDS_TRUST_SANDBOX=1` to accept the public CDS Hooks Sandbox "
    "(https://sandbox.cds-hooks.org)."
)


def trust_from_settings(
    settings: Settings,
    *,
    session: requests.Session | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrustConfig:
    """Build the trust configuration once at start-up. Raises ConfigError."""
    session = session or _jwks_session()
    issuers: dict[str, Issuer] = {}
    if settings.trust_sandbox:
        issuers[SANDBOX_ISS] = sandbox_issuer(session, clock)
    if settings.trust_file is not None:
        from_file = load_trust_file(settings.trust_file, session=session, clock=clock)
        if SANDBOX_ISS in from_file and settings.trust_sandbox:
            log.info("trust file defines %s itself; its entry replaces the built-in sandbox", SANDBOX_ISS)
        issuers.update(from_file)
    if settings.jwt_leeway_s < 0:
        raise ConfigError("jwt_leeway_s must not be negative")
    if settings.jwt_max_lifetime_s <= 0:
        raise ConfigError("jwt_max_lifetime_s must be a positive number of seconds")
    if not issuers and not settings.allow_unsigned:
        log.warning(NO_TRUST_WARNING)
    return TrustConfig(
        issuers=issuers,
        leeway_s=settings.jwt_leeway_s,
        allow_unsigned=settings.allow_unsigned,
        max_lifetime_s=float(settings.jwt_max_lifetime_s),
    )
