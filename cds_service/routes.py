"""HTTP surface of the service: discovery, hook calls and feedback (CDS Hooks 2.0).

The routes are thin: read the body, authenticate, hand over to hook_call / feedback, audit,
answer. Every refusal is JSON (see errors.py and the handlers in app.py).
"""
from __future__ import annotations

import json
import logging
import math
import time

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import hook_call
from .errors import ApiError
from .feedback import parse_feedback
from .runtime import Runtime

log = logging.getLogger(__name__)

blueprint = Blueprint("cds_hooks", __name__)


def runtime() -> Runtime:
    return current_app.extensions["cds_service"]


@blueprint.get("/cds-services")
def discovery() -> Response:
    rt = runtime()
    rt.authenticate(request)
    return jsonify({"services": [s.discovery_entry() for s in rt.services.values()]})


@blueprint.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    rt = runtime()
    g.audit = notes = hook_call.AuditNotes(service_id=service_id[:64], started=time.perf_counter())
    service = rt.service(service_id)
    notes.hook = service.hook
    notes.client_iss = rt.authenticate(request).iss
    cards = hook_call.answer(rt, service, read_json_body(), notes)
    return jsonify({"cards": cards})


@blueprint.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    rt = runtime()
    service = rt.service(service_id)
    rt.authenticate(request)
    entries = parse_feedback(read_json_body())
    stored = rt.store.record_feedback(service.id, entries)
    log.info("feedback stored: service=%s entries=%d", service.id, stored)
    return jsonify({"accepted": stored})


@blueprint.after_request
def write_audit(response: Response) -> Response:
    notes = g.pop("audit", None)
    if notes is not None:
        notes.status = response.status_code
        runtime().audit(notes)
    return response


def read_json_body() -> object:
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
    return parse_json_body(data)


class _NotJson(ValueError):
    """A literal JSON (RFC 8259) does not allow: NaN, Infinity, a number too large for a float."""


def _no_constant(literal: str) -> float:
    raise _NotJson(literal)


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NotJson(literal)
    return value


def parse_json_body(data: bytes) -> object:
    """The body as JSON text (RFC 8259: UTF-8, finite numbers), or a 400 that says why not.

    Flask's get_json is not used: it lets a RecursionError through (deeply nested arrays
    became a 500), accepts NaN and Infinity, and cannot tell JSON `null` from "no JSON".
    Nesting stays bounded by the parser's recursion limit; nothing later recurses over
    the body.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the request body is not UTF-8 encoded JSON") from None
    if not text.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the request body is nested too deeply") from None
    except _NotJson:
        raise ApiError(400, "invalid_json", "the request body holds NaN, Infinity or a number out of range; "
                                            "JSON numbers must be finite") from None
    except ValueError:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from None
