"""The store on SQLite and PostgreSQL: feedback survives restarts, the audit trail links
cards to calls, and a JWT id can be claimed once, even by competing processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from cds_service.http.feedback import parse_feedback
from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.engine import StoreError
from cds_service.storage.store import Store

CARD_A = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
CARD_B = "9368d37b-283f-44a0-93ea-547cebab93ed"
ISSUER = "https://sandbox.cds-hooks.org"


def later(seconds: float = 300) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def call_with_cards(*cards: tuple[str, str, str], status: int = 200, **changes) -> CallRecord:
    values = dict(
        service_id="hfs-outcomes-order-select",
        hook="order-select",
        hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        outcome_status=status,
        duration_ms=12.5,
        patient_hash="ab" * 32,
        content_version="mvd-outcome@1.0,rfa-recurrence@1.1",
        client_iss=ISSUER,
        cards=[ReturnedCard(*card) for card in cards],
    )
    values.update(changes)
    return CallRecord(**values)


@pytest.fixture
def store(store_url):
    store = Store(store_url)
    yield store
    store.close()


# --------------------------------------------------------------------------- opening


def test_opening_creates_the_tables_and_reopening_is_harmless(store_url):
    Store(store_url).close()
    with Store(store_url) as again:
        names = set(sa.inspect(again.engine).get_table_names())
    assert {"feedback", "service_calls", "returned_cards", "used_jti"} <= names


def test_the_sqlite_file_gets_its_folder_and_a_wal_journal(tmp_path):
    path = tmp_path / "not" / "yet" / "there" / "cds-service.sqlite3"
    with Store(f"sqlite:///{path}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert path.exists()
    # WAL is a property of the file: a plain sqlite3 connection sees it too.
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_plain_postgresql_url_is_driven_by_psycopg(postgres_url):
    url = sa.engine.make_url(postgres_url).set(drivername="postgresql")
    with Store(url.render_as_string(hide_password=False)) as store:
        assert store.engine.dialect.driver == "psycopg"
        assert store.claim_jti(ISSUER, "one", later())


def test_an_unusable_url_is_refused_without_repeating_it():
    for url in ("mysql://root:hunter2@localhost/x", "not a url at all hunter2"):
        with pytest.raises(StoreError) as caught:
            Store(url)
        assert "hunter2" not in str(caught.value)


def test_an_unreachable_postgresql_server_fails_at_start_without_the_password():
    with pytest.raises(StoreError) as caught:
        Store("postgresql://cds:hunter2@127.0.0.1:1/cds")
    assert "hunter2" not in str(caught.value)
    assert "postgresql" in str(caught.value)


def _open_store(url: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=30)
        store = Store(url)
        store.record_call(call_with_cards((CARD_A, "mvd-outcome", "s")))
        store.close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_workers_starting_together_on_an_empty_database_all_open_it(store_url):
    ctx = multiprocessing.get_context("spawn")
    workers = 4
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    processes = [ctx.Process(target=_open_store, args=(store_url, barrier, results)) for _ in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert outcomes == ["ok"] * workers
    with Store(store_url) as store:
        assert store.usage_report().cards[0].shown == workers


# --------------------------------------------------------------------------- feedback


def test_feedback_survives_a_restart(store_url):
    body = {
        "feedback": [
            {
                "card": CARD_A,
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "12354", "system": "http://example.org/reasons", "display": "Contraindicated"},
                    "userComment": "Prefers botulinum toxin.",
                },
                "outcomeTimestamp": "2021-12-11T10:05:31+01:00",
            },
            {
                "card": CARD_A,
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "s-1"}, {"id": "s-2"}],
                "outcomeTimestamp": "2021-12-11T10:07:00Z",
            },
        ]
    }
    first = Store(store_url)
    assert first.record_feedback("hfs-outcomes-order-select", parse_feedback(body)) == 2
    first.close()

    with Store(store_url) as restarted:
        override, acceptance = restarted.feedback_for(CARD_A)
    assert override.service_id == "hfs-outcomes-order-select"
    assert override.outcome == "overridden"
    assert (override.override_reason.code, override.override_reason.display) == ("12354", "Contraindicated")
    assert override.override_reason.system == "http://example.org/reasons"
    assert override.user_comment == "Prefers botulinum toxin."
    assert override.outcome_timestamp == datetime(2021, 12, 11, 9, 5, 31, tzinfo=UTC)
    assert override.outcome_timestamp.tzinfo is not None
    assert override.accepted_suggestions == ()
    assert acceptance.outcome == "accepted"
    assert acceptance.accepted_suggestions == ("s-1", "s-2")
    assert acceptance.override_reason is None
    assert abs(acceptance.received_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_feedback_is_found_by_card_uuid_in_any_case(store):
    entries = parse_feedback(
        {"feedback": [{"card": CARD_B, "outcome": "overridden", "outcomeTimestamp": "2020-12-11T00:00:00Z"}]}
    )
    store.record_feedback("svc", entries)
    assert [f.card_uuid for f in store.feedback_for(CARD_B.upper())] == [CARD_B]
    assert store.feedback_for(CARD_A) == []


def test_no_entries_write_nothing(store):
    assert store.record_feedback("svc", []) == 0


# --------------------------------------------------------------------------- audit trail


def test_a_call_is_kept_with_the_cards_it_returned(store):
    call_id = store.record_call(
        call_with_cards(
            (CARD_A, "mvd-outcome", "MVD: 91% spasm-free"), (CARD_B, "rfa-recurrence", "RFA: recurrence risk")
        )
    )
    with store.engine.connect() as conn:
        call = conn.execute(sa.text("SELECT * FROM service_calls WHERE id = :id"), {"id": call_id}).mappings().one()
        cards = conn.execute(
            sa.text("SELECT call_id, card_uuid, card_id, summary FROM returned_cards ORDER BY id")
        ).all()
    assert call["hook"] == "order-select"
    assert call["outcome_status"] == 200
    assert call["duration_ms"] == 12.5
    assert call["patient_hash"] == "ab" * 32
    assert call["content_version"] == "mvd-outcome@1.0,rfa-recurrence@1.1"
    assert call["client_iss"] == ISSUER
    assert [tuple(c) for c in cards] == [
        (call_id, CARD_A, "mvd-outcome", "MVD: 91% spasm-free"),
        (call_id, CARD_B, "rfa-recurrence", "RFA: recurrence risk"),
    ]
    issued = store.issued_card(CARD_B.upper())
    assert (issued.call_id, issued.card_id, issued.service_id) == (
        call_id,
        "rfa-recurrence",
        "hfs-outcomes-order-select",
    )
    assert issued.called_at.tzinfo is not None
    assert store.issued_card("00000000-0000-0000-0000-000000000000") is None


def test_refused_calls_are_audited_without_cards_or_patient(store):
    first = store.record_call(call_with_cards(status=412, patient_hash=None, client_iss=None))
    second = store.record_call(call_with_cards(status=401, patient_hash=None, client_iss=None))
    assert second > first
    report = store.usage_report()
    assert report.calls_by_status == {401: 1, 412: 1}
    assert report.cards == ()


def test_hostile_client_text_in_the_audit_row_is_stored_not_fatal(store):
    call_id = store.record_call(
        call_with_cards(
            (CARD_A, "mvd-outcome", "s"),
            hook_instance="x\x00y" + "z" * 5000,
            client_iss="https://iss\ud800.example" + "/" * 5000,
        )
    )
    with store.engine.connect() as conn:
        instance, iss = conn.execute(
            sa.select(sa.column("hook_instance"), sa.column("client_iss"))
            .select_from(sa.table("service_calls"))
            .where(sa.column("id") == call_id)
        ).one()
    assert "\x00" not in instance and len(instance) <= 200
    assert len(iss) <= 1024


def test_a_call_time_must_carry_a_zone(store):
    with pytest.raises(sa.exc.StatementError, match="naive datetimes"):
        store.record_call(call_with_cards(called_at=datetime(2024, 1, 1, 12, 0)))
    assert store.usage_report().calls == 0


# --------------------------------------------------------------------------- jti replay


def test_a_jti_is_claimed_once_per_issuer(store):
    assert store.claim_jti(ISSUER, "a4f2c1", later()) is True
    assert store.claim_jti(ISSUER, "a4f2c1", later()) is False
    assert store.claim_jti("https://other.example.org", "a4f2c1", later()) is True
    assert store.claim_jti(ISSUER, "a4f2c2", later()) is True


def test_a_replayed_jti_is_refused_by_another_worker(store_url):
    first, second = Store(store_url), Store(store_url)
    try:
        assert first.claim_jti(ISSUER, "replayed", later()) is True
        assert second.claim_jti(ISSUER, "replayed", later()) is False
        assert first.claim_jti(ISSUER, "replayed", later()) is False
    finally:
        first.close()
        second.close()


def test_a_claimed_jti_stays_claimed_after_a_restart(store_url):
    with Store(store_url) as store:
        assert store.claim_jti(ISSUER, "kept", later())
    with Store(store_url) as store:
        assert store.claim_jti(ISSUER, "kept", later()) is False


def _claim(url: str, jti: str, barrier, results) -> None:
    try:
        store = Store(url)
        barrier.wait(timeout=30)
        results.put(store.claim_jti(ISSUER, jti, later()))
        store.close()
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_competing_processes_replaying_one_jti_win_exactly_once(store_url):
    ctx = multiprocessing.get_context("spawn")
    workers = 6
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    processes = [ctx.Process(target=_claim, args=(store_url, "raced-jti", barrier, results)) for _ in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert sorted(outcomes, key=str) == [False] * (workers - 1) + [True]


def test_expired_jtis_are_pruned_and_live_ones_kept(store):
    past = datetime.now(UTC) - timedelta(minutes=10)
    assert store.claim_jti(ISSUER, "old", past)
    assert store.claim_jti(ISSUER, "live", later())
    assert store.prune_expired_jti() == 1
    assert store.claim_jti(ISSUER, "live", later()) is False
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM used_jti")).scalar_one() == 1


def test_claiming_prunes_expired_rows_now_and_then(store):
    past = datetime.now(UTC) - timedelta(minutes=10)
    for n in range(5):
        store.claim_jti(ISSUER, f"old-{n}", past)
    store._next_prune = 0.0  # the prune interval has elapsed
    store.claim_jti(ISSUER, "fresh", later())
    with store.engine.connect() as conn:
        left = conn.execute(sa.text("SELECT jti FROM used_jti")).scalars().all()
    assert left == ["fresh"]


def test_oversized_or_odd_jtis_are_still_claimed_once(store):
    long_jti = "j" * 10_000
    wide_jti = "\u00e9" * 200  # 400 bytes of UTF-8
    for jti in (long_jti, wide_jti, "nul\x00jti", "lone\ud800"):
        assert store.claim_jti(ISSUER, jti, later()) is True
        assert store.claim_jti(ISSUER, jti, later()) is False
    assert store.claim_jti(ISSUER, long_jti[:-1], later()) is True
    assert store.claim_jti("https://" + "i" * 5000, "x", later()) is True
