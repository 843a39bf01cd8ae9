"""A full or read-only instance folder: no hook call is answered without its audit row
(issue 16 item 2) or loses a row it was answered with (item 3).

Fault tools: a small tmpfs mounted for the test (a real ENOSPC; skipped with the reason
when this process may not mount); portable, a file-size limit (RLIMIT_FSIZE) on a child
process, under which every write that would grow a file fails with EFBIG, as on a full
disk; and a read-only folder injected at the file layer (the kernel refuses to remount a
folder read-only while SQLite holds its files open for writing).
"""

from __future__ import annotations

import contextlib
import errno
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import error_body
from support.scenario_requests import hfs_after_mvd_patient_view

from cds_service.storage.audit_spool import AuditSpool

SERVICE = "/cds-services/hfs-outcomes-patient-view"
BASE = "http://localhost"


def call(client, n: str):
    body = hfs_after_mvd_patient_view(f"pt-{n}")
    body["hookInstance"] = str(uuid.uuid4())
    return body["hookInstance"], client.post(SERVICE, json=body, base_url=BASE)


def stored_hook_instances(folder: Path) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{folder / 'cds-service.sqlite3'}")
    try:
        with engine.connect() as conn:
            return set(conn.exec_driver_sql("SELECT hook_instance FROM service_calls").scalars())
    finally:
        engine.dispose()


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "3m"):
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); RLIMIT_FSIZE test covers it"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()


def test_a_full_folder_answers_503_and_every_200_is_audited(tmp_path, make_app):
    with small_tmpfs(tmp_path / "mnt") as mnt:
        folder = mnt / "instance"
        app = make_app(instance_path=folder, db_retry_after_s=1.0)
        client = app.test_client()
        answered = {}
        for n in range(3):
            hook_instance, response = call(client, f"ok-{n}")
            assert response.status_code == 200
            answered[hook_instance] = response

        fill(mnt)  # the disk is full
        statuses = []
        for n in range(20):
            hook_instance, response = call(client, f"full-{n}")
            statuses.append(response.status_code)
            assert response.status_code in (200, 503), response.get_json()
            if response.status_code == 200:
                answered[hook_instance] = response
            else:
                assert int(response.headers["Retry-After"]) >= 1
                assert error_body.code(response.get_json()) == "store_unavailable"

        assert 503 in statuses  # the fault was met: SQLite could not grow its WAL
        app.extensions["cds_service"].close()
        (mnt / "filler").unlink()
        restarted = make_app(instance_path=folder)
        restarted.extensions["cds_service"].store.audit_writer._replay()  # what was spooled, if any
        assert set(answered) <= stored_hook_instances(folder), statuses
        restarted.extensions["cds_service"].close()


def test_a_read_only_store_and_spool_answer_503_and_every_200_is_audited(tmp_path, make_app, monkeypatch):
    """A read-only folder, injected at the file layer (a tmpfs cannot be remounted read-only
    while SQLite holds its files open for writing): SQLite refuses writes (query_only, its
    "attempt to write a readonly database") and every spool append fails with EROFS."""
    folder = tmp_path / "instance"
    app = make_app(instance_path=folder, db_retry_after_s=1.0)
    client = app.test_client()
    store = app.extensions["cds_service"].store
    answered = {call(client, "before")[0]}

    read_only = lambda dbapi, _record: dbapi.execute("PRAGMA query_only = ON")  # noqa: E731
    sa.event.listen(store.engine, "connect", read_only)
    store.engine.dispose()

    def erofs(*_args):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(AuditSpool, "append", erofs)
    for n in range(6):
        _, response = call(client, f"ro-{n}")
        assert response.status_code == 503, response.get_json()
        assert int(response.headers["Retry-After"]) >= 1
    monkeypatch.undo()
    sa.event.remove(store.engine, "connect", read_only)
    store.engine.dispose()
    store.db.mark_up()  # repaired: no need to wait for the retry period
    hook_instance, response = call(client, "after")
    assert response.status_code == 200
    answered.add(hook_instance)
    store.audit_writer._replay()  # the call after the repair may have been spooled
    assert stored_hook_instances(folder) == answered


CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys, uuid
    sys.path.insert(0, {tests!r})
    from support.scenario_requests import hfs_after_mvd_patient_view
    from cds_service.http.app import create_app

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
    app = create_app(instance_path={folder!r}, allow_unsigned=True, db_retry_after_s=1.0)
    client = app.test_client()

    def call(n):
        body = hfs_after_mvd_patient_view(f"pt-{{n}}")
        body["hookInstance"] = str(uuid.uuid4())
        r = client.post("/cds-services/hfs-outcomes-patient-view", json=body, base_url="http://localhost")
        return {{"hook_instance": body["hookInstance"], "status": r.status_code,
                "retry_after": r.headers.get("Retry-After")}}

    out = [dict(call(f"ok-{{n}}"), phase="before") for n in range(3)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, hard))  # no file may grow: a full disk
    out += [dict(call(f"full-{{n}}"), phase="full") for n in range(10)]
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    app.extensions["cds_service"].close()
    print(json.dumps(out))
    """
)


def test_a_file_size_limit_like_a_full_disk_answers_503_never_an_unaudited_200(tmp_path):
    folder = tmp_path / "instance"
    script = CHILD.format(tests=str(Path(__file__).resolve().parents[1]), folder=str(folder))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    full = [r for r in results if r["phase"] == "full"]
    assert [r["status"] for r in full] == [503] * len(full), done.stderr[-2000:]
    assert all(int(r["retry_after"]) >= 1 for r in full)
    assert "AUDIT ROWS LOST" not in done.stderr
    answered = {r["hook_instance"] for r in results if r["status"] == 200}
    assert len(answered) == 3 and answered <= stored_hook_instances(folder)
