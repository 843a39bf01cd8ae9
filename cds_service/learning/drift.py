"""The sequential drift test of a deployed model: a mixture sequential probability ratio
test (mixture SPRT, Robbins 1970) on calibration-in-the-large, with a false-alarm rate
that holds however often the monitor looks.

Each patient scored by the deployed model contributes, under the hypothesis that the model
is right (H0), a likelihood ratio for a drift of size theta:
- Cox (events over follow-up up to the horizon, expected events E_i = the model's
  cumulative hazard over the patient's own follow-up, so censoring is respected):
  LR_i(theta) = theta ** O_i * exp(-(theta - 1) * E_i)   (theta: the hazard ratio, O/E)
- logistic (binary outcome, predicted risk p_i):
  LR_i(delta) = exp(delta * y_i) / (1 - p_i + p_i * exp(delta))   (delta: log odds shift)
Under H0 each has expectation 1 (the first is the exponential martingale of a counting
process with its compensator, stopped at the end of follow-up), so the running product over
patients in the order they were scored, averaged over a fixed prior on log theta (normal,
sd `mixture_sd`, discretised), is a non-negative martingale with mean 1. Ville's inequality
then bounds the chance that it EVER reaches 1 / alpha by alpha: the false-alarm rate is
controlled over the whole monitoring, for any number of looks, without a planned end.
The mixture makes the test two-sided (drift up or down) and needs no guess of the drift.

Everything is vectorised numpy: `log_mixture_path` takes per-patient terms (runs x
patients) so the same code serves the monitor (one run) and the simulation (hundreds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID_POINTS = 41


def mixture_grid(sd: float, points: int = GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """log theta values and their weights (a normal prior with this sd, discretised over
    +/- 4 sd; the weights sum to 1, so the mixture of martingales is a martingale)."""
    grid = np.linspace(-4 * sd, 4 * sd, points)
    weights = np.exp(-0.5 * (grid / sd) ** 2)
    return grid, weights / weights.sum()


def cox_terms(observed: np.ndarray, expected: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per-patient log LR at each grid point: (..., patients, grid)."""
    o = np.asarray(observed, dtype=float)[..., None]
    e = np.asarray(expected, dtype=float)[..., None]
    return o * grid - (np.exp(grid) - 1.0) * e


def logistic_terms(outcome: np.ndarray, risk: np.ndarray, grid: np.ndarray) -> np.ndarray:
    y = np.asarray(outcome, dtype=float)[..., None]
    p = np.asarray(risk, dtype=float)[..., None]
    return y * grid - np.log1p(p * np.expm1(grid))


def log_mixture_path(terms: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log of the mixture likelihood ratio after each patient: (..., patients)."""
    cumulative = np.cumsum(terms, axis=-2) + np.log(weights)
    top = cumulative.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(cumulative - top).sum(axis=-1, keepdims=True)))[..., 0]


@dataclass(frozen=True)
class DriftResult:
    statistic: float  # the largest log mixture LR reached
    threshold: float  # log(1 / alpha)
    alarm: bool
    at: int | None  # the patient (0-based, in scoring order) at which it first crossed
    direction: str | None  # "higher" (more events than expected) or "lower"


def drift_test(kind: str, outcome: np.ndarray, predicted: np.ndarray, alpha: float, sd: float) -> DriftResult:
    """The test on one monitoring cohort, patients in the order they were scored.
    Cox: outcome = events (0/1) up to the horizon, predicted = expected events E_i;
    logistic: outcome = 0/1, predicted = risk."""
    grid, weights = mixture_grid(sd)
    outcome = np.asarray(outcome, dtype=float)
    predicted = np.asarray(predicted, dtype=float)
    threshold = float(np.log(1.0 / alpha))
    if len(outcome) == 0:
        return DriftResult(0.0, threshold, False, None, None)
    terms = cox_terms(outcome, predicted, grid) if kind == "cox" else logistic_terms(outcome, predicted, grid)
    path = log_mixture_path(terms, weights)
    crossed = np.flatnonzero(path >= threshold)
    at = int(crossed[0]) if len(crossed) else None
    direction = None
    if at is not None:
        o, e = outcome[: at + 1].sum(), predicted[: at + 1].sum()
        direction = "higher" if o > e else "lower"
    return DriftResult(float(path.max()), threshold, at is not None, at, direction)


def alarms(terms: np.ndarray, weights: np.ndarray, alpha: float, until: np.ndarray | None = None) -> np.ndarray:
    """For a simulation: runs x patients terms -> whether each run alarmed (at or before the
    patient index `until`, per run, when given)."""
    path = log_mixture_path(terms, weights)
    crossed = path >= np.log(1.0 / alpha)
    if until is not None:
        crossed &= np.arange(path.shape[-1])[None, :] <= np.asarray(until)[:, None]
    return crossed.any(axis=-1)
