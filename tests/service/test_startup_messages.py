"""Start-up and shut-down faults an operator meets, each told in one human line.

- a database user the server refuses, a SQLite file that is not a database: named as such,
  not "(OperationalError)" / "(DatabaseError)";
- a port in use: one line and exit 1 (gunicorn alone retried five times, 13 log lines);
- SIGTERM when the instance folder cannot be written (read-only, full): a clean drain and
  exit 0 with one warning, not a traceback and exit 255.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests
from sqlalchemy.engine import make_url
from support.served import ClientSigner, ServedService, free_port


def run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "DATABASE_URL"}
    env.update(env_extra or {})
    command = [str(Path(sys.executable).parent / "cds-service"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def one_line(result: subprocess.CompletedProcess, status: int) -> str:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cds-service: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.postgres
def test_a_database_user_the_server_refuses_is_named(tmp_path, postgres_url):
    user = f"no_such_user_{uuid.uuid4().hex[:6]}"
    url = make_url(postgres_url).set(username=user, password="hunter2")
    result = run_cli(
        "serve", "--instance", str(tmp_path / "i"), env_extra={"DATABASE_URL": url.render_as_string(False)}
    )
    line = one_line(result, 2)
    assert f"database user '{user}' was refused by the server" in line, line
    assert "Error)" not in line and "hunter2" not in line


def test_a_sqlite_file_that_is_not_a_database_is_called_so(tmp_path):
    garbage = tmp_path / "cds.db"
    garbage.write_bytes(os.urandom(8192))
    result = run_cli("serve", "--instance", str(tmp_path / "i"), env_extra={"DATABASE_URL": f"sqlite:///{garbage}"})
    line = one_line(result, 2)
    assert "the SQLite file is not a database (corrupt?)" in line, line


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_cli("serve", "--instance", str(tmp_path / "i"), "--port", str(port), "--allow-unsigned")
    line = one_line(result, 1)
    assert f"127.0.0.1:{port} is already in use" in line and "--port" in line
    assert "gunicorn" not in result.stderr.lower() and "Connection in use" not in result.stderr


def test_sigterm_with_an_instance_folder_that_cannot_be_written_drains_cleanly(tmp_path):
    service = ServedService(tmp_path / "svc", ClientSigner(), workers=1, port=free_port()).start()
    run = tmp_path / "svc" / "instance" / "run"
    if run.is_dir():
        for marker in run.iterdir():
            marker.unlink()
        run.rmdir()
    run.write_text("not a folder: the draining marker cannot be written here")
    assert requests.get(service.base_url + "/healthz", timeout=5).status_code == 200
    process = service.process
    process.send_signal(signal.SIGTERM)
    status = process.wait(timeout=20)
    service.process = None
    log = service.log_path.read_text()
    assert status == 0, log[-2000:]
    assert "Traceback" not in log
    assert "cannot write the draining marker" in log
    assert "Shutting down: Master" in log
