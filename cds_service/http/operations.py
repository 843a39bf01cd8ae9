"""Operations endpoints: /healthz (alive), /readyz (ready for calls), /metrics (Prometheus).

None needs a CDS client JWT and none says anything about a patient. /metrics is off (404)
unless `metrics_token` is set, and then needs `Authorization: Bearer <metrics_token>`.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from cds_service import metrics
from cds_service.errors import operation_outcome
from cds_service.http import lifecycle
from cds_service.http.routes import runtime as _runtime
from cds_service.startup import Runtime
from cds_service.storage.store import Store

log = logging.getLogger(__name__)

blueprint = Blueprint("operations", __name__)

# One thread for store pings: a ping that hangs past its timeout keeps it busy, so the
# next /readyz cannot pile up threads and also answers "not ready" in bounded time.
_ping_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-ping")
# Likewise one thread for the write probe (a jti claim, what every signed call does first):
# a read-only, full or locked store answers SELECT 1 but fails every signed call.
_write_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz-write")
_PROBE_ISSUER = "urn:cds-service:readyz"
_NO_STORE = {"Cache-Control": "no-store"}


@blueprint.get("/healthz", provide_automatic_options=False)
def healthz() -> tuple[Response, int, dict[str, str]]:
    return jsonify({"status": "alive"}), 200, _NO_STORE


@blueprint.get("/readyz", provide_automatic_options=False)
def readyz() -> tuple[Response, int, dict[str, str]]:
    rt = _runtime()
    checks: dict[str, str] = {}
    checks["content"] = "ok" if rt.services and rt.cards else "not loaded"
    checks["store"] = _store_state(rt)
    draining = lifecycle.is_draining(rt.settings.instance_path)
    checks["draining"] = "yes" if draining else "no"
    ready = checks["content"] == "ok" and checks["store"] == "ok" and not draining
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    headers = dict(_NO_STORE)
    if not ready:
        headers["Retry-After"] = "1"
    return jsonify(body), 200 if ready else 503, headers


def _store_state(rt: Runtime) -> str:
    """ "ok", "unreachable" or "not writable", within readiness_store_timeout_s in all."""
    deadline = time.monotonic() + rt.settings.readiness_store_timeout_s
    if not _store_answers(rt):
        return "unreachable"
    if rt.settings.jti_memory_fallback:  # signed calls do not need the store to answer
        return "ok"
    remaining = max(0.01, deadline - time.monotonic())
    try:
        ok = bool(_write_pool.submit(_claim_probe_jti, rt.store).result(timeout=remaining))
    except FutureTimeout:
        ok = False
    if not ok:
        metrics.store_error("write_probe")
        log.warning("readiness: the store did not take a write within %.1f s", rt.settings.readiness_store_timeout_s)
    return "ok" if ok else "not writable"


def _claim_probe_jti(store: Store) -> bool:
    # A real jti row, expiring at once: pruned with the other expired jtis.
    try:
        return store.claim_jti(_PROBE_ISSUER, uuid.uuid4().hex, datetime.now(UTC))
    except Exception as exc:
        log.warning("readiness: store write failed: %s", type(exc).__name__)
        return False


def _store_answers(rt: Runtime) -> bool:
    timeout = rt.settings.readiness_store_timeout_s
    started = time.monotonic()
    try:
        ok = bool(_ping_pool.submit(rt.store.ping, timeout).result(timeout=timeout + 0.1))
    except FutureTimeout:
        ok = False
    except Exception as exc:
        log.warning("readiness: store ping failed: %s", type(exc).__name__)
        ok = False
    if not ok:
        metrics.store_error("ping")
        log.warning("readiness: store did not answer within %.1f s", max(timeout, time.monotonic() - started))
    return ok


@blueprint.get("/metrics", provide_automatic_options=False)
def scrape() -> ResponseReturnValue:
    rt = _runtime()
    token = rt.settings.metrics_token
    if not token:
        return jsonify(operation_outcome(404, "not_found", "metrics are not enabled on this service")), 404
    offered = request.headers.get("Authorization", "")
    if not hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
        return jsonify({"error": "unauthorized"}), 401, {"WWW-Authenticate": "Bearer"}
    _update_spool_depth(rt)
    body, content_type = metrics.exposition()
    return Response(body, status=200, content_type=content_type, headers=_NO_STORE)


def _update_spool_depth(rt: Runtime) -> None:
    """The audit spool's depth (rows waiting for the store), across the instance's workers."""
    try:
        metrics.SPOOL_DEPTH.set(rt.audit_spool_depth())
    except Exception as exc:
        log.warning("metrics: spool depth unavailable: %s", type(exc).__name__)
