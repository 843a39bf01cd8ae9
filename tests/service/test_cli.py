"""The console command: `cds-service report` on the store that hook calls filled, and
configuration mistakes that stop `serve` before it binds a port."""

from __future__ import annotations

from support.scenario_requests import hfs_after_mvd_patient_view

from cds_service.cli import main
from cds_service.http.app import create_app

SERVICE = "/cds-services/hfs-outcomes-patient-view"


def test_report_prints_card_counts_acceptance_and_override_reasons(store_url, tmp_path, capsys):
    app = create_app(instance_path=tmp_path / "instance", allow_unsigned=True, database_url=store_url)
    client = app.test_client()
    cards = [client.post(SERVICE, json=hfs_after_mvd_patient_view(f"cli-{n}")).get_json()["cards"][0] for n in range(3)]
    feedback = [
        {
            "card": cards[0]["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": "2026-11-22T09:00:00Z",
            "overrideReason": {
                "reason": {"code": "already-known", "system": "http://example.org/reasons", "display": "Already known"}
            },
        },
        {
            "card": cards[1]["uuid"],
            "outcome": "accepted",
            "outcomeTimestamp": "2026-11-22T09:01:00Z",
            "acceptedSuggestions": [{"id": "6c0f1e4e-7a4e-4f8e-9a51-3b1b8f0d2c11"}],
        },
    ]
    assert client.post(SERVICE + "/feedback", json={"feedback": feedback}).status_code == 200
    app.extensions["cds_service"].store.close()

    assert main(["report", "--database-url", store_url]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("mvd-recurrence"))
    assert row.split()[1:4] == ["3", "2", "1"]  # shown, feedback, accepted
    assert "Already known" in out
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
