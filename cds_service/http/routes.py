"""HTTP surface of the service: discovery, hook calls and feedback (CDS Hooks 2.0).

The routes are thin: read the body, authenticate, hand over to hook_call / feedback, audit,
answer. Every refusal is JSON (see errors.py and the handlers in app.py).
"""

from __future__ import annotations

import logging
import time

import orjson
from flask import Blueprint, Response, current_app, g, jsonify, request

from cds_service import hook_call, metrics
from cds_service.errors import ApiError
from cds_service.fhir.decode import Decoding
from cds_service.http import admission
from cds_service.http.authenticate import authenticate
from cds_service.http.feedback import check_accepted_suggestions, check_override_reasons, parse_feedback
from cds_service.http.hook_request import parse_hook_request
from cds_service.startup import Runtime

log = logging.getLogger(__name__)

blueprint = Blueprint("cds_hooks", __name__)


def runtime() -> Runtime:
    return current_app.extensions["cds_service"]


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
    g.audit = notes = hook_call.AuditNotes(service_id=service.id, hook=service.hook, started=started)
    try:
        notes.accepted = admission.admit(rt.settings.admission_max_wait_s)
    except admission.Overloaded:
        metrics.ADMISSION_REFUSED.labels(reason="saturated").inc()
        raise
    notes.client_iss = authenticate(rt, request).iss
    hook_request = parse_hook_request(read_json_body(rt.decoding), service)
    base_url = rt.settings.public_base_url or request.url_root
    cards = hook_call.answer(rt, service, hook_request, notes, base_url)
    return jsonify({"cards": cards})


@blueprint.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    service = rt.service(service_id)
    authenticate(rt, request)
    entries = check_accepted_suggestions(parse_feedback(read_json_body()), rt.issued_suggestions)
    entries = check_override_reasons(entries, lambda card_uuid: rt.offered_reasons(card_uuid, service.hook))
    stored = rt.store.record_feedback(service.id, entries)
    log.info("feedback stored: service=%s entries=%d", service.id, stored)
    return jsonify({"accepted": stored})


@blueprint.after_request
def write_audit(response: Response) -> Response:
    notes = g.pop("audit", None)
    if notes is not None:
        notes.status = response.status_code
        metrics.HOOK_CALLS.labels(service=notes.service_id, hook=notes.hook, status=str(notes.status)).inc()
        metrics.HOOK_LATENCY.labels(service=notes.service_id, hook=notes.hook).observe(notes.duration_ms / 1000.0)
        if notes.usage is not None:
            metrics.observe_usage(notes.service_id, notes.usage.as_dict())
        runtime().audit(notes)
    return response


def read_json_body(decoding: Decoding | None = None) -> object:
    """The request body as JSON; with `decoding`, a hook request's prefetch is decoded keeping
    only the elements the record reads (fhir/decode.py)."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", "send the request body as application/json")
    # Werkzeug answers 413 here when Content-Length is larger than max_body_bytes.
    data = request.get_data(cache=False)
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit is not None and len(data) >= limit:
        # A body without Content-Length (chunked; the server terminates the input and says
        # so with wsgi.input_terminated) is read only up to the limit, silently: one more
        # byte means it was cut.
        if request.environ["wsgi.input"].read(1):
            raise ApiError(413, "request_too_large", f"the request body is larger than {limit} bytes")
    return parse_json_body(data, decoding)


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
