"""The console command: `cds-service report` on the store that hook calls filled, and
configuration mistakes that stop `serve` before it binds a port."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from support.fhir import ICD10PCS, condition, new_id, patient_view, procedure
from support.scenario_requests import hfs_after_mvd_patient_view

from cds_service.cli import main
from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.store import Store

SERVICE = "/cds-services/hfs-outcomes-patient-view"


def test_report_prints_card_counts_acceptance_and_override_reasons(store_url, tmp_path, capsys, make_app):
    app = make_app(database_url=store_url)
    client = app.test_client()
    cards = [client.post(SERVICE, json=hfs_after_mvd_patient_view(f"cli-{n}")).get_json()["cards"][0] for n in range(2)]
    # spasm again 9 months after the MVD, no MRI result: the card offers the MRI, which is accepted
    persistent = patient_view(
        "cli-2",
        conditions=[
            condition("G51.31", id=new_id("cond"), patient="cli-2", status="resolved", onset="2019-05-01"),
            condition("G51.31", id=new_id("cond"), patient="cli-2", status="recurrence", onset="2026-03-10"),
        ],
        procedures=[
            procedure(
                (ICD10PCS, "00NM0ZZ"),
                "2025-06-10T08:00:00Z",
                "2025-06-10T10:10:00Z",
                id=new_id("proc"),
                patient="cli-2",
            )
        ],
    )
    cards.insert(1, client.post(SERVICE, json=persistent).get_json()["cards"][0])
    # audit rows (which cards were issued) are written off the request path; feedback is
    # checked against them once they are in the store
    assert app.extensions["cds_service"].store.flush_audit(5.0)
    assert cards[1]["suggestions"], cards[1]
    feedback = [
        {
            "card": cards[0]["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-22T09:00:00Z",
            "overrideReason": {
                # a reason the card offers (issue 19: feedback with another is refused)
                "reason": {
                    "code": "already-addressed",
                    "system": "https://hfs-cds.example.org/fhir/CodeSystem/hfs-local",
                    "display": "Already addressed or planned",
                }
            },
        },
        {
            "card": cards[1]["uuid"],
            "outcome": "accepted",
            "outcomeTimestamp": "2026-11-22T09:01:00Z",
            "acceptedSuggestions": [{"id": cards[1]["suggestions"][0]["uuid"]}],
        },
    ]
    not_issued = [{**feedback[1], "acceptedSuggestions": [{"id": "6c0f1e4e-7a4e-4f8e-9a51-3b1b8f0d2c11"}]}]
    refused = client.post(SERVICE + "/feedback", json={"feedback": not_issued})
    assert (
        refused.status_code == 400
        and "not a suggestion issued with this card" in refused.get_json()["issue"][0]["details"]["text"]
    )
    assert client.post(SERVICE + "/feedback", json={"feedback": feedback}).status_code == 200
    app.extensions["cds_service"].store.close()

    assert main(["report", "--database-url", store_url]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("mvd-recurrence"))
    assert row.split()[1:4] == ["3", "2", "1"]  # shown, feedback, accepted
    assert "Already addressed or planned" in out
    assert "accepted 1x: suggestion mri-tof-mra-root-exit-zone" in out
    assert "Hook calls: 3 (200: 3)" in out


def test_serve_refuses_a_broken_config_file_before_starting(tmp_path, capsys):
    config = tmp_path / "settings.toml"
    config.write_text('fhir_time_budget_s = "soon"\n')
    assert main(["serve", "--config", str(config), "--instance", str(tmp_path / "i")]) == 2
    assert "fhir_time_budget_s" in capsys.readouterr().err


def test_serve_refuses_an_unknown_setting(tmp_path, capsys):
    config = tmp_path / "settings.toml"
    config.write_text("fhir_budget = 2\n")
    assert main(["serve", "--config", str(config)]) == 2
    assert "unknown settings" in capsys.readouterr().err


def test_report_on_a_store_it_cannot_open_says_so_without_a_traceback(capsys):
    code = main(["report", "--database-url", "postgresql+psycopg://nobody@127.0.0.1:1/none"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("cds-service: ") and "Traceback" not in err


# --------------------------------------------------------------------------- start-up errors


def _run_cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "DATABASE_URL"}
    env.update(env_extra or {})
    return subprocess.run(
        [str(Path(sys.executable).parent / "cds-service"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _one_clear_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("cds-service: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_instance_path_that_is_a_file_is_refused_clearly(tmp_path):
    path = tmp_path / "instance"
    path.write_text("not a folder")
    line = _one_clear_line(_run_cli("serve", "--instance", str(path), "--port", "1"))
    assert "is a file, not a folder" in line


def test_an_unwritable_instance_folder_is_refused_clearly(tmp_path):
    if os.geteuid() == 0:
        folder = Path("/proc/self")  # a folder even root cannot create files in
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
    line = _one_clear_line(_run_cli("serve", "--instance", str(folder), "--port", "1"))
    assert "is not writable" in line or "cannot be created" in line


def test_an_instance_folder_that_cannot_be_created_is_refused_clearly(tmp_path):
    (tmp_path / "file").write_text("x")
    line = _one_clear_line(_run_cli("serve", "--instance", str(tmp_path / "file" / "instance"), "--port", "1"))
    assert "cannot be created" in line


@pytest.mark.parametrize(
    "url, message",
    [
        ("not a url hunter2", "the database URL cannot be read"),
        ("mysql://root:hunter2@localhost/x", "unsupported database backend"),
        ("postgresql://cds:hunter2@127.0.0.1:1/cds", "connection refused"),
    ],
)
def test_database_mistakes_each_have_their_own_message(tmp_path, url, message):
    line = _one_clear_line(
        _run_cli("serve", "--instance", str(tmp_path / "i"), "--port", "1", env_extra={"DATABASE_URL": url})
    )
    assert message in line and "hunter2" not in line


@pytest.mark.postgres
def test_a_database_that_does_not_exist_is_told_apart_from_a_refused_connection(tmp_path, postgres_url):
    missing = make_url(postgres_url).set(database=f"no_such_db_{uuid.uuid4().hex[:8]}")
    line = _one_clear_line(
        _run_cli(
            "serve",
            "--instance",
            str(tmp_path / "i"),
            "--port",
            "1",
            env_extra={"DATABASE_URL": missing.render_as_string(hide_password=False)},
        )
    )
    assert "database does not exist" in line and "connection refused" not in line


def test_a_bad_trust_file_stops_start_up_clearly(tmp_path):
    trust = tmp_path / "trust.toml"
    trust.write_text('[[issuers]]\niss = "https://x"\nalgorithms = ["HS256"]\njku_allowlist = ["https://x/k"]\n')
    line = _one_clear_line(
        _run_cli("serve", "--instance", str(tmp_path / "i"), "--port", "1", env_extra={"CDS_TRUST_FILE": str(trust)})
    )
    assert "trust file" in line and "HS256" in line


@pytest.mark.parametrize(
    "text, message",
    [
        ("db_statement_timeout_s = -1\n", "db_statement_timeout_s"),
        ('db_migrations = "sometimes"\n', "db_migrations"),
        ("[[[ not toml\n", "not valid TOML"),
    ],
)
def test_a_bad_settings_file_stops_start_up_clearly(tmp_path, text, message):
    config = tmp_path / "settings.toml"
    config.write_text(text)
    line = _one_clear_line(_run_cli("serve", "--config", str(config), "--instance", str(tmp_path / "i"), "--port", "1"))
    assert message in line


def test_a_missing_settings_file_stops_start_up_clearly(tmp_path):
    line = _one_clear_line(_run_cli("serve", "--config", str(tmp_path / "missing.toml"), "--port", "1"))
    assert "cannot read" in line


# --------------------------------------------------------------------------- audit retention


def test_audit_prune_deletes_rows_older_than_the_retention_and_keeps_the_rest(store_url, tmp_path, capsys):
    now = datetime.now(UTC)
    with Store(store_url) as store:
        for days, uuid_suffix in ((40, "1"), (31, "2"), (29, "3"), (0, "4")):
            store.record_call(
                CallRecord(
                    "svc",
                    "patient-view",
                    f"call-{days}",
                    200,
                    1.0,
                    cards=(ReturnedCard(f"00000000-0000-4000-8000-00000000000{uuid_suffix}", "c", "s"),),
                    called_at=now - timedelta(days=days, minutes=1),
                )
            )
    config = tmp_path / "settings.toml"
    config.write_text("audit_retention_days = 30\n")
    assert main(["audit", "prune", "--config", str(config), "--database-url", store_url]) == 0
    assert "deleted: 2" in capsys.readouterr().out
    with Store(store_url) as store, store.engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT hook_instance FROM service_calls ORDER BY id").scalars().all()
        cards = conn.exec_driver_sql("SELECT count(*) FROM returned_cards").scalar_one()
    assert kept == ["call-29", "call-0"] and cards == 2
    # --days overrides the setting; 0 (the default setting) keeps everything.
    assert main(["audit", "prune", "--database-url", store_url, "--days", "0"]) == 0
    assert "kept forever" in capsys.readouterr().out
    assert main(["audit", "prune", "--database-url", store_url, "--days", "1"]) == 0
    assert "deleted: 1" in capsys.readouterr().out
