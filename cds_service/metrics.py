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


def store_error(operation: str) -> None:
    STORE_ERRORS.labels(operation=operation).inc()


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (all workers' in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """gunicorn child_exit: drop a dead worker's live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        _multiprocess.mark_process_dead(pid)
