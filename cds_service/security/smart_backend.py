"""SMART Backend Services client: an access token by client_credentials with a signed
`private_key_jwt` client assertion (RS384 or ES384), for the offline learning extraction.

The token endpoint comes from the server's `.well-known/smart-configuration` unless given.
Tokens are cached until shortly before they expire. Nothing here logs or returns the key,
the assertion or the token in an error: `BackendAuthError.reason` is our own text.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack
from urllib.parse import urlsplit

import jwt
import requests

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
ASSERTION_LIFETIME_S = 300  # SMART: exp no more than five minutes ahead
EXPIRY_MARGIN_S = 30
DEFAULT_TIMEOUT_S = 20.0


class BackendAuthError(Exception):
    """No access token could be had. `reason` is safe to show and log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClientOptions(TypedDict, total=False):
    """BackendClient's optional fields, as from_key_file passes them on."""

    algorithm: str
    kid: str | None
    scope: str
    token_url: str | None


@dataclass(frozen=True)
class BackendClient:
    client_id: str
    private_key_pem: bytes
    algorithm: str = "RS384"
    kid: str | None = None
    scope: str = "system/*.read"
    token_url: str | None = None  # discovered from the FHIR base when None

    @classmethod
    def from_key_file(cls, client_id: str, key_path: Path, **options: Unpack[ClientOptions]) -> BackendClient:
        try:
            pem = Path(key_path).read_bytes()
        except OSError as exc:
            raise BackendAuthError(f"the private key file cannot be read ({exc.strerror})") from None
        return cls(client_id=client_id, private_key_pem=pem, **options)


class BackendTokenSource:
    """`authorization()` -> "Bearer <token>", fetching a new token when needed."""

    def __init__(self, client: BackendClient, fhir_base: str, session: requests.Session | None = None) -> None:
        if client.algorithm not in ALGORITHMS:
            raise BackendAuthError(f"signing algorithm {client.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        self.client = client
        self.fhir_base = fhir_base.rstrip("/")
        self.session = session or requests.Session()
        self.session.trust_env = False
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def authorization(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires:
                self._fetch()
            return f"Bearer {self._token}"

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def token_url(self) -> str:
        if self.client.token_url:
            return self.client.token_url
        url = f"{self.fhir_base}/.well-known/smart-configuration"
        try:
            response = self.session.get(url, timeout=DEFAULT_TIMEOUT_S, allow_redirects=False)
        except requests.RequestException as exc:
            # Not reached at all: say so, rather than "no token endpoint", which would send
            # the operator to the server's configuration instead of the network.
            raise BackendAuthError(unreachable(url, exc)) from None
        try:
            config = response.json() if response.status_code == 200 else None
        except ValueError:
            config = None
        endpoint = config.get("token_endpoint") if isinstance(config, dict) else None
        if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
            raise BackendAuthError(
                "the FHIR server publishes no SMART token endpoint (.well-known/smart-configuration)"
            )
        return endpoint

    def assertion(self, token_url: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client.client_id,
            "sub": self.client.client_id,
            "aud": token_url,
            "jti": secrets.token_hex(16),
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
        }
        headers = {"typ": "JWT"}
        if self.client.kid:
            headers["kid"] = self.client.kid
        try:
            return jwt.encode(claims, self.client.private_key_pem, algorithm=self.client.algorithm, headers=headers)
        except (ValueError, TypeError, jwt.PyJWTError):
            raise BackendAuthError(
                f"the private key cannot sign {self.client.algorithm} (RS384 needs an RSA key, ES384 a P-384 key)"
            ) from None

    def _fetch(self) -> None:
        url = self.token_url()
        form = {
            "grant_type": "client_credentials",
            "scope": self.client.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(url),
        }
        try:
            response = self.session.post(url, data=form, timeout=DEFAULT_TIMEOUT_S, allow_redirects=False)
        except requests.RequestException as exc:
            raise BackendAuthError(unreachable(url, exc, "the SMART token endpoint")) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            error = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
            raise BackendAuthError(
                f"the SMART token endpoint refused the client ({response.status_code}"
                + (f", {error[:40]}" if error else "")
                + ")"
            )
        lifetime = body.get("expires_in")
        lifetime = float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 300.0
        self._token = body["access_token"]
        self._expires = time.monotonic() + max(1.0, lifetime - EXPIRY_MARGIN_S)


def unreachable(url: str, exc: requests.RequestException, what: str = "the FHIR server") -> str:
    """One line: which server could not be reached (host and port) and why, in our words (no
    library text, which may carry a URL's query or a header)."""
    parts = urlsplit(url)
    port: int | str  # "?" when the URL's port is not a number
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = "?"
    if isinstance(exc, requests.exceptions.SSLError):
        reason = "TLS handshake failed"
    elif isinstance(exc, requests.exceptions.ConnectTimeout):
        reason = "connection timed out"
    elif isinstance(exc, requests.exceptions.Timeout):
        reason = "no answer in time"
    elif isinstance(exc, requests.exceptions.ConnectionError):
        text = str(exc).lower()
        if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
            reason = "host name not found"
        elif "refused" in text:
            reason = "connection refused"
        elif "reset" in text or "aborted" in text:
            reason = "connection reset"
        else:
            reason = "connection failed"
    else:
        reason = "request failed"
    return f"{what} could not be reached ({parts.hostname or '?'}:{port}: {reason})"


class StaticBearer:
    """A bearer token given by the operator (read from an environment variable)."""

    def __init__(self, token: str) -> None:
        if not token:
            raise BackendAuthError("the bearer token is empty")
        self._token = token

    def authorization(self) -> str:
        return f"Bearer {self._token}"

    def invalidate(self) -> None:
        pass
