"""Time build_record on the largest Synthea bundle (plain timing harness, no assertions).

    .venv/bin/python benchmarks/record_build.py [bundle.json ...]

Prints, per bundle: resources, selected facts, and build time (median / p95 / max over
repeated runs after a warm-up), with and without the check of the elements read, so the
cost of selecting from raw JSON and of checking the selected resources can be told apart.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cds_service.clinical import record_build as record_module  # noqa: E402
from cds_service.clinical.record import iter_facts  # noqa: E402
from cds_service.clinical.record_build import build_record  # noqa: E402
from cds_service.terminology.concepts_file import load_concepts  # noqa: E402

# The records the tests ship (tests/data/synthea, Apache-2.0), else ../shared beside a checkout.
SYNTHEA = next(
    (
        p
        for p in (REPO / "tests" / "data" / "synthea", REPO.parent / "shared" / "fhir-samples" / "synthea")
        if p.is_dir()
    ),
    REPO / "tests" / "data" / "synthea",
)
RUNS = 200


def timings(fn, runs: int = RUNS) -> list[float]:
    for _ in range(10):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000.0)
    return sorted(out)


def summary(ms: list[float]) -> str:
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"median {statistics.median(ms):6.2f} ms  p95 {p95:6.2f} ms  max {ms[-1]:6.2f} ms"


def main(paths: list[Path]) -> None:
    concepts = load_concepts(REPO / "cards")
    today = date(2025, 1, 1)
    for path in paths:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        prefetch = {"everything": bundle}
        record = build_record(prefetch, None, None, concepts=concepts, today=today)
        n_facts = sum(1 for _ in iter_facts(record))
        print(
            f"{path.name}: {len(bundle.get('entry', []))} resources, {n_facts} facts, "
            f"{len(record.unreadable)} unreadable"
        )
        print(
            "  build_record            ",
            summary(timings(lambda: build_record(prefetch, None, None, concepts=concepts, today=today))),
        )
        real_readable = record_module._readable
        record_module._readable = lambda *args: True
        try:
            print(
                "  without element checks  ",
                summary(timings(lambda: build_record(prefetch, None, None, concepts=concepts, today=today))),
            )
        finally:
            record_module._readable = real_readable


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]]
    if not args:
        args = [max(SYNTHEA.glob("*.json"), key=lambda p: p.stat().st_size)]
    main(args)
