"""Benchmark: what keeping a call's audit row and evidence page before the answer costs.

In process, on a SQLite store in a temporary folder (or `--database-url`): the time a
hook call waits in `Store.keep_call` for one row with one returned card and one evidence
page of the size the service writes (about 4 kB), one call at a time and with N calls at
once (group commit: rows per transaction), with `synchronous = FULL` (a commit is on disk
when it returns) and `NORMAL` (it is not); and, for scale, a bare fsync of the same
folder's disk. The old path (hand the row and the page to background threads) waited for
neither: its cost on the request thread was a queue put, a few microseconds.

    .venv/bin/python benchmarks/audit_commit.py [--calls 300] [--threads 8]

Then the whole hook call in process (benchmarks/hook_call.py's 846-resource request),
three ways taken in turn call after call, so that the load of the machine weighs on each
alike: answered after the commit (synchronous FULL, then NORMAL), and the old path (the
row and the page handed to the background writer, not waited for).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def page_data(n: int) -> dict:
    # About the size of a card's page data (charts, inputs, sources): 4 kB of JSON.
    return {"card_id": "mvd-recurrence", "n": n, "charts": [{"points": [[i, i * 0.5] for i in range(120)]}]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--database-url", help="default: a SQLite file in a temporary folder")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from cds_service.storage.audit import build_call_record
    from cds_service.storage.evidence_pages import EvidencePages
    from cds_service.storage.store import Store, StoreOptions

    def record(pages, n):
        _, row = pages.row(page_data(n))
        return build_call_record(
            service_id="hfs-outcomes-patient-view",
            hook="patient-view",
            hook_instance=f"bench-{n}",
            outcome_status=200,
            duration_ms=8.0,
            patient_hash="ab" * 32,
            content_version="mvd-recurrence@1.0",
            cards=[(f"00000000-0000-0000-0000-{n:012d}", "mvd-recurrence", "summary")],
            pages=[row],
        )

    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        probe = Path(tmp) / "fsync-probe"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        fsyncs = []
        for _ in range(100):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            fsyncs.append((time.perf_counter() - started) * 1000)
        os.close(fd)
        print(f"bare fsync of a 4 kB append on this disk: p50 {pct(fsyncs, 0.5):.2f} ms  p10 {pct(fsyncs, 0.1):.2f} ms")
        for mode in ("full", "normal"):
            url = args.database_url or f"sqlite:///{tmp}/{mode}.sqlite3"
            options = StoreOptions(spool_dir=Path(tmp) / f"spool-{mode}", sqlite_synchronous=mode)
            with Store(url, options) as store:
                pages = EvidencePages(store)
                for n in range(20):  # warm up: connections, statement cache, the commit thread
                    store.keep_call(record(pages, n))
                waits = []
                for n in range(args.calls):
                    r = record(pages, 1000 + n)
                    started = time.perf_counter()
                    assert store.keep_call(r)
                    waits.append((time.perf_counter() - started) * 1000)
                commits_before = store.audit_writer.commits
                together = []
                lock = threading.Lock()
                base = 100_000

                def caller(k):
                    for n in range(args.calls // args.threads):
                        r = record(pages, base + k * 10_000 + n)
                        started = time.perf_counter()
                        assert store.keep_call(r)
                        with lock:
                            together.append((time.perf_counter() - started) * 1000)

                threads = [threading.Thread(target=caller, args=(k,)) for k in range(args.threads)]
                started = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                elapsed = time.perf_counter() - started
                commits = store.audit_writer.commits - commits_before
                print(
                    f"{store.backend} synchronous={mode}: one at a time p50 {pct(waits, 0.5):.2f} ms "
                    f"p10 {pct(waits, 0.1):.2f} ms mean {statistics.fmean(waits):.2f} ms; "
                    f"{args.threads} at once p50 {pct(together, 0.5):.2f} ms, {len(together) / elapsed:.0f} rows/s, "
                    f"{len(together) / max(1, commits):.1f} rows per commit"
                )
            if args.database_url:
                break
        hook_calls(tmp, args.calls)
    return 0


def hook_calls(tmp: str, calls: int) -> None:
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from hook_call import build_request, largest_bundle

    from cds_service.http.app import create_app
    from cds_service.worker_gc import freeze_startup_objects

    _, request = build_request(largest_bundle())
    body = json.dumps(request).encode()
    url = "/cds-services/hfs-outcomes-patient-view"
    full = create_app(instance_path=Path(tmp) / "app-full", allow_unsigned=True, db_sqlite_synchronous="full")
    normal = create_app(instance_path=Path(tmp) / "app-normal", allow_unsigned=True, db_sqlite_synchronous="normal")
    old = create_app(instance_path=Path(tmp) / "app-old", allow_unsigned=True, db_sqlite_synchronous="normal")
    old_rt = old.extensions["cds_service"]

    def hand_over(notes):  # the path before: queued for the background writer, not waited for
        old_rt.store.submit_call(notes.record(old_rt.content_version))  # the row the new path commits
        return True

    old_rt.audit = hand_over
    freeze_startup_objects()
    clients = {"after the commit, FULL": full, "after the commit, NORMAL": normal, "old: background writer": old}
    clients = {name: app.test_client() for name, app in clients.items()}
    timings: dict[str, list[float]] = {name: [] for name in clients}
    for n in range(calls + 20):
        for name, client in clients.items():
            started = time.perf_counter()
            response = client.post(url, data=body, content_type="application/json")
            took = (time.perf_counter() - started) * 1000
            assert response.status_code == 200
            if n >= 20:
                timings[name].append(took)
    for name, values in timings.items():
        print(
            f"hook call, {name}: p50 {pct(values, 0.5):.2f} ms  p10 {pct(values, 0.1):.2f} ms  "
            f"p90 {pct(values, 0.9):.2f} ms"
        )
    for app in (full, normal, old):
        app.extensions["cds_service"].close()


if __name__ == "__main__":
    sys.exit(main())
