"""Admission control: when was this call accepted, and may it be served now?

The gunicorn worker (http/gunicorn_worker.py) stamps, in the handling thread, the moment
the connection's request was queued for a thread and whether it was put on the shedding
lane because more requests were waiting than there are threads. Without that worker (any
other WSGI server, the Flask test client) the budget counts from the prefetch step, as
before, and a call is never shed.

A hook call that is shed, or that waited in the queue longer than
`admission_max_wait_s`, is answered 503 + Retry-After at once: the CDS client can retry
or go without, rather than getting an answer after its own timeout.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Protocol

from cds_service.errors import ApiError

RETRY_AFTER_S = 1


@dataclass
class Stamp:
    accepted: float  # time.monotonic() when the request was queued for a thread
    shed: bool = False  # handled on the shedding lane: answer cheap requests only


_local = threading.local()


class ServerRequest(Protocol):
    """What admission needs of the worker's request object (gunicorn's http.Request)."""

    must_close: bool


def stamp(accepted: float, shed: bool = False) -> None:
    _local.stamp = Stamp(accepted, shed)


def clear() -> None:
    _local.stamp = None


def bind_server_request(server_request: ServerRequest | None) -> None:
    """The worker's own request object for this thread (None: unbind)."""
    _local.server_request = server_request


def close_connection() -> None:
    """Close the connection after this answer (gunicorn drops a `Connection: close` the app
    sets; its request object is told instead). No effect without the stamping worker."""
    server_request = getattr(_local, "server_request", None)
    if server_request is not None:
        server_request.must_close = True


def current() -> Stamp | None:
    return getattr(_local, "stamp", None)


class Overloaded(ApiError):
    """503 with Retry-After: the service is saturated (or stopping) and did not start the call."""

    def __init__(self, detail: str, retry_after: int = RETRY_AFTER_S) -> None:
        super().__init__(503, "service_unavailable", detail)
        self.retry_after = retry_after
        # The body was not read: close rather than read (drain) it, which a slow client
        # could stretch out while it holds a thread.
        self.headers = {"Connection": "close"}


def admit(max_wait_s: float) -> float | None:
    """The monotonic time the worker accepted the call (None without the stamping worker:
    the budget then counts from the prefetch step), or Overloaded if it must not start."""
    now = time.monotonic()
    current_stamp = current()
    if current_stamp is None:
        return None
    if current_stamp.shed:
        raise Overloaded("the service is saturated; retry shortly")
    if now - current_stamp.accepted > max_wait_s:
        raise Overloaded("the service is saturated (the call waited too long for a thread); retry shortly")
    return current_stamp.accepted
