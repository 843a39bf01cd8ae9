"""The JSON Schema published for editors (cards/schema/card.schema.json) is the one the
card models generate, and every shipped card file passes it."""

import json
import tomllib

import jsonschema

from cds_service.config import DEFAULT_CARDS_DIR
from cds_service.content.card_schema import schema_text
from cds_service.content.cards import NOT_CARD_FILES

SCHEMA_FILE = DEFAULT_CARDS_DIR / "schema" / "card.schema.json"
CARD_FILES = sorted(p for p in DEFAULT_CARDS_DIR.glob("*.toml") if p.name not in NOT_CARD_FILES)


def test_the_committed_card_schema_is_the_one_the_models_generate():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "cards/schema/card.schema.json is out of date: run "
        "`.venv/bin/python -m cds_service.content.card_schema > cards/schema/card.schema.json`"
    )


def test_every_card_file_names_the_schema_and_passes_it():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    assert len(CARD_FILES) == 5
    for path in CARD_FILES:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("#:schema ./schema/card.schema.json\n"), path.name
        assert [e.message for e in validator.iter_errors(tomllib.loads(text))] == [], path.name


def test_the_schema_refuses_an_unknown_key_and_an_unknown_hook():
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text(encoding="utf-8")))
    data = tomllib.loads((DEFAULT_CARDS_DIR / "rfa_recurrence.toml").read_text(encoding="utf-8"))
    data["colour"] = "blue"
    data["situations"][0]["hooks"] = ["encounter-start"]
    messages = " ".join(e.message for e in validator.iter_errors(data))
    assert "'colour' was unexpected" in messages and "'encounter-start' is not one of" in messages
