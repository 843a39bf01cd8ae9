"""The JSON Schema of a card file, for editors that check TOML as it is written (taplo /
Even Better TOML read the `#:schema` directive at the top of each card file).

Regenerate after changing the card models (a test fails while the copy is out of date):

    .venv/bin/python -m cds_service.content.card_schema > cards/schema/card.schema.json
"""

from __future__ import annotations

import json
import sys

from cds_service.content.cards import card_json_schema


def schema_text() -> str:
    return json.dumps(card_json_schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
