"""Benchmark: a full-prefetch patient-view call for a ~1,100-resource Synthea record.

Plain harness (not a timed test): builds the request from the largest Synthea bundle in
tests/data/synthea (810 Observations), adds a hemifacial spasm Condition and a
completed MVD so that cards fire, and posts it N times through the real Flask app (JSON
parsing, validation, prefetch resolution, record, models, rendering, audit write).

    .venv/bin/python benchmarks/hook_call.py [--calls 300] [--everything]
    .venv/bin/python benchmarks/hook_call.py --url http://127.0.0.1:8091   # a running server:
        .venv/bin/cds-service serve --workers 1 --port 8091 --allow-unsigned

Target (issue 2): p99 <= 50 ms on one worker. Measured 2026-11-22 on this 2-core machine,
one gunicorn worker over loopback HTTP: 846 prefetched resources (0.75 MB) p99 28 ms;
all 1,147 resources (1.28 MB, --everything) p99 33 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The records the tests ship (tests/data/synthea, Apache-2.0), else ../shared beside a checkout.
SYNTHEA = next(
    (
        p
        for p in (ROOT / "tests" / "data" / "synthea", ROOT.parent / "shared" / "fhir-samples" / "synthea")
        if p.is_dir()
    ),
    ROOT / "tests" / "data" / "synthea",
)

PREFETCH_KEYS = {
    "Condition": "conditions",
    "Procedure": "procedures",
    "Observation": "observations",
    "MedicationRequest": "medicationRequests",
    "MedicationStatement": "medicationStatements",
}


def largest_bundle() -> dict:
    path = max(SYNTHEA.glob("*.json"), key=lambda p: p.stat().st_size)
    return json.loads(path.read_text())


def build_request(bundle: dict, everything: bool = False) -> tuple[int, dict]:
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next((r for r in resources if r["resourceType"] == "Patient"), None)
    patient_id = patient["id"] if patient else "bench-patient"
    searchsets = {key: {"resourceType": "Bundle", "type": "searchset", "entry": []} for key in PREFETCH_KEYS.values()}
    for resource in resources:
        key = PREFETCH_KEYS.get(resource["resourceType"])
        if key:
            searchsets[key]["entry"].append({"resource": resource})
    searchsets["conditions"]["entry"].append(
        {
            "resource": {
                "resourceType": "Condition",
                "id": "bench-hfs",
                "clinicalStatus": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}
                    ]
                },
                "verificationStatus": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
                    ]
                },
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G51.31"}]},
                "subject": {"reference": f"Patient/{patient_id}"},
                "onsetDateTime": "2018-03-01",
            }
        }
    )
    searchsets["procedures"]["entry"].append(
        {
            "resource": {
                "resourceType": "Procedure",
                "id": "bench-mvd",
                "status": "completed",
                "code": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "00NM0ZZ"}]},
                "subject": {"reference": f"Patient/{patient_id}"},
                "performedPeriod": {"start": "2025-06-01T08:00:00Z", "end": "2025-06-01T10:30:00Z"},
            }
        }
    )
    if everything:
        # Resources the templates do not ask for (Claims, Encounters, ...), as an EHR that
        # over-prefetches would send them: parsed with the body, otherwise ignored.
        searchsets["unrequested"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": r}
                for r in resources
                if r["resourceType"] not in PREFETCH_KEYS and r["resourceType"] != "Patient"
            ],
        }
    count = sum(len(s["entry"]) for s in searchsets.values()) + (1 if patient else 0)
    return count, {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": {"patient": patient, **searchsets},
    }


def narrowed(request: dict) -> dict:
    """The request as a client that prefetches the narrowed templates would send it: the
    searches with a code filter (content/services.py narrow_prefetch) hold only the
    resources that carry one of its codes (on the resource, or on a component)."""
    sys.path.insert(0, str(ROOT))
    from cds_service.content.services import load_services, narrow_prefetch
    from cds_service.terminology.concepts_file import load_concepts

    concepts = load_concepts(ROOT / "cards")
    services = narrow_prefetch(load_services(ROOT / "cards" / "services.toml"), concepts)
    templates = {t.key: t for t in next(iter(services.values())).prefetch}

    def codes(resource: dict) -> set[tuple[str, str]]:
        found = set()
        for holder in [resource, *resource.get("component", [])]:
            for coding in (holder.get("code") or {}).get("coding", []):
                found.add((coding.get("system"), coding.get("code")))
        return found

    out = json.loads(json.dumps(request))
    for key, template in templates.items():
        if not template.codes_of or key not in out["prefetch"]:
            continue
        wanted = set(concepts.search_codes(template.codes_of) or ())
        bundle = out["prefetch"][key]
        bundle["entry"] = [e for e in bundle["entry"] if codes(e["resource"]) & wanted]
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--url", help="base URL of a running service (dev mode) instead of the in-process app")
    parser.add_argument("--narrowed", action="store_true", help="the prefetch of the narrowed templates")
    parser.add_argument(
        "--everything", action="store_true", help="also send the Synthea resources no template asks for (3 MB body)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from cds_service.http.app import create_app
    from cds_service.worker_gc import freeze_startup_objects

    count, request = build_request(largest_bundle(), args.everything)
    if args.narrowed:
        request = narrowed(request)
        count = sum(
            len(v.get("entry", [])) if v.get("resourceType") == "Bundle" else 1 for v in request["prefetch"].values()
        )
    body = json.dumps(request).encode()
    url = "/cds-services/hfs-outcomes-patient-view"
    if args.url:
        import requests

        session = requests.Session()

        def post():
            return session.post(
                args.url.rstrip("/") + url,
                data=body,
                headers={"Content-Type": "application/json"},
            )

        first = post()
        assert first.status_code == 200, first.text
        cards = [c["summary"] for c in first.json()["cards"]]
        for _ in range(20):
            post()
        timings = []
        for _ in range(args.calls):
            started = time.perf_counter()
            assert post().status_code == 200
            timings.append((time.perf_counter() - started) * 1000.0)
        return report(count, body, cards, timings, args.calls)
    with tempfile.TemporaryDirectory() as instance:
        app = create_app(instance_path=instance, allow_unsigned=True)
        freeze_startup_objects()  # as every gunicorn worker does after loading the app
        client = app.test_client()
        first = client.post(url, data=body, content_type="application/json")
        assert first.status_code == 200, first.get_json()
        cards = [c["summary"] for c in first.get_json()["cards"]]
        for _ in range(20):
            client.post(url, data=body, content_type="application/json")
        timings = []
        for _ in range(args.calls):
            started = time.perf_counter()
            response = client.post(url, data=body, content_type="application/json")
            timings.append((time.perf_counter() - started) * 1000.0)
            assert response.status_code == 200
    return report(count, body, cards, timings, args.calls)


def report(count: int, body: bytes, cards: list[str], timings: list[float], calls: int) -> int:
    timings.sort()
    p = lambda q: timings[min(len(timings) - 1, int(q * len(timings)))]  # noqa: E731
    print(f"record: {count} resources, request body {len(body) / 1e6:.2f} MB, cards: {cards}")
    print(
        f"{calls} calls: p50 {p(0.50):.1f} ms  p95 {p(0.95):.1f} ms  p99 {p(0.99):.1f} ms  "
        f"mean {statistics.fmean(timings):.1f} ms  max {timings[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
