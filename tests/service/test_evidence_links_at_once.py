"""A card's evidence link opens the moment the card is handed out, from any worker
(issue 17): the real service with two gunicorn workers, SQLite and PostgreSQL; each link
is fetched on a new connection right after its card arrives, while other calls run.
Before, the page was written after the answer and about 1 fetch in 3 answered 404.
(benchmarks/page_availability.py runs the same with 1,000 calls.)"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from support.scenario_requests import hfs_after_mvd_patient_view
from support.served import ClientSigner, ServedService

SERVICE = "/cds-services/hfs-outcomes-patient-view"
CALLS = 50


def call_then_open_link(served: ServedService, n: int) -> tuple[int, list[int]]:
    body = hfs_after_mvd_patient_view(f"pt-link-{n}")
    body["hookInstance"] = str(uuid.uuid4())
    answer = requests.post(served.base_url + SERVICE, json=body, headers=served.auth(SERVICE), timeout=30)
    if answer.status_code != 200:
        return answer.status_code, []
    urls = [link["url"] for card in answer.json()["cards"] for link in card["links"] if "/evidence/" in link["url"]]
    return 200, [requests.get(url, timeout=30).status_code for url in urls]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_every_link_opens_right_after_its_card_from_either_worker(tmp_path, backend, request):
    database_url = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    served = ServedService(tmp_path / "served", ClientSigner(), workers=2, database_url=database_url).start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda n: call_then_open_link(served, n), range(CALLS)))
    finally:
        served.stop()
    assert [status for status, _ in results] == [200] * CALLS
    fetched = [status for _, pages in results for status in pages]
    assert len(fetched) >= CALLS  # every answer had at least one evidence link
    assert fetched.count(200) == len(fetched), sorted(set(fetched))
