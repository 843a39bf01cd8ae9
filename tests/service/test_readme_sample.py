"""The README's *Call it* sample is what the service answers: its request (the curl body,
with the RFA 7 months ago) is sent to the real app, and the card shown in the README must
match the answer (summary, indicator, start of the detail, source, first override reason,
links). When a card text changes, this test says which line of the README to update."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def months_ago(today: date, months: int) -> date:
    year, month = divmod(today.year * 12 + today.month - 1 - months, 12)
    return date(year, month + 1, min(today.day, 28))


def readme_request_and_card() -> tuple[dict, dict]:
    text = README.read_text(encoding="utf-8")
    call = text[text.index("## Call it") :]
    body = re.search(r"-d '(\{.*?\})'\n```", call, flags=re.S).group(1)
    day = months_ago(date.today(), 7).isoformat()
    request = json.loads(body.replace("'\"$RFA_DAY\"'", day))
    answer = re.search(r"answers with one card.*?```json\n(.*?)\n```", call, flags=re.S).group(1)
    # the README elides with "..." (a list element) and " ..." (the end of the detail)
    card = json.loads(answer)["cards"][0]
    return request, card


def test_the_readme_sample_card_is_what_the_service_answers(client):
    request, shown = readme_request_and_card()
    response = client.post("/cds-services/hfs-outcomes-patient-view", json=request)
    assert response.status_code == 200, response.get_data(as_text=True)
    [card] = response.get_json()["cards"]
    assert card["summary"] == shown["summary"]
    assert card["indicator"] == shown["indicator"]
    assert card["detail"].startswith(shown["detail"].removesuffix(" ...")), card["detail"][:300]
    assert card["source"] == shown["source"]
    assert card["overrideReasons"][0] == shown["overrideReasons"][0]
    assert [link["label"] for link in card["links"]] == [link["label"] for link in shown["links"]]
    for got, readme in zip(card["links"], shown["links"]):
        if "<token>" in readme["url"]:
            assert re.fullmatch(r"http://localhost/evidence/[A-Za-z0-9_-]{16,}", got["url"]), got["url"]
        else:
            assert got == readme
