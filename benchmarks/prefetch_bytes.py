"""Benchmark: the bytes a chart's prefetch carries with the broad searches and with the
narrowed ones (content/services.py narrow_prefetch), read from the real FHIR server
(sekmet). A script, not a test.

    .venv/bin/python benchmarks/prefetch_bytes.py [chart.json ...]

Default: the largest Synthea chart (tests/data/synthea), plus the HFS history the other
benchmarks add. Prints bytes and entries per prefetch key, broad and narrowed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from floor import start_sekmet, synthea_dir  # noqa: E402

from cds_service.content.services import load_services, narrow_prefetch  # noqa: E402
from cds_service.fhir.prefetch import render_template  # noqa: E402
from cds_service.terminology.concepts_file import load_concepts  # noqa: E402

HFS = ROOT / "tests" / "data" / "fhir" / "hfs_patient_transaction.json"


def all_pages(session: requests.Session, url: str) -> tuple[int, int]:
    """(bytes, entries) of a search, every page followed."""
    size = entries = 0
    while url:
        answer = session.get(url, timeout=60)
        answer.raise_for_status()
        size += len(answer.content)
        bundle = answer.json()
        entries += len(bundle.get("entry", []))
        url = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
    return size, entries


def main() -> int:
    charts = [Path(p) for p in sys.argv[1:]] or [max(synthea_dir().glob("*.json"), key=lambda p: p.stat().st_size)]
    broad = load_services(ROOT / "cards" / "services.toml")["hfs-outcomes-patient-view"]
    narrow = narrow_prefetch({"s": broad}, load_concepts(ROOT / "cards"))["s"]
    with tempfile.TemporaryDirectory(prefix="prefetch-bytes-") as tmp:
        process, base, token = start_sekmet(Path(tmp))
        try:
            session = requests.Session()
            session.headers.update({"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
            for chart in charts:
                bundle = json.loads(chart.read_text())
                created = session.post(base, json=bundle, timeout=300).json()
                location = next(
                    e["response"]["location"] for e in created["entry"] if "Patient/" in e["response"]["location"]
                )
                patient_id = location.split("Patient/", 1)[1].split("/", 1)[0]
                context = {"patientId": patient_id, "userId": "Practitioner/bench"}
                print(f"{chart.name}: {len(bundle['entry'])} resources")
                print("| key | broad bytes | broad entries | narrowed bytes | narrowed entries |")
                print("|---|---|---|---|---|")
                totals = [0, 0, 0, 0]
                for wide, tight in zip(broad.prefetch, narrow.prefetch):
                    a = all_pages(session, f"{base}/{render_template(wide.query, context)}")
                    b = all_pages(session, f"{base}/{render_template(tight.query, context)}")
                    if "?" not in wide.query:  # a read: one resource, no paging
                        a = b = (a[0], 1)
                    totals = [t + v for t, v in zip(totals, (*a, *b))]
                    print(f"| {wide.key} | {a[0]:,} | {a[1]} | {b[0]:,} | {b[1]} |")
                print(f"| all | {totals[0]:,} | {totals[1]} | {totals[2]:,} | {totals[3]} |")
        finally:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
