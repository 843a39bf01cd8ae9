"""Authenticate the CDS client: the signed JWT on every CDS Hooks request (CDS Hooks 2.0,
"Trusting CDS Clients").

    Authorization: Bearer <JWT>

The JWT must be signed with an asymmetric algorithm (ES*, RS*, PS*, EdDSA; never `none` or
HMAC) by a key of a trusted issuer (see trust.py), selected by the header's `kid`, whose key
type and curve fit the algorithm. Its claims: `iss` trusted; `aud` the URL of the endpoint
called (see `audiences_for`); `exp` not passed, `iat` not in the future, `nbf` (if present)
reached, all within `leeway_s`; `jti` present and used once (the replay guard keeps it until
`exp` + leeway); `tenant` in the issuer's tenant list if it has one; `sub` tolerated.

Any failure raises ClientAuthError with a short reason for the log. The route answers a
bare 401 (`unauthorized_response()`); the token is never logged, nor `sub`.

Development mode (`allow_unsigned`): a request WITHOUT an Authorization header is accepted
as the anonymous client. A request that does carry a token is still verified in full, so
dev mode never weakens a client that signs, and a bad token is still a 401.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from jwt.api_jws import PyJWS
from jwt.exceptions import InvalidSignatureError, PyJWTError
from jwt.utils import base64url_decode

from cds_service.errors import ApiError
from cds_service.security.trust import SUPPORTED_ALGORITHMS, KeyResolutionError, TrustConfig

log = logging.getLogger(__name__)

MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 255
# Largest epoch second a datetime can hold (9999-12-31T23:59:59Z).
_MAX_EPOCH = 253402300799
_BEARER = re.compile(r"^[ \t]*bearer[ \t]+([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)[ \t]*$", re.IGNORECASE)
_REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
_JWS = PyJWS(algorithms=sorted(SUPPORTED_ALGORITHMS))

UNAUTHORIZED_BODY = {"error": "unauthorized"}


class ClientAuthError(Exception):
    """The request is not from a trusted CDS client. `reason` is a short, log-safe phrase;
    `iss` (if known) is the claimed issuer, for the log only."""

    def __init__(self, reason: str, iss: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.iss = iss

    def __str__(self) -> str:
        if self.iss is None:
            return self.reason
        return f"{self.reason} (iss={self.iss[:200]!r})"


@dataclass(frozen=True)
class ClientIdentity:
    iss: str | None
    sub: str | None
    tenant: str | None
    jti: str | None
    kid: str | None
    anonymous: bool = False


ANONYMOUS_CLIENT = ClientIdentity(iss=None, sub=None, tenant=None, jti=None, kid=None, anonymous=True)


class ReplayGuard(Protocol):
    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        """Record (issuer, jti) until `expires_at`; True if it was not seen before."""
        ...


class MemoryReplayGuard:
    """JWT ids seen by this process only (thread-safe); forgotten once expired."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], datetime] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, issuer: str, jti: str) -> bool:
        return (issuer, jti) in self._seen

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        now = datetime.now(UTC)
        with self._lock:
            if len(self._seen) > 1000:
                self._seen = {key: exp for key, exp in self._seen.items() if exp >= now}
            if (issuer, jti) in self._seen:
                return False
            self._seen[(issuer, jti)] = expires_at
            return True


class StoreReplayGuard:
    """The jti replay check on the store, failing CLOSED when the store cannot answer.

    The store raises an ApiError 503 (with Retry-After) when it cannot be reached; that
    refusal reaches the client as is. With `memory_fallback` (setting
    `jti_memory_fallback`), the check falls back to this process's memory instead and logs
    a WARNING every time it does: a replay through another worker or instance then goes
    unnoticed. JWT ids claimed in memory stay refused after the store is back.
    """

    def __init__(self, store: ReplayGuard, *, memory_fallback: bool = False, logger: logging.Logger | None = None):
        self._store = store
        self._memory_fallback = memory_fallback
        self._memory = MemoryReplayGuard()
        self._log = logger or log
        self.fallback_uses = 0

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime) -> bool:
        if len(self._memory) and self._memory.seen(issuer, jti):
            return False
        try:
            return self._store.claim_jti(issuer, jti, expires_at)
        except ApiError as exc:
            if exc.status != 503 or not self._memory_fallback:
                raise
        self.fallback_uses += 1
        self._log.warning(
            "!!! jti replay check: the store is unreachable; using this process's memory "
            "(jti_memory_fallback is on: replays through other workers or instances are NOT detected) !!!"
        )
        return self._memory.claim_jti(issuer, jti, expires_at)


def audiences_for(base_url: str, path: str) -> tuple[str, ...]:
    """The `aud` values accepted for a request to `path` on the service at `base_url`.

    CDS Hooks 2.0: `aud` is "the CDS Service endpoint that is being called": the discovery
    URL for discovery, the service URL for a call. For feedback
    (`/cds-services/{id}/feedback`) the URL called is accepted (the Sandbox signs the exact
    URL) and so is the service's own URL (the feedback endpoint belongs to that service)."""
    base = base_url.rstrip("/")
    audiences = [base + path]
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "cds-services" and parts[2] == "feedback":
        audiences.append(f"{base}/cds-services/{parts[1]}")
    return tuple(audiences)


def unauthorized_response() -> tuple[dict[str, Any], int, dict[str, str]]:
    """What the route returns for a ClientAuthError: nothing that helps an attacker."""
    return dict(UNAUTHORIZED_BODY), 401, {"WWW-Authenticate": "Bearer"}


def log_dev_mode_warning(logger: logging.Logger) -> None:
    logger.warning(
        "!!! DEVELOPMENT MODE: allow_unsigned is on. CDS Hooks requests WITHOUT a JWT are "
        "accepted as an anonymous client. Never run a deployment like this. !!!"
    )


def verify_client_jwt(
    authorization_header: str | None,
    audience: str | Sequence[str],
    trust: TrustConfig,
    replay: ReplayGuard,
    now: float | None = None,
) -> ClientIdentity:
    """The verified identity of the CDS client, or ClientAuthError(reason)."""
    if authorization_header is None or not authorization_header.strip():
        if trust.allow_unsigned:
            return ANONYMOUS_CLIENT
        raise ClientAuthError("missing Authorization header")
    now = time.time() if now is None else now
    audiences = (audience,) if isinstance(audience, str) else tuple(audience)

    token = _bearer_token(authorization_header)
    header = _unverified_header(token)
    alg, kid, jku = header["alg"], header["kid"], header.get("jku")

    iss = _unverified_payload(token).get("iss")
    if not isinstance(iss, str) or not iss:
        raise ClientAuthError("missing iss")
    issuer = trust.issuer(iss)
    if issuer is None:
        raise ClientAuthError("iss not trusted", iss)
    if alg not in issuer.algorithms:
        raise ClientAuthError("alg not allowed for issuer", iss)
    try:
        trusted_key = issuer.resolve_key(kid, jku)
    except KeyResolutionError as exc:
        raise ClientAuthError(exc.reason, iss) from None
    if not trusted_key.accepts(alg):
        raise ClientAuthError("key type does not match alg", iss)

    try:
        verified = _JWS.decode_complete(token, key=trusted_key.key, algorithms=[alg])
    except InvalidSignatureError:
        raise ClientAuthError("bad signature", iss) from None
    except PyJWTError:
        raise ClientAuthError("malformed token", iss) from None
    claims = _json_object(verified["payload"], "malformed claims")

    expires_at = _check_claims(
        claims, iss, (*audiences, *sorted(issuer.audiences)), issuer.tenants, now, trust.leeway_s
    )
    _check_lifetime(claims, iss, issuer.max_lifetime_s or trust.max_lifetime_s, issuer.nbf_before_iat_s, trust.leeway_s)
    jti = claims["jti"]
    if not replay.claim_jti(iss, jti, expires_at):
        raise ClientAuthError("replayed jti", iss)
    sub = claims.get("sub")
    tenant = claims.get("tenant")
    return ClientIdentity(
        iss=iss,
        sub=sub if isinstance(sub, str) else None,
        tenant=tenant if isinstance(tenant, str) else None,
        jti=jti,
        kid=kid,
    )


def _bearer_token(authorization_header: str) -> str:
    if len(authorization_header) > MAX_TOKEN_CHARS:
        raise ClientAuthError("token too large")
    match = _BEARER.match(authorization_header)
    if match is None:
        raise ClientAuthError("malformed Authorization header")
    return match.group(1)


def _unverified_header(token: str) -> dict[str, Any]:
    header = _json_object(_segment(token, 0), "malformed token header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        raise ClientAuthError("alg not allowed")
    if "crit" in header:
        raise ClientAuthError("unsupported crit header")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ClientAuthError("missing kid")
    if "jku" in header and not isinstance(header["jku"], str):
        raise ClientAuthError("malformed jku")
    return header


def _unverified_payload(token: str) -> dict[str, Any]:
    """Read only to find the issuer (and so the keys); every claim is checked after the
    signature has been verified."""
    return _json_object(_segment(token, 1), "malformed claims")


def _segment(token: str, index: int) -> bytes:
    try:
        return base64url_decode(token.split(".")[index])
    except (ValueError, IndexError):
        raise ClientAuthError("malformed token") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _json_object(raw: bytes, reason: str) -> dict[str, Any]:
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ClientAuthError(reason) from None
    if not isinstance(value, dict):
        raise ClientAuthError(reason)
    return value


def _check_claims(
    claims: dict[str, Any],
    iss: str,
    audiences: tuple[str, ...],
    tenants: frozenset[str] | None,
    now: float,
    leeway: float,
) -> datetime:
    """Check the verified claims; return when the jti may be forgotten (exp + leeway)."""
    for name in _REQUIRED_CLAIMS:
        if name not in claims or claims[name] is None:
            raise ClientAuthError(f"missing {name}", iss)
    if claims["iss"] != iss:
        raise ClientAuthError("malformed claims", iss)

    if not _audience_matches(claims["aud"], audiences):
        raise ClientAuthError("wrong aud", iss)

    exp = _epoch(claims, "exp", iss)
    iat = _epoch(claims, "iat", iss)
    if now > exp + leeway:
        raise ClientAuthError("expired", iss)
    if iat > now + leeway:
        raise ClientAuthError("iat in the future", iss)
    if "nbf" in claims and _epoch(claims, "nbf", iss) > now + leeway:
        raise ClientAuthError("not yet valid (nbf)", iss)

    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_CHARS:
        raise ClientAuthError("malformed jti", iss)

    if tenants is not None:
        tenant = claims.get("tenant")
        if not isinstance(tenant, str) or tenant not in tenants:
            raise ClientAuthError("tenant not allowed", iss)

    return datetime.fromtimestamp(min(exp + leeway, _MAX_EPOCH), tz=UTC)


def _check_lifetime(
    claims: dict[str, Any], iss: str, max_lifetime: float, nbf_before_iat: float, leeway: float
) -> None:
    """A client JWT is short-lived: at most `max_lifetime` from iat to exp, and not valid
    (nbf) much before it was issued (an Epic token's nbf is 5 minutes before its iat)."""
    iat, exp = float(claims["iat"]), float(claims["exp"])
    if exp - iat > max_lifetime:
        raise ClientAuthError("lifetime too long (exp - iat)", iss)
    if "nbf" in claims and float(claims["nbf"]) < iat - nbf_before_iat - leeway:
        raise ClientAuthError("nbf too long before iat", iss)


def _audience_matches(aud: Any, audiences: tuple[str, ...]) -> bool:
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list) or not values:
        return False
    expected = {a.rstrip("/") for a in audiences}
    return any(isinstance(v, str) and v.rstrip("/") in expected for v in values)


def _epoch(claims: dict[str, Any], name: str, iss: str) -> float:
    value = claims[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= _MAX_EPOCH
    ):
        raise ClientAuthError(f"malformed {name}", iss)
    return float(value)
