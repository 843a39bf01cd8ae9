"""Operating characteristics of the monitor's drift test (learning/drift.py), by simulation
(plain harness, no assertions; the tests check the targets with fewer runs).

    .venv/bin/python benchmarks/monitor_drift.py [--runs 2000] [--patients 1200] [--seed 1]

For the Cox path (events to a 12-month horizon, uniform censoring, expected events = the
model's cumulative hazard over each patient's own follow-up) and the logistic path
(predicted risks Beta(2, 6)), with the true observed / expected theta = 1 (stable), 1.5 and
0.67: the share of runs that alarm (stable: over the whole stream; drifted: by the 100th
event), and the median number of events at the alarm. The definitions' alpha and prior sd
are used (cards/learning/*.toml [monitoring]).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds_service.learning.definition import Monitoring
from cds_service.learning.drift import cox_terms, log_mixture_path, logistic_terms, mixture_grid


def simulate(kind: str, theta: float, runs: int, n: int, rng, grid):
    if kind == "cox":
        hazard = rng.gamma(2.0, 0.03, size=(runs, n))
        event_time = rng.exponential(1.0 / (hazard * theta))
        end = np.minimum(rng.uniform(1.0, 24.0, size=(runs, n)), 12.0)
        outcome = (event_time <= end).astype(float)
        return outcome, cox_terms(outcome, hazard * np.minimum(event_time, end), grid)
    risk = rng.beta(2.0, 6.0, size=(runs, n))
    outcome = (rng.uniform(size=(runs, n)) < np.clip(theta * risk, 0, 1)).astype(float)
    return outcome, logistic_terms(outcome, risk, grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    m = Monitoring()
    grid, weights = mixture_grid(m.mixture_sd)
    threshold = np.log(1.0 / m.alpha)
    rng = np.random.default_rng(args.seed)
    print(f"alpha {m.alpha}, prior sd {m.mixture_sd}, {args.runs} runs x {args.patients} patients")
    print(f"{'model':9} {'O/E':>5} {'alarm rate':>11} {'(by 100 events)':>16} {'median events at alarm':>23} {'s':>6}")
    for kind in ("cox", "logistic"):
        for theta in (1.0, 1.5, 0.67):
            started = time.perf_counter()
            alarmed, by100, at_events = 0, 0, []
            for start in range(0, args.runs, 250):  # chunks bound the memory
                size = min(250, args.runs - start)
                outcome, terms = simulate(kind, theta, size, args.patients, rng, grid)
                path = log_mixture_path(terms, weights)
                crossed = path >= threshold
                cumulative = np.cumsum(outcome, axis=1)
                first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
                alarmed += int((first >= 0).sum())
                hundredth = np.where(cumulative[:, -1] >= 100, np.argmax(cumulative >= 100, axis=1), args.patients)
                by100 += int(((first >= 0) & (first <= hundredth)).sum())
                at_events += [int(cumulative[i, f]) for i, f in enumerate(first) if f >= 0]
            median = f"{np.median(at_events):.0f}" if at_events else "-"
            print(
                f"{kind:9} {theta:5.2f} {alarmed / args.runs:11.3f} {by100 / args.runs:16.3f} {median:>23} "
                f"{time.perf_counter() - started:6.1f}"
            )


if __name__ == "__main__":
    main()
