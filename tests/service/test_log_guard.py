"""Logs never hold the client's JWT, the FHIR access token or a patient identifier.

The last test of every run searches everything logged during the run (all loggers, all
levels, and the gunicorn service's log file) for every such value the tests sent; the
others show that the guard (tests/log_guard.py) would see a leak if there were one.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support import log_guard
from support.log_guard import SELF_TEST_LOGGER, LogGuard
from support.paths import TESTS_DIR

JWT_LOOKING = (
    "eyJhbGciOiJFUzM4NCIsImtpZCI6InRlc3QifQ"
    ".eyJpc3MiOiJodHRwczovL2Voci5leGFtcGxlLyIsImp0aSI6IjEifQ"
    ".c2lnbmF0dXJlLXRoYXQtaXMtbm90LXJlYWw"
)


@pytest.fixture
def planted():
    """A separate guard and a logger only it watches (the session guard ignores it)."""
    guard = LogGuard()
    logger = logging.getLogger(f"{SELF_TEST_LOGGER}.{uuid.uuid4().hex[:8]}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    guard.attach(logger)
    yield guard, logger
    guard.detach()


def test_a_fhir_token_logged_at_debug_is_found_and_not_repeated_in_the_report(planted):
    guard, logger = planted
    token = "fhir-" + uuid.uuid4().hex
    assert guard.sensitive(token, "fhir-token")
    logger.debug("GET Condition with Authorization: Bearer %s", token)

    [leak] = guard.leaks()
    assert leak.kind == "fhir-token"
    assert logger.name in leak.where and "DEBUG" in leak.where
    assert token not in str(leak) and token not in leak.where


def test_a_patient_id_in_an_exception_traceback_is_found(planted):
    guard, logger = planted
    patient_id = f"pat-{uuid.uuid4().hex[:10]}"
    guard.sensitive(patient_id, "patient-id")
    try:
        raise ValueError(f"no Patient/{patient_id}")
    except ValueError:
        logger.exception("lookup failed")  # the message is clean; the exception text is not

    assert [leak.kind for leak in guard.leaks()] == ["patient-id"]


def test_the_signature_of_a_registered_jwt_is_a_leak_on_its_own(planted):
    guard, logger = planted
    token = JWT_LOOKING.replace("c2ln", "c2lo")
    log_guard.register_authorization(f"Bearer  {token} ", "jwt", guard)
    logger.info("refused a token ending in %s", token.rsplit(".", 1)[1])
    [leak] = guard.leaks()
    assert leak.kind == "jwt"


def test_a_whole_registered_jwt_is_one_leak_not_also_a_jwt_shaped_one(planted):
    guard, logger = planted
    log_guard.register_authorization(f"Bearer {JWT_LOOKING}", "jwt", guard)
    logger.info("Authorization: Bearer %s", JWT_LOOKING)
    assert [leak.kind for leak in guard.leaks()] == ["jwt"]


def test_a_hook_body_registers_its_patient_ids_and_token(planted):
    guard, _ = planted
    log_guard.register_hook_body(
        {
            "context": {"patientId": "pid-93817", "userId": "Patient/upid-55123"},
            "fhirAuthorization": {"access_token": "opaque-token-881"},
        },
        guard,
    )
    assert all(guard.is_registered(v) for v in ("pid-93817", "upid-55123", "opaque-token-881"))
    log_guard.register_authorization("Bearer plain-opaque-77", "fhir-token", guard)
    assert guard.is_registered("plain-opaque-77")


def test_anything_shaped_like_a_jwt_is_a_leak_even_unregistered(planted):
    guard, logger = planted
    logger.warning("client authentication refused for %s", JWT_LOOKING)
    logger.info("a harmless line about eyJ and dots.like.this")
    [leak] = guard.leaks()
    assert leak.kind == "jwt-shaped" and "WARNING" in leak.where


def test_short_generic_and_word_like_ids_are_not_searched(planted):
    guard, logger = planted
    for generic in ("1", "p1", "123", "12345", "example", "Patient", "UNKNOWN", "000000", "ababab"):
        assert not guard.sensitive(generic, "patient-id"), generic
    assert guard.sensitive("123456", "patient-id")
    assert guard.sensitive("no-such-patient", "patient-id")
    logger.info("example: Patient p1 has 1 of 123 findings, code 000000, UNKNOWN ababab")
    assert guard.leaks() == []


def test_a_watched_log_file_is_read_line_by_line(planted, tmp_path):
    guard, _ = planted
    patient_id = f"served-{uuid.uuid4().hex[:8]}"
    guard.sensitive(patient_id, "patient-id")
    log_file = tmp_path / "service.log"
    log_file.write_text(f'INFO started\n127.0.0.1 "GET /Patient/{patient_id}" 200\n')
    guard.watch_file(log_file)
    [leak] = guard.leaks()
    assert leak.kind == "patient-id" and f"{log_file} line 2" in leak.where

    guard.watch_file(tmp_path / "gone.log")
    assert "unreadable-log" in {leak.kind for leak in guard.leaks()}


def test_patient_ids_in_the_fhir_stub_servers_access_log_are_the_fhir_servers_business(planted):
    guard, _ = planted
    token = "tok-" + uuid.uuid4().hex
    guard.sensitive("pat-77123", "patient-id")
    guard.sensitive(token, "fhir-token")
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level  # the demo, run in process by its tests, quiets werkzeug to WARNING
    werkzeug.setLevel(logging.INFO)
    guard.attach(werkzeug)
    try:
        werkzeug.info('127.0.0.1 - - "GET /fhir/Condition?patient=pat-77123 HTTP/1.1" 200 -')
        assert guard.leaks() == []
        werkzeug.info('127.0.0.1 - - "GET /fhir/Condition?token=%s HTTP/1.1" 200 -', token)
        assert [leak.kind for leak in guard.leaks()] == ["fhir-token"]
    finally:
        werkzeug.removeHandler(guard.handler)
        werkzeug.setLevel(level)


def test_the_session_guard_hears_every_logger_at_every_level():
    root = logging.getLogger()
    assert log_guard.SESSION.handler in root.handlers
    assert root.level == logging.DEBUG
    before = log_guard.SESSION.records_seen
    logging.getLogger("some.library.deep.inside").debug("a debug line")
    quiet = logging.getLogger("some.library.that.does.not.propagate")
    quiet.propagate = False
    log_guard.SESSION.attach_non_propagating()  # done before every test for older loggers
    quiet.info("an info line")
    assert log_guard.SESSION.records_seen == before + 2


def test_what_reaches_the_service_is_registered_without_the_test_asking():
    from cds_service.config import DEFAULT_CARDS_DIR
    from cds_service.content.services import load_services
    from cds_service.errors import ApiError
    from cds_service.http.hook_request import parse_hook_request
    from cds_service.security.client_auth import ClientAuthError, verify_client_jwt
    from cds_service.security.trust import TrustConfig

    service = load_services(DEFAULT_CARDS_DIR / "services.toml")["hfs-outcomes-patient-view"]
    patient_id, token = f"reg-{uuid.uuid4().hex[:8]}", f"at-{uuid.uuid4().hex}"
    body = {
        "hook": "patient-view",
        "hookInstance": "not-a-uuid",
        "fhirServer": "https://ehr.example.org/fhir",
        "fhirAuthorization": {"access_token": token, "token_type": "Bearer"},
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
    }
    with pytest.raises(ApiError):
        parse_hook_request(body, service)  # refused, but what it carried is registered
    assert log_guard.SESSION.is_registered(patient_id)
    assert log_guard.SESSION.is_registered(token)

    jwt = JWT_LOOKING.replace("c2ln", "c2lp")
    with pytest.raises(ClientAuthError):
        verify_client_jwt(f"Bearer {jwt}", "https://cds.example.org/cds-services", TrustConfig(), None)
    assert log_guard.SESSION.is_registered(jwt)


LEAKY_RUN = """
import logging

import pytest

from support import log_guard

TOKEN = "leaky-token-" + "4f9a21"
PATIENT = "pid-" + "771234"


@pytest.fixture(scope="session")
def noisy_session():
    yield
    logging.getLogger("teardown.noise").warning("closing the session of patient %s", PATIENT)


def test_a_service_that_logs_its_token(noisy_session):
    log_guard.sensitive(TOKEN, "fhir-token")
    log_guard.sensitive(PATIENT, "patient-id")
    logging.getLogger("leaky.service").debug("GET Condition with Bearer %s", TOKEN)
"""


def test_a_leak_anywhere_in_a_run_fails_the_run_without_showing_the_value(tmp_path):
    here = Path(__file__).parent
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["support.log_guard"]\n')
    (tmp_path / "test_zz_leaky.py").write_text(LEAKY_RUN)  # sorts after test_log_guard.py
    shutil.copy(here / "test_log_guard.py", tmp_path / "test_log_guard.py")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--rootdir",
            str(tmp_path),
            "-k",
            "not a_leak_anywhere_in_a_run",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(TESTS_DIR), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "FAILED test_log_guard.py::test_no_secret_in_logs_of_the_whole_run" in output
    assert "fhir-token in log record leaky.service DEBUG during test_zz_leaky.py::test_a_service_that_logs" in output
    # After the last test, in the session's teardown: reported by the plugin at the end.
    assert "log guard: secrets in the logs" in output
    assert (
        "patient-id in log record teardown.noise WARNING during session teardown" in output
        or "patient-id in log record teardown.noise WARNING during test_log_guard.py" in output
    )
    # Neither the report nor pytest's display of the final test's captured log shows them.
    assert "leaky-token-4f9a21" not in output and "pid-771234" not in output


def test_no_secret_in_logs_of_the_whole_run():
    """Moved to the end of the run by the plugin: every log of every test before it."""
    if log_guard.other_tests_collected() == 0:
        pytest.skip("run on its own: no other test ran, so there is no run's log to search")
    leaks = log_guard.SESSION.leaks()
    log_guard.mark_final_check(leaks)
    assert not leaks, "secrets found in the logs of this run:\n" + "\n".join(map(str, leaks))
