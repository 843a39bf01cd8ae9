"""The maths of the card models (numpy). Nothing here knows about FHIR, cards or text.

- CoxModel: linear predictor x.beta, hazard ratio against a reference covariate vector,
  and survival S(t|x) = S0(t) ** exp(lp - lp_ref) when the baseline survival S0(t) *at the
  reference vector* is known.
- LogisticModel: odds ratios exp(b) always; a probability 1 / (1 + exp(-(b0 + x.b))) only
  when the intercept b0 is known.
- Evidence-only cards have no model: they show cohort figures next to the patient's own
  factor profile (see evaluate.py).

A model refuses to compute what its parameters do not support (ModelIncomplete), so a
number that a source did not publish can never be produced by accident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from cds_service.content.site_models import SiteModel


class ModelIncomplete(ValueError):
    """The model lacks a parameter (intercept, baseline survival, reference) for this result."""


def _vector(values: Sequence[float], length: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.shape != (length,):
        raise ValueError(f"{what}: expected {length} values, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: values must be finite numbers")
    return array


@dataclass(frozen=True)
class CoxModel:
    """Proportional hazards model h(t|x) = h0(t) * exp(x.beta)."""

    names: tuple[str, ...]
    coefficients: tuple[float, ...]
    reference: tuple[float, ...] | None = None
    # Baseline survival at the reference vector: horizon (e.g. months) -> S0(horizon).
    baseline_survival: Mapping[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _vector(self.coefficients, len(self.names), "coefficients")
        if self.reference is not None:
            _vector(self.reference, len(self.names), "reference")
        for horizon, survival in self.baseline_survival.items():
            if not (0.0 < float(survival) <= 1.0):
                raise ValueError(f"baseline survival at {horizon} must be in (0, 1], got {survival}")

    @property
    def beta(self) -> np.ndarray:
        return np.asarray(self.coefficients, dtype=float)

    def hazard_ratios(self) -> dict[str, float]:
        """exp(beta) per one unit of each predictor's coding."""
        return dict(zip(self.names, np.exp(self.beta).tolist()))

    def linear_predictor(self, x: Sequence[float]) -> float:
        return float(_vector(x, len(self.names), "covariates") @ self.beta)

    def relative_hazard(self, x: Sequence[float]) -> float:
        """exp(lp(x) - lp(reference)): the hazard of x relative to the reference vector."""
        if self.reference is None:
            raise ModelIncomplete("a relative hazard needs a reference covariate vector")
        return float(np.exp(self.linear_predictor(x) - self.linear_predictor(self.reference)))

    def survival(self, x: Sequence[float], horizon: float) -> float:
        """S(t|x) = S0(t) ** exp(lp(x) - lp(reference))."""
        if horizon not in self.baseline_survival:
            raise ModelIncomplete(f"no baseline survival at horizon {horizon}")
        s0 = float(self.baseline_survival[horizon])
        return float(np.power(s0, self.relative_hazard(x)))

    def event_probability(self, x: Sequence[float], horizon: float) -> float:
        """1 - S(t|x): probability of the event by the horizon."""
        return 1.0 - self.survival(x, horizon)


@dataclass(frozen=True)
class LogisticModel:
    """logit p = b0 + x.b; b0 may be unknown (then only odds ratios are available)."""

    names: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float | None = None

    def __post_init__(self) -> None:
        _vector(self.coefficients, len(self.names), "coefficients")
        if self.intercept is not None and not np.isfinite(self.intercept):
            raise ValueError("intercept must be a finite number")

    @classmethod
    def from_odds_ratios(cls, odds_ratios: Mapping[str, float], intercept: float | None = None) -> LogisticModel:
        for name, value in odds_ratios.items():
            if not value > 0:
                raise ValueError(f"odds ratio for {name} must be positive, got {value}")
        names = tuple(odds_ratios)
        return cls(names, tuple(float(np.log(odds_ratios[n])) for n in names), intercept)

    @property
    def beta(self) -> np.ndarray:
        return np.asarray(self.coefficients, dtype=float)

    def odds_ratios(self) -> dict[str, float]:
        return dict(zip(self.names, np.exp(self.beta).tolist()))

    def linear_predictor(self, x: Sequence[float]) -> float:
        if self.intercept is None:
            raise ModelIncomplete("a probability needs the model intercept")
        return float(self.intercept + _vector(x, len(self.names), "covariates") @ self.beta)

    def probability(self, x: Sequence[float]) -> float:
        lp = self.linear_predictor(x)
        # Numerically stable logistic function.
        if lp >= 0:
            return float(1.0 / (1.0 + np.exp(-lp)))
        z = float(np.exp(lp))
        return z / (1.0 + z)


def cox_model(site: SiteModel) -> CoxModel:
    """The numeric Cox model of a site overlay's complete model (content.site_models.SiteModel)."""
    ref = tuple(site.reference[n] for n in site.names) if site.reference else None
    return CoxModel(site.names, site.coefficients, ref, dict(site.baseline_survival))


def logistic_model(site: SiteModel) -> LogisticModel:
    """The numeric logistic model of a site overlay's complete model (content.site_models.SiteModel)."""
    return LogisticModel(site.names, site.coefficients, site.intercept)
