"""The threads of one process take turns for SQLite's one write lock in Python, instead of
polling it in SQLite's busy handler, where a writer committing batch after batch kept the
others out until their busy timeout ran out."""

from __future__ import annotations

import os
import threading
import time

import pytest
import sqlalchemy as sa

from cds_service.storage.write_gate import WriteGateTimeout, write_gate


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gate.sqlite3'}")
    yield engine
    engine.dispose()


def test_a_second_writer_waits_for_the_first_and_goes_as_soon_as_it_is_done(sqlite_engine):
    order = []
    inside = threading.Event()

    def first():
        with write_gate(sqlite_engine, 1.0):
            inside.set()
            time.sleep(0.2)
            order.append("first")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(1.0)
    started = time.monotonic()
    with write_gate(sqlite_engine, 2.0):
        order.append("second")
    waited = time.monotonic() - started
    thread.join()
    assert order == ["first", "second"]
    assert 0.1 < waited < 1.0


def test_a_writer_that_cannot_have_its_turn_in_time_gets_a_timeout_not_a_hang(sqlite_engine):
    release = threading.Event()
    inside = threading.Event()

    def holder():
        with write_gate(sqlite_engine, 1.0):
            inside.set()
            release.wait(5.0)

    thread = threading.Thread(target=holder)
    thread.start()
    inside.wait(1.0)
    started = time.monotonic()
    with pytest.raises(WriteGateTimeout), write_gate(sqlite_engine, 0.2):
        pass
    assert time.monotonic() - started < 1.0
    release.set()
    thread.join()
    assert isinstance(WriteGateTimeout(), TimeoutError)  # the store answers it as unavailable (503)


def test_each_database_has_its_own_turns_and_postgresql_none(sqlite_engine, tmp_path):
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite3'}")
    postgres = sa.create_engine("postgresql+psycopg://user@127.0.0.1:1/none")  # never connected
    with (
        write_gate(sqlite_engine, 0.1),
        write_gate(other, 0.1),
        write_gate(postgres, 0.1),
        pytest.raises(WriteGateTimeout),
        write_gate(sqlite_engine, 0.05),
    ):
        pass
    other.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_worker_forked_while_a_thread_held_the_gate_has_its_own_gate(sqlite_engine):
    """gunicorn forks workers from a master that may be writing: the child must not inherit
    a gate that no thread of its own will ever release."""
    with write_gate(sqlite_engine, 1.0):
        pid = os.fork()
        if pid == 0:  # the child: take the gate at once, or fail
            try:
                with write_gate(sqlite_engine, 0.5):
                    pass
                os._exit(0)
            except BaseException:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
