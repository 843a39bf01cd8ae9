"""HTTP surface of the service: discovery, hook calls and feedback (CDS Hooks 2.0).

The routes are thin: read the body, authenticate, hand over to hook_call / feedback, audit,
answer. Every refusal is JSON (see errors.py and the handlers in app.py).
"""

from __future__ import annotations

import logging
import math
import time

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import ClientDisconnected

from cds_service import hook_call, metrics
from cds_service.errors import ApiError
from cds_service.fhir.decode import Decoding
from cds_service.http import admission
from cds_service.http.authenticate import authenticate
from cds_service.http.base_url import service_root
from cds_service.http.body_deadline import body_deadline
from cds_service.http.feedback import (
    check_accepted_suggestions,
    check_override_reasons,
    check_returned_to_site,
    parse_feedback,
)
from cds_service.http.hook_request import parse_hook_request
from cds_service.startup import Runtime
from cds_service.storage.audit import AuditNotes

log = logging.getLogger(__name__)

blueprint = Blueprint("cds_hooks", __name__)


def runtime() -> Runtime:
    rt = current_app.extensions["cds_service"]  # Flask's extensions are a dict of Any
    if not isinstance(rt, Runtime):
        raise TypeError("the app was not built by create_app: no Runtime in its extensions")
    return rt


@blueprint.get("/cds-services")
def discovery() -> Response:
    rt = runtime()
    authenticate(rt, request)
    return jsonify({"services": [rt.discovery_entry(s) for s in rt.services.values()]})


@blueprint.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    rt = runtime()
    started = time.perf_counter()
    service = rt.service(service_id)
    rt.check_audit_capacity()
    # From here on the call is audited whatever its outcome (see write_audit).
    g.audit = notes = AuditNotes(service_id=service.id, hook=service.hook, started=started)
    try:
        notes.accepted = admission.admit(rt.settings.admission_max_wait_s)
    except admission.Overloaded:
        metrics.ADMISSION_REFUSED.labels(reason="saturated").inc()
        raise
    identity = authenticate(rt, request)
    notes.client_iss = identity.iss
    notes.site = rt.site_of(identity)  # its own hospital's overlay, never another's
    hook_request = parse_hook_request(read_json_body(rt.decoding), service)
    base_url = service_root(rt.settings, request)
    cards = hook_call.answer(rt.hook_parts, service, hook_request, notes, base_url)
    return jsonify({"cards": cards})


@blueprint.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    service = rt.service(service_id)
    identity = authenticate(rt, request)
    site = rt.site_of(identity)  # a card returned at another site is not this client's card
    entries = parse_feedback(read_json_body())
    if site is not None:
        entries = check_returned_to_site(entries, lambda card_uuid: rt.issued_at(card_uuid, site) is not None)
    entries = check_accepted_suggestions(entries, lambda card_uuid: rt.issued_suggestions(card_uuid, site))
    entries = check_override_reasons(entries, lambda card_uuid: rt.offered_reasons(card_uuid, service.hook, site))
    stored = rt.store.record_feedback(service.id, entries, site=site)
    for entry in entries:
        metrics.FEEDBACK.labels(outcome=entry.outcome).inc()
    log.info("feedback stored: service=%s entries=%d", service.id, stored)
    return jsonify({"accepted": stored})


@blueprint.after_request
def write_audit(response: Response) -> Response:
    notes = g.pop("audit", None)
    if notes is not None:
        notes.status = response.status_code
        rt = runtime()
        if not rt.audit(notes):
            # Neither the store nor the local spool could keep the audit row (and the pages
            # behind the cards' links): no answer goes out unaudited (issue 16).
            response = unaudited_refusal(rt)
        metrics.HOOK_CALLS.labels(service=notes.service_id, hook=notes.hook, status=str(response.status_code)).inc()
        metrics.HOOK_LATENCY.labels(service=notes.service_id, hook=notes.hook).observe(notes.duration_ms / 1000.0)
        if notes.usage is not None:
            metrics.observe_usage(notes.service_id, notes.usage.as_dict())
    return response


def unaudited_refusal(rt: Runtime) -> Response:
    error = ApiError(503, "store_unavailable", "the service cannot keep its audit trail now; retry later")
    response = jsonify(error.body())
    response.status_code = 503
    response.headers["Retry-After"] = str(max(1, math.ceil(rt.settings.db_retry_after_s)))
    return response


def read_json_body(decoding: Decoding | None = None) -> object:
    """The request body as JSON; with `decoding`, a hook request's prefetch is decoded keeping
    only the elements the record reads (fhir/decode.py)."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the request body as application/json")
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    data = read_body(runtime().settings.body_read_timeout_s, limit)
    if request.content_length is None and limit is not None and len(data) >= limit:
        # A body without Content-Length (chunked; the server terminates the input and says
        # so with wsgi.input_terminated) is read only up to the limit, silently: one more
        # byte means it was cut.
        if request.environ["wsgi.input"].read(1):
            raise ApiError(413, "request_too_large", f"the request body is larger than {limit} bytes")
    return parse_json_body(data, decoding)


_BODY_CHUNK = 64 * 1024


def read_body(timeout_s: float, limit: int | None) -> bytes:
    """The request body, read within `timeout_s` in all, else 408 (the connection is then
    closed): a client that sends its body slowly holds a request thread only this long.
    Under gunicorn only (its socket is in the environ); elsewhere the stream is read as is.
    """
    # Werkzeug answers 413 here when Content-Length is larger than max_body_bytes.
    stream = request.stream
    body = bytearray()
    with body_deadline(request.environ.get("gunicorn.socket"), timeout_s) as watch:
        try:
            while limit is None or len(body) < limit:
                chunk = stream.read(_BODY_CHUNK if limit is None else min(_BODY_CHUNK, limit - len(body)))
                if not chunk:
                    break
                body += chunk
        except (ClientDisconnected, OSError):
            if watch.expired:
                raise _body_too_slow(timeout_s) from None
            raise
    if watch.expired:
        raise _body_too_slow(timeout_s)
    return bytes(body)


def _body_too_slow(timeout_s: float) -> ApiError:
    detail = f"the request body did not arrive within {timeout_s:g} s"
    return ApiError(408, "request_timeout", detail, headers={"Connection": "close"})


_BOM = b"\xef\xbb\xbf"


def parse_json_body(data: bytes, decoding: Decoding | None = None) -> object:
    """The body as JSON text (RFC 8259), or a 400 that says why not.

    orjson parses strictly (UTF-8 only, finite numbers, no NaN/Infinity, nesting capped
    at 1024 levels without recursion) and about twice as fast as the standard library,
    which matters: parsing the prefetch is the largest fixed cost of a hook call. A UTF-8
    byte order mark, which RFC 8259 lets a parser ignore, is ignored.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    if not data.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    if decoding is not None:
        decoded = decoding.hook_request(data)
        if decoded is not None:
            return decoded
        # Not a hook request of the expected shape, or not JSON: parsed generically below,
        # so that the refusal says exactly what is wrong.
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", _why_not_json(str(exc))) from None


def _why_not_json(message: str) -> str:
    if "depth limit" in message:
        return "the request body is nested too deeply"
    if "UTF-8" in message or "surrogate" in message:
        return "the request body is not UTF-8 encoded JSON"
    if "infinity" in message or "NaN" in message or "Infinity" in message:
        return "the request body holds a number out of range; JSON numbers must be finite"
    return "the request body is not valid JSON"
