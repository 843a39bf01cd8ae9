"""The model maths against values computed by hand."""

import math

import pytest

from cds_service.clinical.risk_models import CoxModel, LogisticModel, ModelIncomplete

RFA = CoxModel(names=("operation_time", "paralysis_grade"), coefficients=(-0.619, -2.589))


def test_published_rfa_hazard_ratios_per_coding_unit_are_those_evidence_gives():
    # EVIDENCE.md A: HR exp(-0.619) = 0.538 and exp(-2.589) = 0.075.
    ratios = RFA.hazard_ratios()
    assert ratios["operation_time"] == pytest.approx(0.538483, abs=1e-6)
    assert round(ratios["operation_time"], 3) == 0.538
    assert ratios["paralysis_grade"] == pytest.approx(0.075095, abs=1e-6)
    assert round(ratios["paralysis_grade"], 3) == 0.075


def test_linear_predictor_of_two_covariates():
    # -0.619 * 3 + -2.589 * 2 = -1.857 - 5.178 = -7.035
    assert RFA.linear_predictor([3, 2]) == pytest.approx(-7.035)


def test_relative_hazard_needs_a_reference_vector():
    with pytest.raises(ModelIncomplete):
        RFA.relative_hazard([1, 1])


def test_relative_hazard_against_the_reference_vector():
    model = CoxModel(RFA.names, RFA.coefficients, reference=(2, 1))
    # one more unit of X1 than the reference: exp(-0.619)
    assert model.relative_hazard([3, 1]) == pytest.approx(math.exp(-0.619))
    # x = (1, 2) vs (2, 1): exp(0.619 - 2.589) = exp(-1.97) = 0.13946...
    assert model.relative_hazard([1, 2]) == pytest.approx(0.139457, abs=1e-6)
    assert model.relative_hazard([2, 1]) == pytest.approx(1.0)


def test_survival_from_baseline_survival_at_the_reference():
    model = CoxModel(("x",), (math.log(2.0),), reference=(0,), baseline_survival={12: 0.8})
    # HR 2 against the reference: S = 0.8 ** 2 = 0.64, event probability 0.36
    assert model.survival([1], 12) == pytest.approx(0.64)
    assert model.event_probability([1], 12) == pytest.approx(0.36)
    # at the reference the survival is the baseline
    assert model.survival([0], 12) == pytest.approx(0.8)
    # HR 0.5: 0.8 ** 0.5 = 0.894427...
    assert model.survival([-1], 12) == pytest.approx(0.894427, abs=1e-6)


def test_survival_at_a_horizon_without_baseline_is_refused():
    model = CoxModel(("x",), (0.5,), reference=(0,), baseline_survival={12: 0.8})
    with pytest.raises(ModelIncomplete):
        model.survival([1], 6)


def test_baseline_survival_outside_zero_one_is_rejected():
    with pytest.raises(ValueError):
        CoxModel(("x",), (0.5,), reference=(0,), baseline_survival={12: 1.2})


def test_covariate_vector_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError):
        RFA.linear_predictor([1])
    with pytest.raises(ValueError):
        RFA.linear_predictor([1, float("nan")])


def test_logistic_without_intercept_gives_odds_ratios_only():
    # EVIDENCE.md C: hypertension adjusted OR 5.847; coefficient ln(5.847) = 1.765929...
    model = LogisticModel.from_odds_ratios({"hypertension": 5.847})
    assert model.coefficients[0] == pytest.approx(1.765929, abs=1e-6)
    assert model.odds_ratios()["hypertension"] == pytest.approx(5.847)
    with pytest.raises(ModelIncomplete):
        model.probability([1])


def test_logistic_probability_with_an_intercept():
    model = LogisticModel.from_odds_ratios({"hypertension": 5.847}, intercept=-3.0)
    # no hypertension: 1 / (1 + e^3) = 0.0474259
    assert model.probability([0]) == pytest.approx(0.0474259, abs=1e-7)
    # hypertension: logit = -3 + 1.765929 = -1.234071 -> 0.225470
    assert model.probability([1]) == pytest.approx(0.225470, abs=1e-6)
    # the odds ratio between the two is the published one
    p0, p1 = model.probability([0]), model.probability([1])
    assert (p1 / (1 - p1)) / (p0 / (1 - p0)) == pytest.approx(5.847)


def test_logistic_with_two_coefficients():
    model = LogisticModel(("a", "b"), (0.5, -1.0), intercept=0.25)
    # 0.25 + 0.5*2 - 1.0*1 = 0.25 -> 1/(1+e^-0.25) = 0.562177
    assert model.probability([2, 1]) == pytest.approx(0.562177, abs=1e-6)


def test_logistic_is_stable_at_extreme_linear_predictors():
    model = LogisticModel(("a",), (1.0,), intercept=0.0)
    assert model.probability([800]) == pytest.approx(1.0)
    assert model.probability([-800]) == pytest.approx(0.0)


def test_odds_ratio_must_be_positive():
    with pytest.raises(ValueError):
        LogisticModel.from_odds_ratios({"x": 0.0})
