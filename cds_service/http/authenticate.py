"""The CDS client's JWT for one HTTP request, checked against the URL it called (its `aud`).

Glue between Flask's request and security/client_auth.py: a refusal is a bare 401 to the
client (it learns nothing that would help it) and the reason goes to the log.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cds_service.errors import ApiError
from cds_service.http.base_url import service_root
from cds_service.security.client_auth import ClientAuthError, ClientIdentity, audiences_for, verify_client_jwt
from cds_service.startup import Runtime

if TYPE_CHECKING:
    from flask import Request

log = logging.getLogger(__name__)


def authenticate(rt: Runtime, request: Request) -> ClientIdentity:
    base = service_root(rt.settings, request)
    replay = rt.replay_guard
    if replay is None:  # never: Runtime.__post_init__ builds one
        raise ApiError(503, "service_unavailable", "not ready to check client tokens", headers={"Retry-After": "1"})
    try:
        return verify_client_jwt(
            request.headers.get("Authorization"), audiences_for(base, request.path), rt.trust, replay
        )
    except ClientAuthError as exc:
        log.warning("client authentication refused: %s", exc)
        raise ApiError(401, "unauthorized", "") from None
