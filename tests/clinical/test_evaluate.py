"""Evaluating one card against one record: which situation fires for the hook, and each
of its predictors as found (used, missing, known only during surgery) in the record."""

from __future__ import annotations

import pytest
from support.chart import CARBAMAZEPINE, MVD, Chart, card

from cds_service.clinical.evaluate import INTRAOPERATIVE, MISSING, USED, evaluate

TODAY = "2025-06-01"
CARD = "amr-persistence"


def mvd_candidate() -> Chart:
    return Chart(patient_id="pt-evaluate-1").hfs(onset="2019-03-01").order(MVD)


def test_an_mvd_order_for_hfs_fires_the_order_situation_with_its_predictors_in_order():
    result = mvd_candidate().result(CARD, "order-sign", TODAY)
    situation = result.situation
    assert "order-sign" in situation.hooks
    # The situation's predictors in order, then the card's context predictors (read in every situation).
    assert [i.predictor for i in result.inputs] == [*situation.predictors, *result.card.context_predictors]
    assert result.order is not None and result.procedure is None
    assert result.card_id == CARD and result.hook == "order-sign"


def test_each_predictor_is_used_missing_or_known_only_during_surgery():
    result = mvd_candidate().result(CARD, "order-sign", TODAY)
    duration = result.input("disease_duration")
    assert duration.status == USED and duration.recorded and duration.value > 6
    carbamazepine = result.input("carbamazepine")
    assert carbamazepine.status == MISSING and not carbamazepine.recorded and carbamazepine.note
    assert result.input("retraction_depth").status == INTRAOPERATIVE
    with pytest.raises(KeyError):
        result.input("no-such-predictor")


def test_a_recorded_medication_is_used_with_its_date():
    chart = mvd_candidate().medication(CARBAMAZEPINE, authored="2020-01-01")
    carbamazepine = chart.result(CARD, "order-sign", TODAY).input("carbamazepine")
    assert carbamazepine.status == USED and carbamazepine.value is True and carbamazepine.date is not None


def test_the_card_does_not_fire_for_a_hook_none_of_its_situations_answers():
    assert mvd_candidate().result(CARD, "patient-view", TODAY) is None


def test_the_card_does_not_fire_for_an_mvd_order_without_hfs():
    assert Chart(patient_id="pt-evaluate-2").hypertension().order(MVD).result(CARD, "order-sign", TODAY) is None


def test_prefetch_the_call_could_not_get_is_carried_to_the_card():
    gaps = {"observations": "the FHIR server did not answer in time"}
    result = mvd_candidate().result(CARD, "order-sign", TODAY, unavailable=gaps)
    assert result.unavailable == gaps


def test_the_same_record_and_card_give_the_same_result_when_evaluated_directly():
    chart = mvd_candidate()
    direct = evaluate(card(CARD), chart.record("order-sign", TODAY), "order-sign")
    assert direct.inputs == chart.result(CARD, "order-sign", TODAY).inputs


def test_a_condition_that_abated_without_a_clinical_status_reads_as_abated_not_none():
    """record.py reads such a Condition as inactive; a record built otherwise (the property
    test builds records directly) must still never show the word None."""
    from dataclasses import replace

    chart = Chart().hfs().hypertension(onset="2015-06-01", status="resolved", abatement="2020-01-01")
    chart.order_medication(text="Botox (onabotulinumtoxinA) 100 units injection")
    record = chart.record("order-select", TODAY)
    [fact] = record.conditions["hypertension"]
    record.conditions["hypertension"] = [replace(fact, clinical_status=None, abated=True)]
    result = evaluate(card("btxa-response"), record, "order-select")
    [value] = [i for i in result.inputs if i.predictor == "hypertension"]
    assert value.display == "recorded as abated" and value.value is False
