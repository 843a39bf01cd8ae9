"""Benchmark: decoding a hook request whole (orjson) and keeping the elements read (msgspec,
fhir/decode.py), then building the record from each, in process. A script, not a test.

The decoder is built twice: keeping every resource and every Observation (`Decoding` of
the declared elements alone), and as the service builds it at start-up (the types the
record reads; the Observations that name a code the record reads them by).

    .venv/bin/python benchmarks/decode.py [--repeat 40]

Prints the best and median ms of each step for the largest Synthea chart + an HFS history.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from floor import largest_bundle  # noqa: E402
from hook_call import build_request  # noqa: E402

from cds_service.clinical.fhir_collect import READ_TYPES  # noqa: E402
from cds_service.clinical.fhir_elements import declared_elements  # noqa: E402
from cds_service.clinical.record_build import build_record  # noqa: E402
from cds_service.fhir.decode import Decoding  # noqa: E402
from cds_service.startup import observation_codes  # noqa: E402
from cds_service.terminology.concepts_file import load_concepts  # noqa: E402


def timed(step, repeat: int) -> tuple[float, float]:
    step()
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        runs.append((time.perf_counter() - started) * 1000.0)
    return min(runs), statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    count, request = build_request(largest_bundle())
    body = json.dumps(request).encode()
    concepts = load_concepts(ROOT / "cards")
    decoding = Decoding(declared_elements())
    service = Decoding(declared_elements(), READ_TYPES, observation_codes(concepts, {}))
    today = date(2026, 6, 1)
    whole = orjson.loads(body)["prefetch"]
    decoded = decoding.hook_request(body)["prefetch"]
    sifted = service.hook_request(body)["prefetch"]
    steps = {
        "orjson.loads (whole body)": lambda: orjson.loads(body),
        "msgspec decode (elements read)": lambda: decoding.hook_request(body),
        "... and Observations sifted": lambda: service.hook_request(body),
        "build_record from whole JSON": lambda: build_record(whole, concepts=concepts, today=today),
        "build_record from decoded": lambda: build_record(decoded, concepts=concepts, today=today),
        "build_record from sifted": lambda: build_record(sifted, concepts=concepts, today=today),
    }
    print(f"{count} resources, {len(body) / 1e6:.2f} MB")
    for name, step in steps.items():
        best, median = timed(step, args.repeat)
        print(f"{name:34s} best {best:6.2f} ms  median {median:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
