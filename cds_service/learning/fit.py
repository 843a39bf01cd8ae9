"""Fitting and internal validation of the learned models.

- Cox proportional hazards with lifelines (Efron ties, Breslow baseline); logistic
  regression with statsmodels (maximum likelihood). Both are well-kept, documented
  libraries whose estimates and confidence intervals are standard.
- Discrimination: Harrell's C (Cox) / the area under the ROC curve (logistic).
- Calibration: slope (the outcome regressed on the linear predictor) and intercept
  (logistic: calibration-in-the-large with the linear predictor as offset; Cox: ln of
  observed / expected events, expected from each patient's cumulative hazard at their
  follow-up time), and grouped observed-vs-predicted risk for the plot (Cox: at a horizon,
  observed by Kaplan-Meier).
- Optimism: Harrell's bootstrap. Each resample's model is evaluated on the resample
  (apparent) and on the original data (test); the mean difference is the optimism,
  subtracted from the apparent value. On its own data a maximum-likelihood model has
  calibration slope 1 and intercept 0 by construction.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

FitFailed = RuntimeError


@dataclass(frozen=True)
class Design:
    names: tuple[str, ...]
    x: np.ndarray  # n x p, coded
    event: np.ndarray  # n, 0/1
    time: np.ndarray | None  # n (Cox)


@dataclass(frozen=True)
class CoxFit:
    names: tuple[str, ...]
    beta: np.ndarray
    se: np.ndarray
    ci: np.ndarray  # p x 2
    reference: np.ndarray  # coded reference profile
    steps: np.ndarray  # event times of the baseline step function
    cumhaz_ref: np.ndarray  # H(t | reference) at `steps`

    def lp(self, x: np.ndarray) -> np.ndarray:
        return x @ self.beta

    def cumhaz(self, x: np.ndarray, t: np.ndarray | float) -> np.ndarray:
        """H(t | x) for each row (t per row, or one t for all)."""
        at = np.searchsorted(self.steps, np.asarray(t, dtype=float), side="right") - 1
        h_ref = np.where(at >= 0, self.cumhaz_ref[np.clip(at, 0, None)], 0.0)
        return h_ref * np.exp((x - self.reference) @ self.beta)

    def baseline_survival(self, t: float) -> float:
        return float(np.exp(-self.cumhaz(self.reference[None, :], t))[0])


@dataclass(frozen=True)
class LogisticFit:
    names: tuple[str, ...]
    intercept: float
    beta: np.ndarray
    se: np.ndarray  # intercept first
    ci: np.ndarray  # (p+1) x 2, intercept first

    def lp(self, x: np.ndarray) -> np.ndarray:
        return self.intercept + x @ self.beta


# ---------------------------------------------------------------------------- fitting
def fit_cox(d: Design, reference: np.ndarray) -> CoxFit:
    import pandas as pd
    from lifelines import CoxPHFitter

    frame = pd.DataFrame(d.x, columns=list(d.names))
    frame["T"] = d.time
    frame["E"] = d.event
    model = CoxPHFitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model.fit(frame, duration_col="T", event_col="E")
        except Exception as exc:  # lifelines: ConvergenceError and linear-algebra errors
            raise FitFailed(f"the Cox model did not converge ({type(exc).__name__})") from None
    beta = model.params_.loc[list(d.names)].to_numpy(dtype=float)
    se = model.standard_errors_.loc[list(d.names)].to_numpy(dtype=float)
    ci = model.confidence_intervals_.loc[list(d.names)].to_numpy(dtype=float)
    if not (np.all(np.isfinite(beta)) and np.all(np.isfinite(se))):
        raise FitFailed("the Cox model gave no finite estimate (too few events in a predictor's range?)")
    ref_frame = pd.DataFrame(reference[None, :], columns=list(d.names))
    cumhaz = model.predict_cumulative_hazard(ref_frame)  # at the baseline's own event times
    steps = cumhaz.index.to_numpy(dtype=float)
    return CoxFit(d.names, beta, se, ci, reference, steps, cumhaz.iloc[:, 0].to_numpy(dtype=float))


def fit_logistic(d: Design) -> LogisticFit:
    import statsmodels.api as sm

    design = sm.add_constant(d.x, has_constant="add")
    result = _quiet_fit(lambda: sm.Logit(d.event, design).fit(disp=0, maxiter=100))
    params = np.asarray(result.params, dtype=float)
    se = np.asarray(result.bse, dtype=float)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(se))):
        raise FitFailed("the logistic model gave no finite estimate (separation?)")
    ci = np.asarray(result.conf_int(0.05), dtype=float)
    return LogisticFit(d.names, float(params[0]), params[1:], se, ci)


def _quiet_fit(fit):
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            result = fit()
        except (PerfectSeparationWarning, ConvergenceWarning):
            raise FitFailed("the model did not converge: an outcome is perfectly separated by a predictor") from None
        except Exception as exc:  # statsmodels: PerfectSeparationError, LinAlgError
            raise FitFailed(f"the model could not be fitted ({type(exc).__name__})") from None
    if not getattr(result, "mle_retvals", {"converged": True}).get("converged", True):
        raise FitFailed("the model did not converge")
    return result


# ---------------------------------------------------------------------------- measures
def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (= C-statistic) by ranks, ties counted half."""
    from scipy.stats import rankdata

    y = np.asarray(y, dtype=bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def harrell_c(time: np.ndarray, event: np.ndarray, lp: np.ndarray) -> float:
    from lifelines.utils import concordance_index

    return float(concordance_index(time, -lp, event))


def logistic_calibration(y: np.ndarray, lp: np.ndarray) -> tuple[float, float]:
    """(slope, intercept): logit(y) ~ a + b * lp, and logit(y) ~ a' + offset(lp)."""
    import statsmodels.api as sm

    slope = _quiet_fit(lambda: sm.Logit(y, sm.add_constant(lp, has_constant="add")).fit(disp=0)).params[1]
    glm = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=lp)
    intercept = _quiet_fit(lambda: glm.fit()).params[0]
    return float(slope), float(intercept)


def cox_calibration(model: CoxFit, d: Design) -> tuple[float, float]:
    """(slope, intercept): Cox regression of the outcome on the model's linear predictor;
    ln(observed / expected events)."""
    import pandas as pd
    from lifelines import CoxPHFitter

    frame = pd.DataFrame({"lp": model.lp(d.x), "T": d.time, "E": d.event})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slope = float(CoxPHFitter().fit(frame, "T", "E").params_["lp"])
        except Exception as exc:
            raise FitFailed(f"the calibration slope could not be estimated ({type(exc).__name__})") from None
    expected = float(model.cumhaz(d.x, d.time).sum())
    observed = float(d.event.sum())
    intercept = math.log(observed / expected) if observed > 0 and expected > 0 else math.nan
    return slope, intercept


def kaplan_meier_risk(time: np.ndarray, event: np.ndarray, horizon: float) -> float:
    """1 - S_KM(horizon)."""
    order = np.argsort(time, kind="mergesort")
    t, e = time[order], event[order]
    survival = 1.0
    at_risk = len(t)
    i = 0
    while i < len(t) and t[i] <= horizon:
        j = i
        deaths = 0
        while j < len(t) and t[j] == t[i]:
            deaths += int(e[j])
            j += 1
        if at_risk > 0:
            survival *= 1.0 - deaths / at_risk
        at_risk -= j - i
        i = j
    return 1.0 - survival


def observed_expected(observed: int, expected: float, alpha: float = 0.05) -> dict:
    """O/E with the exact (Garwood) Poisson interval of O, divided by E (E taken as known)."""
    from scipy.stats import chi2

    if expected <= 0:
        return {"estimate": None, "low": None, "high": None}
    low = chi2.ppf(alpha / 2, 2 * observed) / 2 if observed > 0 else 0.0
    high = chi2.ppf(1 - alpha / 2, 2 * (observed + 1)) / 2
    return {"estimate": observed / expected, "low": float(low) / expected, "high": float(high) / expected}


def c_interval(c: float, events: int, non_events: int) -> dict:
    """A C-statistic with the Hanley-McNeil (1982) 95 % interval (events vs non-events)."""
    if not math.isfinite(c) or events < 1 or non_events < 1:
        return {"estimate": c if math.isfinite(c) else None, "low": None, "high": None}
    q1, q2 = c / (2 - c), 2 * c * c / (1 + c)
    var = (c * (1 - c) + (events - 1) * (q1 - c * c) + (non_events - 1) * (q2 - c * c)) / (events * non_events)
    se = math.sqrt(max(var, 0.0))
    return {"estimate": c, "low": max(0.0, c - 1.959964 * se), "high": min(1.0, c + 1.959964 * se)}


def calibration_slope_interval(kind: str, lp: np.ndarray, event: np.ndarray, time: np.ndarray | None) -> dict:
    """The calibration slope with its 95 % interval: logistic regression of the outcome on the
    linear predictor, or Cox regression of the (horizon-truncated) outcome on it."""
    if kind == "logistic":
        import statsmodels.api as sm

        result = _quiet_fit(lambda: sm.Logit(event, sm.add_constant(lp, has_constant="add")).fit(disp=0))
        ci = np.asarray(result.conf_int(0.05), dtype=float)
        return {"estimate": float(result.params[1]), "low": float(ci[1, 0]), "high": float(ci[1, 1])}
    import pandas as pd
    from lifelines import CoxPHFitter

    frame = pd.DataFrame({"lp": lp, "T": time, "E": event})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fitted = CoxPHFitter().fit(frame, "T", "E")
        except Exception as exc:
            raise FitFailed(f"the calibration slope could not be estimated ({type(exc).__name__})") from None
    ci = fitted.confidence_intervals_.loc["lp"].to_numpy(dtype=float)
    return {"estimate": float(fitted.params_["lp"]), "low": float(ci[0]), "high": float(ci[1])}


def calibration_groups(predicted: np.ndarray, d: Design, horizon: float | None, groups: int) -> list[dict]:
    """Observed vs mean predicted risk in groups of equal size by predicted risk."""
    order = np.argsort(predicted, kind="mergesort")
    out = []
    for part in np.array_split(order, max(1, min(groups, len(order)))):
        if len(part) == 0:
            continue
        if horizon is None:
            observed = float(d.event[part].mean())
        else:
            observed = kaplan_meier_risk(d.time[part], d.event[part], horizon)
        out.append({"n": len(part), "predicted": float(predicted[part].mean()), "observed": observed})
    return out


# ---------------------------------------------------------------------------- validation
@dataclass(frozen=True)
class Performance:
    c_apparent: float
    c_corrected: float
    slope_apparent: float
    slope_corrected: float
    intercept_apparent: float
    intercept_corrected: float
    resamples: int
    failed: int


def validate_logistic(d: Design, model: LogisticFit, resamples: int, seed: int) -> Performance:
    lp = model.lp(d.x)
    c_app = auc(d.event, lp)
    slope_app, int_app = logistic_calibration(d.event, lp)
    rng = np.random.default_rng(seed)
    opt_c, test_slope, test_int, failed = [], [], [], 0
    for _ in range(resamples):
        pick = rng.integers(0, len(d.event), len(d.event))
        boot = Design(d.names, d.x[pick], d.event[pick], None)
        try:
            m = fit_logistic(boot)
            lp_test = m.lp(d.x)
            s, i = logistic_calibration(d.event, lp_test)
        except FitFailed:
            failed += 1
            continue
        opt_c.append(auc(boot.event, m.lp(boot.x)) - auc(d.event, lp_test))
        test_slope.append(s)
        test_int.append(i)
    return _performance(c_app, slope_app, int_app, opt_c, test_slope, test_int, resamples, failed)


def validate_cox(d: Design, model: CoxFit, resamples: int, seed: int) -> Performance:
    lp = model.lp(d.x)
    c_app = harrell_c(d.time, d.event, lp)
    slope_app, int_app = cox_calibration(model, d)
    rng = np.random.default_rng(seed)
    opt_c, test_slope, test_int, failed = [], [], [], 0
    for _ in range(resamples):
        pick = rng.integers(0, len(d.event), len(d.event))
        boot = Design(d.names, d.x[pick], d.event[pick], d.time[pick])
        if boot.event.sum() == 0:
            failed += 1
            continue
        try:
            m = fit_cox(boot, model.reference)
            s, i = cox_calibration(m, d)
        except FitFailed:
            failed += 1
            continue
        opt_c.append(harrell_c(boot.time, boot.event, m.lp(boot.x)) - harrell_c(d.time, d.event, m.lp(d.x)))
        test_slope.append(s)
        test_int.append(i)
    return _performance(c_app, slope_app, int_app, opt_c, test_slope, test_int, resamples, failed)


def _performance(c_app, slope_app, int_app, opt_c, test_slope, test_int, resamples, failed) -> Performance:
    if not opt_c:  # no resample (bootstrap = 0, or every resample failed): no correction
        return Performance(c_app, math.nan, slope_app, math.nan, int_app, math.nan, resamples, failed)
    # Apparent slope 1 and intercept 0 in each resample (maximum likelihood, by construction).
    return Performance(
        c_apparent=c_app,
        c_corrected=c_app - float(np.mean(opt_c)),
        slope_apparent=slope_app,
        slope_corrected=slope_app - float(np.mean([1.0 - s for s in test_slope])),
        intercept_apparent=int_app,
        intercept_corrected=int_app - float(np.mean([0.0 - i for i in test_int])),
        resamples=resamples,
        failed=failed,
    )
