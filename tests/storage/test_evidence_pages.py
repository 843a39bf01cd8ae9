"""Evidence page data kept behind an unguessable token for its lifetime, then deleted,
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from cds_service.storage.evidence_pages import (
    TOMBSTONE_DAYS,
    EvidencePages,
    evidence_pages,
    token_hash,
)
from cds_service.storage.store import Store

PAGE = {"card_id": "rfa-recurrence", "title": "Recurrence after RFA", "charts": [], "inputs": []}


def test_a_saved_page_opens_with_its_token_and_the_table_keeps_only_the_token_hash(store_url):
    with Store(store_url) as store:
        pages = EvidencePages(store)
        token = pages.save(PAGE)
        assert pages.get(token).data == PAGE
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(evidence_pages)).mappings().all()
        assert [r["token_sha256"] for r in rows] == [token_hash(token)]
        assert all(token not in str(value) for value in rows[0].values())
        assert rows[0]["card_id"] == "rfa-recurrence"


def test_tokens_are_url_safe_and_carry_at_least_128_bits(store_url):
    with Store(store_url) as store:
        pages = EvidencePages(store)
        tokens = {pages.save(PAGE) for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert len(token) * 6 >= 128  # base64url: 6 bits a character


def test_an_unknown_token_opens_nothing_and_is_not_called_expired(store_url):
    with Store(store_url) as store:
        pages = EvidencePages(store)
        pages.save(PAGE)
        found = pages.get("a" * 43)
        assert found.data is None and not found.expired


def test_an_expired_page_is_reported_expired_and_its_data_is_deleted_by_the_purge(store_url):
    with Store(store_url) as store:
        pages = EvidencePages(store, ttl_s=60)
        token = pages.save(PAGE)
        later = datetime.now(UTC) + timedelta(seconds=61)
        assert pages.get(token, now=later).expired
        assert pages.purge_expired(now=later) == 1
        with store.engine.connect() as conn:
            data = conn.execute(sa.select(evidence_pages.c.data)).scalar_one()
        assert data is None  # only the tombstone is left
        assert pages.get(token).expired  # still says "expired" (410), not "unknown"


def test_old_tombstones_go_too(store_url):
    with Store(store_url) as store:
        pages = EvidencePages(store, ttl_s=60)
        token = pages.save(PAGE)
        much_later = datetime.now(UTC) + timedelta(days=TOMBSTONE_DAYS, seconds=120)
        pages.purge_expired(now=much_later)
        found = pages.get(token, now=much_later)
        assert found.data is None and not found.expired
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(evidence_pages)).scalar_one() == 0


def test_a_live_page_survives_the_purge_of_expired_ones(store_url):
    with Store(store_url) as store:
        pages = EvidencePages(store, ttl_s=3600)
        short = pages.save(PAGE, ttl_s=1)
        long = pages.save(PAGE)
        pages.purge_expired(now=datetime.now(UTC) + timedelta(seconds=5))
        assert pages.get(long).data == PAGE
        assert pages.get(short).expired


def test_two_stores_on_one_database_create_the_table_once(store_url):
    with Store(store_url) as first, Store(store_url) as second:
        EvidencePages(first)
        EvidencePages(second)
        token = EvidencePages(first).save(PAGE)
        assert EvidencePages(second).get(token).data == PAGE


def test_a_non_positive_lifetime_is_refused(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'x.sqlite3'}") as store, pytest.raises(ValueError):
        EvidencePages(store, ttl_s=0)
