"""Benchmark: does a card's evidence link open the moment the card is handed out?

Starts the real service (`cds-service serve`, gunicorn, two workers by default, unsigned
development mode) on loopback, with SQLite in a temporary instance folder or a fresh
PostgreSQL schema, then makes N hook calls and, right after each answer, fetches its
card's evidence link on a new connection (so either worker may answer it). Counts the
fetches by status: every link should answer 200 (issue 17: 0 missing pages in 1,000).

    .venv/bin/python benchmarks/page_availability.py --calls 1000 --database sqlite
    .venv/bin/python benchmarks/page_availability.py --calls 1000 --database postgresql \\
        --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test
    # another checkout of the service (e.g. the commit before) with this harness:
    .venv/bin/python benchmarks/page_availability.py --root /path/to/checkout

Prints the counts, the hook call's p50/p95 over HTTP and the link fetches' p50.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "/cds-services/hfs-outcomes-patient-view"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hook_request(n: int) -> dict:
    """An HFS patient 17 months after an MVD (card A fires, with its evidence link)."""
    patient = f"bench-{n}"
    ref = {"reference": f"Patient/{patient}"}
    condition = {
        "resourceType": "Condition",
        "id": f"c-{n}",
        "subject": ref,
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]
        },
        "verificationStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "G51.31"}]},
        "onsetDateTime": "2019-05-01",
    }
    procedure = {
        "resourceType": "Procedure",
        "id": f"p-{n}",
        "status": "completed",
        "subject": ref,
        "code": {"coding": [{"system": "http://www.cms.gov/Medicare/Coding/ICD10", "code": "00NM0ZZ"}]},
        "performedPeriod": {"start": "2025-06-10T08:00:00Z", "end": "2025-06-10T10:10:00Z"},
    }

    def bundle(*resources):
        return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}

    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": patient},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": patient, "gender": "female", "birthDate": "1970-01-01"},
            "conditions": bundle(condition),
            "procedures": bundle(procedure),
            "observations": bundle(),
            "medicationRequests": bundle(),
            "medicationStatements": bundle(),
        },
    }


def postgres_schema(base_url: str):
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})

    def drop():
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return url.render_as_string(hide_password=False), drop


def start(
    root: Path, folder: Path, port: int, workers: int, database_url: str | None, settings: list[str]
) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(root)
    env["CDS_DRAIN_DELAY_S"] = "0"
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(setting.split("=", 1) for setting in settings)
    command = [sys.executable, "-c", "import sys; from cds_service.cli import main; sys.exit(main())", "serve"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--instance", str(folder / "instance"), "--allow-unsigned"]
    log = open(folder / "service.log", "ab")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited:\n{(folder / 'service.log').read_text()[-3000:]}")
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5)
            text = (folder / "service.log").read_text(errors="replace")
            if text.count("worker ready (pid:") >= workers or text.count("Booting worker") >= workers:
                time.sleep(1.0)
                return process
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("the service did not answer within 60 s")


def run(base: str, calls: int, concurrency: int) -> dict:
    statuses: collections.Counter = collections.Counter()
    call_ms: list[float] = []
    fetch_ms: list[float] = []
    lock = threading.Lock()
    numbers = iter(range(calls))

    def worker():
        while True:
            with lock:
                n = next(numbers, None)
            if n is None:
                return
            started = time.perf_counter()
            # A new connection for each request (no session): the kernel hands it to either worker.
            answer = requests.post(base + SERVICE, json=hook_request(n), timeout=30)
            took = (time.perf_counter() - started) * 1000.0
            if answer.status_code != 200:
                with lock:
                    statuses[f"call {answer.status_code}"] += 1
                continue
            links = [
                link["url"] for card in answer.json()["cards"] for link in card["links"] if "/evidence/" in link["url"]
            ]
            for url in links:
                started = time.perf_counter()
                page = requests.get(url, timeout=30)
                with lock:
                    fetch_ms.append((time.perf_counter() - started) * 1000.0)
                    statuses[page.status_code] += 1
            with lock:
                call_ms.append(took)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"statuses": dict(statuses), "call_ms": sorted(call_ms), "fetch_ms": sorted(fetch_ms)}


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="clients calling at once")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout of the service to run")
    parser.add_argument("--set", action="append", default=[], help="a setting, e.g. CDS_DB_SQLITE_SYNCHRONOUS=normal")
    args = parser.parse_args()
    drop = None
    database_url = None
    if args.database == "postgresql":
        database_url, drop = postgres_schema(args.postgres_url)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        process = start(args.root.resolve(), Path(tmp), port, args.workers, database_url, args.set)
        try:
            result = run(f"http://127.0.0.1:{port}", args.calls, args.concurrency)
        finally:
            process.terminate()
            process.wait(30)
            if drop:
                drop()
    statuses = result["statuses"]
    fetched = sum(v for k, v in statuses.items() if isinstance(k, int))
    missing = fetched - statuses.get(200, 0)
    print(
        json.dumps(
            {
                "root": str(args.root),
                "database": args.database,
                "workers": args.workers,
                "concurrency": args.concurrency,
                "settings": args.set,
                "calls": args.calls,
                "links_fetched": fetched,
                "not_200": missing,
                "statuses": {str(k): v for k, v in statuses.items()},
                "call_p50_ms": round(pct(result["call_ms"], 0.5), 1),
                "call_p95_ms": round(pct(result["call_ms"], 0.95), 1),
                "fetch_p50_ms": round(pct(result["fetch_ms"], 0.5), 1),
            }
        )
    )
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
