"""CORS for browser-based CDS clients (plain Flask hooks).

`install_cors(app, origins)`:
- answers every OPTIONS request to `/cds-services` and `/cds-services/...` itself, before
  any other hook or view runs, so a preflight never needs the JWT: 204 with
  Access-Control-Allow-Methods `GET, POST, OPTIONS`, Access-Control-Allow-Headers
  `Authorization, Content-Type` and Access-Control-Max-Age;
- adds Access-Control-Allow-Origin to the responses of those paths (errors included) when
  the request's Origin is allowed: the origin itself for an explicit list, `*` if the list
  is `("*",)`; always `Vary: Origin` for an explicit list.
Credentials are never allowed (Access-Control-Allow-Credentials is not sent): CDS clients
authenticate with an explicit Authorization header, which needs no credentials mode.
An origin that is not allowed gets no CORS headers, so the browser blocks the call.
With no origins configured nothing is installed.
"""

from __future__ import annotations

import re

from flask import Flask, Response, request

from cds_service.config import ConfigError

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type"
MAX_AGE_S = 600

_ORIGIN = re.compile(r"^https?://[^/\s?#]+$", re.IGNORECASE)


def _is_cds_path(path: str) -> bool:
    return path == "/cds-services" or path.startswith("/cds-services/")


def _normalise(origins: tuple[str, ...]) -> tuple[bool, frozenset[str]]:
    wildcard = False
    allowed: set[str] = set()
    for origin in origins:
        origin = origin.strip()
        if origin == "*":
            wildcard = True
            continue
        origin = origin.rstrip("/")
        if not _ORIGIN.match(origin):
            raise ConfigError(f"cors_origins: {origin!r} is not an origin (scheme://host[:port]) or '*'")
        allowed.add(origin.lower())
    return wildcard, frozenset(allowed)


def install_cors(app: Flask, origins: tuple[str, ...], *, max_age_s: int = MAX_AGE_S) -> None:
    """Install the CORS hooks on `app` for the given origins ("*" = any origin)."""
    wildcard, allowed = _normalise(tuple(origins))
    if not wildcard and not allowed:
        return

    def allow_origin_value() -> str | None:
        if wildcard:
            return "*"
        origin = request.headers.get("Origin")
        if origin and origin.lower() in allowed:
            return origin
        return None

    def add_cors_headers(response: Response) -> Response:
        if not wildcard:
            response.vary.add("Origin")
        value = allow_origin_value()
        if value is not None:
            response.headers["Access-Control-Allow-Origin"] = value
        return response

    def answer_preflight() -> Response | None:
        if request.method != "OPTIONS" or not _is_cds_path(request.path):
            return None
        response = app.response_class(status=204)
        response.headers["Allow"] = ALLOW_METHODS
        if allow_origin_value() is not None:
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Max-Age"] = str(max_age_s)
        return response

    def after(response: Response) -> Response:
        if _is_cds_path(request.path):
            add_cors_headers(response)
        return response

    # First among the before-request hooks: nothing (authentication, body checks) may
    # refuse a preflight.
    app.before_request_funcs.setdefault(None, []).insert(0, answer_preflight)
    app.after_request(after)
