"""A hook call's audit row and evidence pages are kept before the call is answered
(issue 16 items 2-3, issue 17's "available at once"): committed in one transaction shared
by concurrent calls, or spooled; False only when neither store nor spool takes them."""

from __future__ import annotations

import errno
import threading
import time

import pytest
import sqlalchemy as sa

from cds_service.storage.audit import build_call_record
from cds_service.storage.audit_spool import AuditSpool
from cds_service.storage.audit_writer import AuditWriter
from cds_service.storage.engine import StoreUnavailable
from cds_service.storage.evidence_pages import EvidencePages
from cds_service.storage.store import Store, StoreOptions
from cds_service.storage.write_gate import write_gate

PAGE = {"card_id": "rfa-recurrence", "title": "Recurrence after RFA"}


def call_with_page(pages: EvidencePages, n: int = 0):
    token, row = pages.row({**PAGE, "n": n})
    record = build_call_record(
        service_id="hfs-outcomes-patient-view",
        hook="patient-view",
        hook_instance=f"call-{n}",
        outcome_status=200,
        duration_ms=5.0,
        cards=[(f"00000000-0000-0000-0000-{n:012d}", "rfa-recurrence", "summary")],
        pages=[row],
    )
    return token, record


def stored_calls(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(conn.execute(sa.text("SELECT hook_instance FROM service_calls")).scalars())


def test_a_kept_call_and_its_page_are_committed_before_keep_returns_for_every_worker(store_url, tmp_path):
    options = StoreOptions(spool_dir=tmp_path / "spool")
    with Store(store_url, options) as store, Store(store_url) as other_worker:
        token, record = call_with_page(EvidencePages(store))
        assert store.keep_call(record)
        assert EvidencePages(other_worker).get(token).data == {**PAGE, "n": 0}
        assert stored_calls(other_worker) == ["call-0"]
        assert store.audit_spool_depth() == 0


def test_sqlite_commits_are_on_disk_when_they_return(tmp_path):
    """WAL with synchronous=NORMAL does not fsync a commit: a crash or a file system gone
    read-only lost rows committed up to 1.3 s before (issue 16 item 3)."""
    with Store(f"sqlite:///{tmp_path / 'db.sqlite3'}") as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    normal = StoreOptions(sqlite_synchronous="normal")
    with Store(f"sqlite:///{tmp_path / 'db.sqlite3'}", normal) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL, when chosen


def test_concurrent_calls_share_commits(store_url, tmp_path):
    with Store(store_url, StoreOptions(spool_dir=tmp_path / "spool", audit_commit_wait_s=5.0)) as store:
        pages = EvidencePages(store)
        calls = [call_with_page(pages, n) for n in range(20)]
        results: list[bool] = []
        # Hold the commit thread's first write (SQLite: the write gate; PostgreSQL: a
        # table lock) while the 20 calls queue behind it.
        threads = [threading.Thread(target=lambda r=r: results.append(store.keep_call(r))) for _, r in calls]
        with _holding_writes(store):
            for thread in threads:
                thread.start()
            time.sleep(0.3)
        for thread in threads:
            thread.join(10)
        assert results == [True] * 20
        assert stored_calls(store) == sorted(f"call-{n}" for n in range(20))
        assert all(pages.get(token).data["n"] == n for n, (token, _) in enumerate(calls))
        assert store.audit_writer.commits <= 3  # one held, then the rest together


class _holding_writes:
    def __init__(self, store: Store) -> None:
        self.store = store

    def __enter__(self):
        if self.store.backend == "sqlite":
            self._gate = write_gate(self.store.engine, 5.0)
            self._gate.__enter__()
        else:
            self._conn = self.store.engine.connect()
            self._tx = self._conn.begin()
            self._conn.exec_driver_sql("LOCK TABLE service_calls IN EXCLUSIVE MODE")

    def __exit__(self, *exc):
        if self.store.backend == "sqlite":
            self._gate.__exit__(*exc)
        else:
            self._tx.rollback()
            self._conn.close()


def test_a_row_the_store_refuses_is_spooled_with_its_pages_and_replayed(store_url, tmp_path, monkeypatch):
    with Store(store_url, StoreOptions(spool_dir=tmp_path / "spool")) as store:
        pages = EvidencePages(store)
        token, record = call_with_page(pages)
        refuse = [StoreUnavailable()]
        write = store.audit_writer._write

        def refusing(records, pages):
            if refuse:
                raise refuse.pop()
            return write(records, pages)

        monkeypatch.setattr(store.audit_writer, "_write", refusing)
        assert store.keep_call(record)
        assert store.audit_spool_depth() == 1
        assert pages.get(token).data is None  # not yet: it waits in the spool
        store.audit_writer._replay()
        assert store.audit_spool_depth() == 0
        assert pages.get(token).data == {**PAGE, "n": 0}
        assert stored_calls(store) == ["call-0"]


def test_a_row_neither_the_store_nor_the_spool_can_take_is_not_kept(tmp_path, monkeypatch, caplog):
    """The folder is full: the call must be refused (503), not answered unaudited."""
    with Store(f"sqlite:///{tmp_path / 'db.sqlite3'}", StoreOptions(spool_dir=tmp_path / "spool")) as store:
        _, record = call_with_page(EvidencePages(store))

        def full(*_args):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(
            store.audit_writer, "_write", lambda records, pages: (_ for _ in ()).throw(StoreUnavailable())
        )
        monkeypatch.setattr(AuditSpool, "append", full)
        assert not store.keep_call(record)
        assert "cannot be kept" in caplog.text and "OSError" in caplog.text
        store.db.mark_down()  # the store known down: refused at once, without queueing
        started = time.monotonic()
        assert not store.keep_call(record)
        assert time.monotonic() - started < 0.5


def test_a_commit_slower_than_the_wait_spools_the_row_without_marking_the_store_down(tmp_path):
    """Another process holds SQLite's write lock longer than audit_commit_wait_s: the call
    is answered after about that wait (its row spooled), not after the busy timeout, and
    the store is not taken for down (a signed call's jti claim still goes to it)."""
    import sqlite3

    path = tmp_path / "db.sqlite3"
    options = StoreOptions(
        spool_dir=tmp_path / "spool", audit_commit_wait_s=0.2, statement_timeout_s=5.0, retry_after_s=0.3
    )
    with Store(f"sqlite:///{path}", options) as store:
        pages = EvidencePages(store)
        token, record = call_with_page(pages)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # the write lock, held
        try:
            started = time.monotonic()
            assert store.keep_call(record)
            assert time.monotonic() - started < 1.0  # not the 5 s busy timeout
            assert store.audit_spool_depth() == 1
            assert not store.is_down()
        finally:
            other.execute("ROLLBACK")
            other.close()
        store.audit_writer._replay()
        assert stored_calls(store) == ["call-0"]
        assert pages.get(token).data == {**PAGE, "n": 0}
        _, second = call_with_page(pages, 1)
        assert store.keep_call(second)  # within retry_after_s of the failure: spooled at once
        assert store.audit_spool_depth() == 1
        time.sleep(0.35)
        _, third = call_with_page(pages, 2)
        assert store.keep_call(third) and store.audit_spool_depth() == 1  # committed again


def test_a_row_committed_and_also_spooled_is_stored_once(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'db.sqlite3'}", StoreOptions(spool_dir=tmp_path / "spool")) as store:
        pages = EvidencePages(store)
        _, record = call_with_page(pages)
        record = store._identified(record)
        assert store.keep_call(record)
        store.audit_writer.spool.append([record])  # as when a slow commit landed after all
        store.audit_writer._replay()
        assert stored_calls(store) == ["call-0"]
        assert store.audit_spool_depth() == 0


@pytest.mark.parametrize("outcome", [400, 503])
def test_refused_calls_do_not_wait_for_a_commit(tmp_path, outcome, monkeypatch):
    """Only answers that carry cards wait; a refusal (a shed 503 above all) is answered at
    once and its row written in the background."""
    from cds_service.config import load_settings
    from cds_service.startup import build_runtime
    from cds_service.storage.audit import AuditNotes

    rt = build_runtime(load_settings({"instance_path": tmp_path / "instance"}, environ={}))
    try:
        monkeypatch.setattr(rt.store.audit_writer, "keep", lambda record: pytest.fail("waited for a commit"))
        notes = AuditNotes(service_id="hfs-outcomes-patient-view", hook="patient-view", started=time.perf_counter())
        notes.status = outcome
        assert rt.audit(notes)
        assert rt.store.flush_audit(5.0)
        assert rt.store.usage_report().calls_by_status == {outcome: 1}
    finally:
        rt.close()


def test_queued_rows_and_a_waiting_call_share_one_commit(monkeypatch):
    """One writer: a refused call's queued row goes in the transaction of the next call
    that commits (the waiting call first), not through a second batching of its own."""
    batches: list[list[str]] = []
    writer = AuditWriter(lambda records, pages: batches.append([r.hook_instance for r in records]), None, wait_s=5.0)
    monkeypatch.setattr(writer, "start", lambda: None)  # no thread: only the call commits
    queued, waiting = (
        build_call_record(
            service_id="s", hook="patient-view", hook_instance=f"call-{n}", outcome_status=status, duration_ms=1.0
        )
        for n, status in ((1, 400), (2, 200))
    )
    assert writer.submit(queued) and writer.queue_depth() == 1
    assert writer.keep(waiting)
    assert batches == [["call-2", "call-1"]]
    assert writer.queue_depth() == 0 and writer.flush(0.1)


def test_a_page_saved_on_its_own_goes_through_the_writer(tmp_path, monkeypatch):
    with Store(f"sqlite:///{tmp_path / 'db.sqlite3'}", StoreOptions(spool_dir=tmp_path / "spool")) as store:
        pages = EvidencePages(store)
        token = pages.save(PAGE)
        assert store.audit_writer.commits == 1
        assert pages.get(token).data == PAGE
        monkeypatch.setattr(
            store.audit_writer, "_write", lambda records, rows: (_ for _ in ()).throw(StoreUnavailable())
        )
        with pytest.raises(StoreUnavailable):
            pages.save(PAGE)  # a page alone is not spooled: the caller hears the store is down
        assert store.audit_spool_depth() == 0
