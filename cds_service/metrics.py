"""Prometheus metrics of the service (prometheus-client).

Under `cds-service serve` the workers write their samples to files in
PROMETHEUS_MULTIPROC_DIR (the instance folder's `prometheus/`, emptied at start; dead
workers are marked) and /metrics sums them over all workers. Without that variable the
process's own registry is used.

Labels are bounded sets chosen by us: service ids, hook names, HTTP status codes, card
and situation ids from cards/, FHIR request kinds and outcome words. Never a patient id,
a URL, a token or a clinical value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as _multiprocess

_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)

HOOK_CALLS = Counter(
    "cds_hook_calls_total", "Hook calls answered, by service, hook and HTTP status", ["service", "hook", "status"]
)
HOOK_LATENCY = Histogram(
    "cds_hook_call_duration_seconds", "Time to answer a hook call", ["service", "hook"], buckets=_LATENCY_BUCKETS
)
FHIR_REQUESTS = Counter(
    "cds_fhir_requests_total", "GETs to CDS clients' FHIR servers, by kind and outcome", ["kind", "outcome"]
)
FHIR_LATENCY = Histogram(
    "cds_fhir_request_duration_seconds", "Time of one FHIR GET", ["kind"], buckets=_LATENCY_BUCKETS
)
CARDS_FIRED = Counter("cds_cards_fired_total", "Cards returned, by card and situation", ["card", "situation"])
EVIDENCE_PAGES_OPENED = Counter("cds_evidence_pages_opened_total", "Evidence pages opened, by card", ["card"])
FEEDBACK = Counter("cds_feedback_total", "Card feedback received, by outcome", ["outcome"])
STORE_ERRORS = Counter("cds_store_errors_total", "Store operations that failed", ["operation"])
ADMISSION_REFUSED = Counter("cds_admission_refused_total", "Hook calls answered 503 before starting", ["reason"])
# What each hook call used (issue 19; the same record is in the audit row's `usage`).
CALL_TOKEN = Counter(
    "cds_call_fhir_token_total", "Hook calls by what became of the FHIR access token", ["service", "token"]
)
CALL_RESOURCES = Counter(
    "cds_call_resource_types_total",
    "Resource types per hook call: prefetched by the client, fetched by the service, or refused",
    ["resource_type", "how"],
)
PREFETCH_MISSING = Counter("cds_prefetch_keys_missing_total", "Prefetch keys the client did not send", ["key"])
CALL_STAGE = Histogram(
    "cds_hook_call_stage_seconds", "Time of each step of a hook call", ["stage"], buckets=_LATENCY_BUCKETS
)
# Monitoring verdicts of deployed site models (`cds-service monitor`), as the service read them.
SITE_MODEL_RETIRED = Gauge(
    "cds_site_model_retired",
    "1 when monitoring retired the card's site model",
    ["card", "site"],
    multiprocess_mode="mostrecent",
)
SITE_MODEL_OBSERVED_EXPECTED = Gauge(
    "cds_site_model_observed_expected",
    "Observed / expected events since deployment (last monitor run)",
    ["card", "site"],
    multiprocess_mode="mostrecent",
)
SITE_MODEL_DRIFT = Gauge(
    "cds_site_model_drift_log_lr",
    "Largest log mixture likelihood ratio of the drift test (alarm at log(1/alpha))",
    ["card", "site"],
    multiprocess_mode="mostrecent",
)
SPOOL_DEPTH = Gauge("cds_audit_spool_depth", "Audit rows waiting in the local spool", multiprocess_mode="max")


def observe_usage(service: str, usage: Mapping[str, Any]) -> None:
    """Count one hook call's usage record (hook_call.CallUsage.as_dict)."""
    CALL_TOKEN.labels(service=service, token=usage["token"]).inc()
    for how in ("prefetched", "fetched", "refused"):
        for resource_type in usage["resource_types"].get(how, ()):
            CALL_RESOURCES.labels(resource_type=resource_type, how=how).inc()
    for key in usage["prefetch_keys_missing"]:
        PREFETCH_MISSING.labels(key=key).inc()
    for stage, ms in usage["timings_ms"].items():
        CALL_STAGE.labels(stage=stage).observe(ms / 1000.0)


def store_error(operation: str) -> None:
    STORE_ERRORS.labels(operation=operation).inc()


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (all workers' in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """gunicorn child_exit: drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]  # prometheus_client leaves it unannotated
