"""The registry of derivation kinds: every kind has one evaluate function, a new kind needs
only a registry entry and a function, and the `age` kind lets every card say, as data, that
its figures may not apply to a child (EVIDENCE.md "How risk is presented")."""

import tomllib

import pytest
from support.chart import BONE_METASTASIS, MVD, MWA_THORACIC, Chart, concepts

from cds_service.clinical import evaluate as evaluate_module
from cds_service.clinical.evaluate import USED, InputValue, evaluate
from cds_service.clinical.render import render
from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content import derivations
from cds_service.content.cards import ContentError, card_from_data
from cds_service.content.derivations import DerivationKind

TODAY = "2025-06-01"
CHILD_CAVEAT = "under 18: none of the sources describes children"
BOTOX_TEXT = "onabotulinumtoxinA 100 unit injection"


def charts_firing_every_card(birth_date: str | None) -> dict[str, tuple[Chart, str]]:
    """card id -> (a chart on which it fires, the hook), for a patient born on birth_date."""

    def chart() -> Chart:
        c = Chart(birth_date=birth_date or "2000-01-01")
        if birth_date is None:
            del c.resources[0]["birthDate"]
        return c

    return {
        "rfa-recurrence": (chart().hfs().rfa("2025-01-10T08:00:00Z", "2025-01-10T08:45:00Z"), "patient-view"),
        "amr-persistence": (chart().hfs().order(MVD), "order-sign"),
        "btxa-response": (chart().hfs().order_medication(text=BOTOX_TEXT), "order-select"),
        "mvd-recurrence": (chart().hfs().mvd("2024-09-01"), "patient-view"),
        "spinal-metastasis-mwa": (chart().condition(BONE_METASTASIS).order(MWA_THORACIC), "order-sign"),
    }


def strength_of_evidence(detail: str) -> str:
    return detail[detail.index("**Strength of evidence:**") : detail.index("*This card informs")]


def test_every_derivation_kind_has_one_evaluate_function_of_the_same_name():
    assert set(evaluate_module.DERIVE) == set(derivations.KINDS)


@pytest.mark.parametrize("card_id", sorted(charts_firing_every_card("2013-02-01")))
def test_a_twelve_year_olds_card_says_the_figures_may_not_apply_to_children(card_id):
    chart, hook = charts_firing_every_card("2013-02-01")[card_id]
    detail = chart.show(card_id, hook, TODAY)["detail"]
    assert CHILD_CAVEAT in strength_of_evidence(detail)
    assert "the cohorts' ages are not given in the sources, and the figures may not apply" in detail
    assert f"- **Age**: 12 years; as of {TODAY}" in detail


@pytest.mark.parametrize("card_id", sorted(charts_firing_every_card("1962-04-12")))
def test_an_adults_card_has_no_caveat_about_children(card_id):
    chart, hook = charts_firing_every_card("1962-04-12")[card_id]
    detail = chart.show(card_id, hook, TODAY)["detail"]
    assert "children" not in detail
    assert f"- **Age**: 63 years; as of {TODAY}" in detail


@pytest.mark.parametrize("card_id", sorted(charts_firing_every_card(None)))
def test_a_missing_birth_date_is_listed_as_missing_and_gives_no_caveat(card_id):
    chart, hook = charts_firing_every_card(None)[card_id]
    detail = chart.show(card_id, hook, TODAY)["detail"]
    missing = detail[detail.index("### Patient data missing") :]
    assert "- **Age**: not recorded (looked for the patient's date of birth; none in the data received)" in missing
    assert "children" not in detail


@pytest.mark.parametrize(
    "birth_date,age,child",
    [("2007-06-01", 18, False), ("2007-06-02", 17, True), ("2025-06-01", 0, True)],
)
def test_age_is_whole_years_at_the_date_of_the_call(birth_date, age, child):
    chart, hook = charts_firing_every_card(birth_date)["rfa-recurrence"]
    result = chart.result("rfa-recurrence", hook, TODAY)
    assert result.input("patient_age").value == age
    assert (CHILD_CAVEAT in render(result)["detail"]) is child


def test_a_birth_date_after_the_call_gives_no_age():
    chart, hook = charts_firing_every_card("2026-01-01")["rfa-recurrence"]
    item = chart.result("rfa-recurrence", hook, TODAY).input("patient_age")
    assert item.status == "missing" and "after the date of the call" in item.note


def test_the_age_is_not_counted_among_the_cards_factors():
    chart, hook = charts_firing_every_card("1962-04-12")["amr-persistence"]
    summary = chart.show("amr-persistence", hook, TODAY)["summary"]
    assert "of the 5 preoperative factors are recorded" in summary or "1 of the 5 preoperative factors is" in summary


# -- adding a kind = one registry entry + one function ------------------------------------------
def _count_conditions(p, reading) -> InputValue:
    n = len(reading.record.conditions)
    return InputValue(p.id, p.label, USED, value=n, display=str(n), note="conditions recognised in the record")


def _card_with_a_condition_count(threshold: int) -> dict:
    data = tomllib.loads((DEFAULT_CARDS_DIR / "rfa_recurrence.toml").read_text(encoding="utf-8"))
    data["predictors"].append(
        {
            "id": "condition_count",
            "label": "Recognised conditions",
            "derive": "condition_count",
            "how": "the conditions of the record",
            "context": True,
        }
    )
    data["caveats"].append(
        {
            "variants": [
                {"when": {"predictor": "condition_count", "at_least": threshold}, "text": "Several conditions."},
                {"otherwise": True, "omit": True},
            ]
        }
    )
    return data


def test_a_new_derivation_kind_needs_one_registry_entry_and_one_function(monkeypatch):
    with pytest.raises(ContentError, match="derive 'condition_count' is not one of"):
        card_from_data(_card_with_a_condition_count(1), "rfa_recurrence.toml", concepts())

    monkeypatch.setitem(derivations.KINDS, "condition_count", DerivationKind("how many conditions are recorded"))
    monkeypatch.setitem(evaluate_module.DERIVE, "condition_count", _count_conditions)

    card = card_from_data(_card_with_a_condition_count(1), "rfa_recurrence.toml", concepts())
    chart, hook = charts_firing_every_card("1962-04-12")["rfa-recurrence"]
    result = evaluate(card, chart.record(hook, TODAY), hook)
    assert result.input("condition_count").value == 1
    detail = render(result)["detail"]
    assert "- **Recognised conditions**: 1; conditions recognised in the record" in detail
    assert "Several conditions." in strength_of_evidence(detail)

    card = card_from_data(_card_with_a_condition_count(2), "rfa_recurrence.toml", concepts())
    assert "Several conditions." not in render(evaluate(card, chart.record(hook, TODAY), hook))["detail"]


def test_daily_morphine_reads_a_recorded_dose_first_and_then_the_prescriptions():
    # issue 15: concept [0] is the recorded daily dose, [1] the drug prescribed; swapped is refused
    data = tomllib.loads((DEFAULT_CARDS_DIR / "spinal_metastasis_mwa.toml").read_text(encoding="utf-8"))
    morphine = next(p for p in data["predictors"] if p["id"] == "morphine")
    morphine["concept"] = ["morphine", "daily_morphine_dose"]
    with pytest.raises(ContentError, match="is a medication, expected observation"):
        card_from_data(data, concepts=concepts())
