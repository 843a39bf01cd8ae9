"""The service's own root URL for one request: what a client's JWT `aud` must name and
what the cards' evidence page links start with.

The setting `public_base_url` when it is set (the Host header is then never used). Without
it the URL is built from the request's Host, which the caller chooses: a Host outside
`trusted_hosts` (by default loopback names only) is refused with 400, so that no request
can make the service hand out links to another site (`Host: evil.example`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from cds_service.errors import ApiError

if TYPE_CHECKING:
    from flask import Request

    from cds_service.config import Settings

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_name(host: str) -> str | None:
    """The lower-case name of a Host header value (port and IPv6 brackets removed)."""
    try:
        parts = urlsplit("//" + host)
        if parts.port is not None and not 0 < parts.port < 65536:
            return None
    except ValueError:  # a port that is not a number, a stray bracket
        return None
    if parts.username is not None or parts.path or parts.query or parts.fragment:
        return None
    return parts.hostname or None


def is_trusted(host: str, trusted: tuple[str, ...]) -> bool:
    name = host_name(host)
    if name is None:
        return False
    for entry in trusted or LOOPBACK_HOSTS:
        entry = entry.strip().lower()
        if entry.startswith("."):
            if name.endswith(entry):
                return True
        elif name == (host_name(entry) or entry):
            return True
    return False


def service_root(settings: Settings, request: Request) -> str:
    """`public_base_url`, else the request's root URL if its Host is trusted, else 400."""
    if settings.public_base_url:
        return settings.public_base_url
    if not is_trusted(request.host, settings.trusted_hosts):
        raise ApiError(
            400,
            "untrusted_host",
            "the Host header names a host this service is not configured for "
            "(set public_base_url, or list the host in trusted_hosts)",
        )
    return request.host_url
