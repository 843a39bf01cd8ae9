"""The audit spool and background writer: rows never wait for the database on the request
path, survive a restart in the spool, are replayed once, and the spool is bounded."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from support.scenario_requests import hfs_after_mvd_patient_view

from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.audit_spool import AuditSpool, SpoolFull
from cds_service.storage.audit_writer import BATCH_ROWS, AuditWriter
from cds_service.storage.store import Store


def record(n: int) -> CallRecord:
    return CallRecord(
        "svc",
        "patient-view",
        f"call-{n}",
        200,
        1.5,
        patient_hash="ab" * 32,
        cards=(ReturnedCard(str(uuid.uuid4()), "mvd-recurrence", "summary"),),
        instance_id="node-1",
        record_id=uuid.uuid4().hex,
    )


def stored_instances(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT hook_instance FROM service_calls ORDER BY hook_instance").scalars().all()


def test_spooled_rows_survive_a_restart_and_are_replayed_into_the_store_once(tmp_path, store_url):
    rows = [record(n) for n in range(5)]
    AuditSpool(tmp_path / "spool", 1 << 20).append(rows[:3])
    AuditSpool(tmp_path / "spool", 1 << 20).append(rows[3:])
    reopened = AuditSpool(tmp_path / "spool", 1 << 20)  # a new process
    assert reopened.depth(max_age_s=0) == 5
    with Store(store_url) as store:
        store.record_calls(rows[:2])  # written once already before a crash
        assert reopened.replay(store.record_calls, BATCH_ROWS) == 5
        assert reopened.depth(max_age_s=0) == 0
        assert stored_instances(store) == [f"call-{n}" for n in range(5)]
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM returned_cards").scalar_one() == 5


def test_a_replay_that_fails_keeps_the_rows_for_the_next_attempt(tmp_path):
    spool = AuditSpool(tmp_path / "spool", 1 << 20)
    spool.append([record(1), record(2)])

    def refuse(_batch):
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        spool.replay(refuse, BATCH_ROWS)
    assert spool.depth(max_age_s=0) == 2
    spool.append([record(3)])
    written = []
    assert spool.replay(written.extend, BATCH_ROWS) == 3
    assert sorted(r.hook_instance for r in written) == ["call-1", "call-2", "call-3"]


def test_the_spool_is_bounded(tmp_path):
    spool = AuditSpool(tmp_path / "spool", 2000)
    spool.append([record(1)])
    with pytest.raises(SpoolFull):
        spool.append([record(n) for n in range(20)])
    assert spool.depth(max_age_s=0) == 1


def test_a_full_queue_spills_to_the_spool_without_blocking_the_caller(tmp_path):
    release = threading.Event()
    writing = threading.Event()
    written: list[CallRecord] = []

    def slow_write(batch, _pages):
        writing.set()
        release.wait(10)
        written.extend(batch)

    writer = AuditWriter(slow_write, AuditSpool(tmp_path / "spool", 1 << 20), queue_size=3, retry_s=0.2)
    assert writer.submit(record(0))
    assert writing.wait(5.0)  # the writer holds its batch (after its linger) and is stuck
    started = time.monotonic()
    assert all(writer.submit(record(n)) for n in range(1, 20))
    assert time.monotonic() - started < 1.0
    # One row is held by the blocked writer and 3 wait in the queue: the rest is spooled.
    assert writer.spool.depth(max_age_s=0) == 20 - 1 - 3
    release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(written) < 20:
        time.sleep(0.05)
    writer.close()
    assert sorted(r.hook_instance for r in written) == sorted(f"call-{n}" for n in range(20))


def test_rows_neither_writable_nor_spoolable_are_counted_and_logged_as_lost(tmp_path, caplog):
    def refuse(_batch, _pages):
        raise ConnectionError("down")

    writer = AuditWriter(refuse, AuditSpool(tmp_path / "spool", 10), queue_size=10, retry_s=0.2)
    writer.submit(record(1))
    assert writer.flush(5)
    writer.close()
    assert writer.lost == 1
    assert any("AUDIT ROWS LOST" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_hook_calls_are_refused_with_503_when_the_store_is_down_and_the_spool_is_full(make_app):
    app = make_app(audit_spool_max_bytes=10)
    client = app.test_client()
    runtime = app.extensions["cds_service"]
    assert (
        client.post("/cds-services/hfs-outcomes-patient-view", json=hfs_after_mvd_patient_view("p")).status_code == 200
    )
    runtime.store.audit_writer.spool.folder.joinpath("audit-spool.jsonl").write_text('{"x": 1}\n' * 3)
    runtime.store.db.mark_down()
    refused = client.post("/cds-services/hfs-outcomes-patient-view", json=hfs_after_mvd_patient_view("p"))
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert "audit" in refused.get_json()["issue"][0]["details"]["text"]
    runtime.store.close()


def test_a_batch_is_written_with_each_card_linked_to_its_own_call(store_url):
    """The batch goes in as two statements (calls with RETURNING, then cards): every card must
    still hang off the call that returned it, including calls with no or several cards."""
    calls = []
    for n in range(30):
        cards = tuple(ReturnedCard(str(uuid.uuid4()), f"card-{n}-{k}", f"summary {n}.{k}") for k in range(n % 3))
        calls.append(CallRecord("svc", "patient-view", f"call-{n:02d}", 200, 1.0, cards=cards, record_id=f"r{n}"))
    with Store(store_url) as store:
        assert store.record_calls(calls) == 30
        with store.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT c.hook_instance, r.card_id FROM returned_cards r JOIN service_calls c ON c.id = r.call_id"
            ).all()
    expected = {(f"call-{n:02d}", f"card-{n}-{k}") for n in range(30) for k in range(n % 3)}
    assert set(map(tuple, rows)) == expected and len(rows) == len(expected)


def test_the_depth_counts_rows_that_are_being_moved_for_replay(tmp_path, monkeypatch):
    """A replay renames the spool file; a count that listed the old name just before must
    not read the spool as empty (a stale 0 hid 12 spooled rows from /metrics and a test)."""
    spool = AuditSpool(tmp_path / "spool", 1 << 20)
    spool.append([record(n) for n in range(4)])
    listed = spool._files()
    real_files = spool._files
    calls = []

    def listing_then_rename():
        calls.append(1)
        if len(calls) == 1:  # listed, then the replayer renames the file before it is opened
            for path in listed:
                path.rename(path.with_name("replaying-1-1.jsonl"))
            return listed
        return real_files()

    monkeypatch.setattr(spool, "_files", listing_then_rename)
    assert spool.depth(max_age_s=0) == 4


def test_a_row_the_disk_takes_only_part_of_is_cut_off_and_the_next_rows_stay_readable(tmp_path, monkeypatch):
    """A full disk (or a file-size limit) can take part of a write: the row must be refused
    whole, not left as a broken line that the next append would extend."""
    import errno
    import os

    spool = AuditSpool(tmp_path / "spool", 1 << 20)
    spool.append([record(1)])
    size = spool.size_bytes()
    real_write = os.write
    calls = []

    def partial(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", partial)
    with pytest.raises(OSError):
        spool.append([record(2)])
    monkeypatch.undo()
    assert spool.size_bytes() == size
    spool.append([record(3)])
    replayed = []
    spool.replay(replayed.extend, BATCH_ROWS)
    assert [r.hook_instance for r in replayed] == [record(1).hook_instance, record(3).hook_instance]


def test_a_row_spooled_before_sites_were_stored_replays_as_the_shared_contents(tmp_path, store_url):
    """Issue 20: a row spooled by an older version has no `site`; it replays with none (the
    deployment's shared content), beside a new row that carries its site."""
    import json

    old = record(0).to_json()
    del old["site"]
    new = CallRecord("svc", "patient-view", "call-1", 200, 1.0, record_id=uuid.uuid4().hex, site="hospital-a")
    folder = tmp_path / "spool"
    folder.mkdir()
    lines = [json.dumps(old), json.dumps(new.to_json())]
    (folder / "audit-spool.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with Store(store_url) as store:
        assert AuditSpool(folder, 1 << 20).replay(store.record_calls, BATCH_ROWS) == 2
        with store.engine.connect() as conn:
            sites = conn.exec_driver_sql("SELECT hook_instance, site FROM service_calls ORDER BY hook_instance").all()
        assert [tuple(row) for row in sites] == [("call-0", None), ("call-1", "hospital-a")]
        assert store.usage_report(site="hospital-a").calls == 1 and store.usage_report().calls == 2
