"""Evidence pages while PostgreSQL pauses (a partition that heals) or refuses (issue 16
item 4): a page read is bounded by the store's settings and answers 503 with Retry-After,
never a 500 or a 45 s wait; the pages of cards answered during the outage are not dropped,
so every link opens once the store is back (and answers 503, not 404, before)."""

from __future__ import annotations

import time

import pytest
from support.db_fixture import FAST_STORE
from support.scenario_requests import hfs_after_mvd_patient_view

pytestmark = pytest.mark.postgres

SERVICE = "/cds-services/hfs-outcomes-patient-view"
BASE = "http://localhost"
FAST = {**FAST_STORE, "public_base_url": BASE}
BOUND_S = 4.0  # connect timeout (2 s, libpq's least) + the statement deadline + slack


@pytest.fixture
def proxy(postgres_proxy):
    return postgres_proxy


def link_path(response) -> str:
    urls = [link["url"] for card in response.get_json()["cards"] for link in card["links"]]
    return next(url for url in urls if "/evidence/" in url).removeprefix(BASE)


def timed_get(client, path):
    started = time.monotonic()
    response = client.get(path)
    return response, time.monotonic() - started


def heal(proxy, fault):
    proxy.resume() if fault == "pause" else proxy.restore()


@pytest.mark.parametrize("fault", ["pause", "refuse"])
def test_a_page_read_answers_503_within_the_bound_while_postgresql_is_away(make_app, proxy, fault):
    client = make_app(database_url=proxy.database_url, **FAST).test_client()
    path = link_path(client.post(SERVICE, json=hfs_after_mvd_patient_view("pt-before")))
    assert client.get(path).status_code == 200

    getattr(proxy, fault)()
    for _ in range(3):
        response, seconds = timed_get(client, path)
        assert response.status_code == 503, response.get_data(as_text=True)[:300]
        assert int(response.headers["Retry-After"]) >= 1
        assert seconds < BOUND_S

    heal(proxy, fault)
    time.sleep(FAST["db_retry_after_s"] + 0.2)
    assert client.get(path).status_code == 200


@pytest.mark.parametrize("fault", ["pause", "refuse"])
def test_pages_of_cards_answered_during_an_outage_open_once_the_store_is_back(make_app, proxy, fault):
    app = make_app(database_url=proxy.database_url, **FAST)
    client = app.test_client()
    runtime = app.extensions["cds_service"]
    assert client.post(SERVICE, json=hfs_after_mvd_patient_view("pt-warm")).status_code == 200

    getattr(proxy, fault)()
    paths = []
    for n in range(8):
        started = time.monotonic()
        response = client.post(SERVICE, json=hfs_after_mvd_patient_view(f"pt-away-{n}"))
        assert response.status_code == 200
        assert time.monotonic() - started < BOUND_S
        paths.append(link_path(response))
    assert runtime.audit_spool_depth() == len(paths)  # kept, with their pages, in the spool
    assert {client.get(p).status_code for p in paths} == {503}  # "retry", never "not found"

    heal(proxy, fault)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and runtime.audit_spool_depth():
        time.sleep(0.2)
    assert runtime.audit_spool_depth() == 0
    assert [client.get(p).status_code for p in paths] == [200] * len(paths)
