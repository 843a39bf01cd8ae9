"""Client-set card switches and a card budget (issue 19): discovery publishes them in the
shape of the Da Vinci CRD configuration-options extension; a request may set them; a 2.0
client that sends nothing gets every card."""

from __future__ import annotations

import pytest
from support import error_body
from support.chart import MVD, Chart

ORDER_SIGN = "/cds-services/hfs-outcomes-order-sign"
OPTIONS = "org.example.hfs-cds.configuration-options"
CONFIG = "org.example.hfs-cds.configuration"


@pytest.fixture
def app_settings() -> dict:
    return {"as_of": "2026-01-15"}


def two_card_request(configuration: dict | None = None, **extension) -> dict:
    """Signing an MVD and botulinum toxin A: the AMR card and the BTX-A card fire."""
    body = Chart(patient_id="pt-config-1").hfs().order(MVD).order_medication(text="Botox").hook_request("order-sign")
    if configuration is not None:
        extension[CONFIG] = configuration
    if extension:
        body["extension"] = extension
    return body


def card_ids(client, body: dict) -> list[str]:
    response = client.post(ORDER_SIGN, json=body)
    assert response.status_code == 200, response.get_json()
    return [card["source"]["topic"]["code"] for card in response.get_json()["cards"]]


BOTH = ["hfs-mvd-amr", "hfs-botulinum-toxin"]


def test_discovery_lists_a_switch_per_card_and_situation_and_a_budget_all_on_by_default(client):
    services = {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}
    options = {o["code"]: o for o in services["order-sign"]["extension"][OPTIONS]}
    assert options["btxa-response"]["type"] == "boolean" and options["btxa-response"]["default"] is True
    situations = [code for code in options if code.startswith("amr-persistence.")]
    assert situations and all(options[c]["default"] is True for c in situations)
    assert "spinal-metastasis-mwa" in options and "rfa-recurrence.after-rfa" not in options  # a patient-view situation
    budget = options["max-cards"]
    assert budget["type"] == "integer" and budget["default"] == len([c for c in options if "." not in c]) - 1
    assert all(set(o) == {"code", "type", "name", "description", "default"} for o in options.values())
    assert all(o["name"].strip() and o["description"].strip() for o in options.values())


def test_a_client_that_sends_nothing_gets_what_one_with_everything_on_gets(client):
    assert card_ids(client, two_card_request()) == BOTH
    assert card_ids(client, two_card_request({"amr-persistence": True, "btxa-response": True, "max-cards": 5})) == BOTH


def test_a_card_switched_off_is_not_shown(client):
    assert card_ids(client, two_card_request({"amr-persistence": False})) == ["hfs-botulinum-toxin"]


def test_a_situation_switched_off_hides_the_card_only_when_that_situation_holds(client):
    services = {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}
    options = {o["code"] for o in services["order-sign"]["extension"][OPTIONS]}
    btxa_situations = {c for c in options if c.startswith("btxa-response.")}
    assert card_ids(client, two_card_request(dict.fromkeys(btxa_situations, False))) == ["hfs-mvd-amr"]
    other = {c for c in options if c.startswith("spinal-metastasis-mwa.")}
    assert card_ids(client, two_card_request(dict.fromkeys(other, False))) == BOTH


@pytest.mark.parametrize(("budget", "shown"), [(0, []), (1, BOTH[:1]), (2, BOTH)])
def test_the_card_budget_caps_the_cards(client, budget, shown):
    assert card_ids(client, two_card_request({"max-cards": budget})) == shown


def test_unknown_options_and_other_extensions_are_ignored(client):
    body = two_card_request({"no-such-option": False, "x.y": 3}, **{"com.example.other": {"a": 1}})
    assert card_ids(client, body) == BOTH


@pytest.mark.parametrize(
    ("configuration", "option"),
    [({"max-cards": "2"}, "max-cards"), ({"max-cards": -1}, "max-cards"), ({"btxa-response": "no"}, "btxa-response")],
)
def test_a_known_option_with_a_wrong_value_is_a_400_naming_it(client, configuration, option):
    response = client.post(ORDER_SIGN, json=two_card_request(configuration))
    assert response.status_code == 400
    assert error_body.code(response.get_json()) == "invalid_request"
    assert f"{CONFIG}.{option}" in error_body.text(response.get_json())


def test_a_configuration_that_is_not_an_object_is_a_400(client):
    response = client.post(ORDER_SIGN, json=two_card_request(**{CONFIG: [1]}))
    assert response.status_code == 400 and CONFIG in error_body.text(response.get_json())
