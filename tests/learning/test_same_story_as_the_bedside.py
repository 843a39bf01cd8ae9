"""`cds-service learn` reads the patient's story with the bedside's code (EVIDENCE.md "The
patient's story": the hook path and `learn` read the story with the same rules). The same
patients are built through both paths, and every learnable predictor has the same value:
the one the card shows at the bedside, and the one in the patient's training row.

Each learning `read` is declared on the derivation kind it stands for (content/derivations.py
`learn_reads`), next to the bedside kind: a card predictor learned by a read of another kind
fails here. The training row is built twice: from the chart's JSON, and from the chart as
`learn` stages it (each resource decoded once into the declared elements and read back as
the bedside's Structs, tests/support/staged.py); both must be the same row.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from support.chart import CARBAMAZEPINE, LOCAL, MVD, Chart, card, concepts
from support.staged import staged_patient
from support.story_charts import MVD_CPT

from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.derivations import KINDS
from cds_service.learning.cohort import Row, patient_row
from cds_service.learning.definition import BINARY_READS, NUMERIC_READS, definition_path, load_definition

LEARN_TODAY = date(2025, 6, 1)
RFA_DAY = date(2024, 10, 1)
UCUM_MIN = {"unit": "min", "system": "http://unitsofmeasure.org", "code": "min"}


def definition(card_id: str):
    return load_definition(definition_path(DEFAULT_CARDS_DIR, card_id))[0]


def contact(chart: Chart, day: date) -> Chart:
    """A later visit: follow-up for the Cox outcome (censored at the last contact)."""
    chart.resources.append(
        {"resourceType": "Encounter", "id": f"enc-{day}", "status": "finished", "period": {"start": day.isoformat()}}
    )
    return chart


def rfa_chart(kind: str) -> Chart:
    day = RFA_DAY.isoformat()
    chart = Chart().hfs(onset="2019-03-01")
    if kind == "period":
        chart.rfa(f"{day}T08:00:00Z", f"{day}T08:40:00Z")
    elif kind == "admission-and-observation":  # a period over the stay; the operation time observed
        chart.rfa(f"{day}T07:00:00Z", f"{(RFA_DAY + timedelta(days=1)).isoformat()}T09:00:00Z")
        chart.observation((LOCAL, "operation-time"), f"{day}T09:00:00Z", valueQuantity={"value": 35, **UCUM_MIN})
    elif kind == "text-observation-and-period":  # no number in the observation: the period is used
        chart.rfa(f"{day}T08:00:00Z", f"{day}T08:45:00Z")
        chart.observation((LOCAL, "operation-time"), day, valueString="about half an hour")
    elif kind == "or-and-billing-records":  # one operation recorded twice (merged)
        chart.rfa(f"{day}T08:00:00Z", f"{day}T08:50:00Z").rfa(day)
    chart.observation((LOCAL, "house-brackmann-grade"), (RFA_DAY + timedelta(days=2)).isoformat(), valueInteger=2)
    return contact(chart, RFA_DAY + timedelta(days=200))


def bedside_values(chart: Chart, card_id: str, hook: str, today: date, predictors) -> dict[str, float]:
    result = chart.result(card_id, hook, today)
    assert result is not None, f"{card_id} did not fire"
    out = {}
    for pid in predictors:
        item = result.input(pid)
        assert item.recorded, f"{pid}: {item.display} ({item.note})"
        out[pid] = float(item.value)
    return out


def learned_values(chart: Chart, card_id: str) -> dict[str, float]:
    row = patient_row(chart.resources, definition(card_id), concepts(), LEARN_TODAY)
    assert isinstance(row, Row), f"the patient is not in the cohort: {row}"
    assert patient_row(staged_patient(chart.resources), definition(card_id), concepts(), LEARN_TODAY) == row
    return row.values


@pytest.mark.parametrize(
    "kind", ["period", "admission-and-observation", "text-observation-and-period", "or-and-billing-records"]
)
def test_the_rfa_predictors_are_the_same_at_the_bedside_and_in_training(kind):
    chart = rfa_chart(kind)
    names = [p.id for p in definition("rfa-recurrence").predictors]
    bedside = bedside_values(chart, "rfa-recurrence", "patient-view", RFA_DAY + timedelta(days=30), names)
    assert learned_values(chart, "rfa-recurrence") == bedside
    assert bedside["operation_time"] == {
        "admission-and-observation": 35.0,
        "text-observation-and-period": 45.0,
        "or-and-billing-records": 50.0,
    }.get(kind, 40.0)


def test_the_mvd_predictors_are_the_same_before_the_operation_and_in_training():
    mvd_day = date(2024, 3, 5)
    history = Chart().hfs(onset="2016-02-01").medication(CARBAMAZEPINE, authored="2023-06-01")
    history.observation((LOCAL, "cohen-spasm-grade"), "2024-02-20", valueInteger=3)
    history.observation((LOCAL, "responsible-vessel-count"), "2024-02-20", valueInteger=2)
    history.observation(
        (LOCAL, "amr-amplitude-preop"),
        "2024-02-28",
        valueQuantity={"value": 250, "unit": "uV", "system": "http://unitsofmeasure.org", "code": "uV"},
    )
    names = [p.id for p in definition("amr-persistence").predictors]
    at_the_order = Chart.__new__(Chart)
    at_the_order.__dict__.update(history.__dict__, resources=list(history.resources), drafts=[], selections=[])
    at_the_order.order(MVD)
    bedside = bedside_values(at_the_order, "amr-persistence", "order-select", mvd_day, names)

    operated = history
    operated.procedure(MVD_CPT, f"{mvd_day}T08:00:00Z", f"{mvd_day}T10:30:00Z").procedure(MVD, mvd_day.isoformat())
    operated.observation(
        (LOCAL, "amr-intraop-result"), f"{mvd_day}T10:10:00Z", valueCodeableConcept={"text": "persisted"}
    )
    assert learned_values(operated, "amr-persistence") == bedside


def test_each_learnable_read_stands_for_the_bedside_kind_of_the_card_predictor_it_learns():
    declared = {read: name for name, kind in KINDS.items() for read in kind.learn_reads}
    assert set(declared) == NUMERIC_READS | BINARY_READS
    for card_id in ("rfa-recurrence", "amr-persistence", "btxa-response"):
        content = card(card_id)
        for p in definition(card_id).predictors:
            assert declared[p.read] == content.predictor(p.id).derive, (card_id, p.id, p.read)


def test_a_repeat_record_of_the_index_operation_is_not_a_further_treatment():
    # one RFA recorded by the operating room (a period) and by billing (date only): one
    # operation, no event; an RFA on a later day is the further treatment (the event)
    chart = rfa_chart("or-and-billing-records")
    row = patient_row(chart.resources, definition("rfa-recurrence"), concepts(), LEARN_TODAY)
    assert isinstance(row, Row) and row.event is False
    chart.rfa((RFA_DAY + timedelta(days=90)).isoformat())
    row = patient_row(chart.resources, definition("rfa-recurrence"), concepts(), LEARN_TODAY)
    assert isinstance(row, Row) and row.event is True and round(row.time) == 3
