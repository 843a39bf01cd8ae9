"""Schema migrations (Alembic): a store created by release 0.1.0 is upgraded in place and
keeps every row; the baseline revision is the 0.1.0 schema exactly; `db_migrations =
"manual"` refuses an old schema with a clear message; `cds-service db upgrade` migrates."""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from cds_service.cli import main
from cds_service.storage import migrate
from cds_service.storage.audit import CallRecord, ReturnedCard
from cds_service.storage.engine import StoreError
from cds_service.storage.feedback import FeedbackEntry, OverrideReason
from cds_service.storage.store import Store, StoreOptions

CARD = "4e0a3a1e-3283-4575-ab82-028d55fe2719"


def legacy_module():
    """The 0.1.0 store module (tests/storage/legacy_store_0_1_0.py), loaded by path."""
    if "legacy_store_0_1_0" in sys.modules:
        return sys.modules["legacy_store_0_1_0"]
    path = Path(__file__).with_name("legacy_store_0_1_0.py")
    spec = importlib.util.spec_from_file_location("legacy_store_0_1_0", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def fill_a_0_1_0_store(url: str) -> dict:
    legacy = legacy_module()
    store = legacy.Store(url)
    try:
        call_id = store.record_call(
            legacy.CallRecord(
                service_id="hfs-outcomes-patient-view",
                hook="patient-view",
                hook_instance="d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                outcome_status=200,
                duration_ms=12.5,
                patient_hash="ab" * 32,
                content_version="mvd-recurrence@1.0",
                client_iss="https://ehr.example.org",
                cards=[legacy.ReturnedCard(CARD, "mvd-recurrence", "Recurrence after MVD")],
            )
        )
        store.record_call(
            legacy.CallRecord(
                service_id="hfs-outcomes-patient-view",
                hook="patient-view",
                hook_instance="x",
                outcome_status=401,
                duration_ms=1.0,
            )
        )
        store.record_feedback(
            "hfs-outcomes-patient-view",
            [
                FeedbackEntry(
                    card_uuid=CARD,
                    outcome="overridden",
                    accepted_suggestions=(),
                    override_reason=OverrideReason(code="not-relevant", system="http://example.org/r", display=None),
                    user_comment="seen it",
                    outcome_timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                )
            ],
        )
        assert store.claim_jti("https://ehr.example.org", "jti-from-0.1.0", datetime.now(UTC) + timedelta(hours=1))
    finally:
        store.close()
    return {"call_id": call_id}


def table_rows(url: str) -> dict[str, list[tuple]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: sorted(
                    tuple(str(v) for v in row)
                    for row in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY id").all()
                )
                for table in ("service_calls", "returned_cards", "feedback", "used_jti")
            }
    finally:
        engine.dispose()


def test_a_0_1_0_store_is_upgraded_in_place_and_keeps_every_row(store_url):
    ids = fill_a_0_1_0_store(store_url)
    before = table_rows(store_url)
    assert [len(before[t]) for t in ("service_calls", "returned_cards", "feedback", "used_jti")] == [2, 1, 1, 1]

    with Store(store_url, StoreOptions(instance_id="upgraded-node")) as store:
        after = table_rows(store_url)
        # Every old row, every old value; the new columns are empty (NULL) on old rows
        # (service_calls: instance_id, record_id, usage, site; returned_cards: situation,
        # evidence_opened_at; feedback: site). An old row's NULL site is the shared content.
        assert [row[:-2] for row in after["returned_cards"]] == before["returned_cards"]
        assert all(row[-2:] == ("None", "None") for row in after["returned_cards"])
        assert [row[:-1] for row in after["feedback"]] == before["feedback"]
        assert all(row[-1] == "None" for row in after["feedback"])
        assert after["used_jti"] == before["used_jti"]
        assert [row[:-4] for row in after["service_calls"]] == before["service_calls"]
        assert all(row[-4:] == ("None", "None", "None", "None") for row in after["service_calls"])
        # The upgraded store works: old jti still refused, old card still found, new rows carry the instance.
        assert not store.claim_jti("https://ehr.example.org", "jti-from-0.1.0", datetime.now(UTC) + timedelta(hours=1))
        assert store.issued_card(CARD).call_id == ids["call_id"]
        assert [f.user_comment for f in store.feedback_for(CARD)] == ["seen it"]
        store.submit_call(
            CallRecord("svc", "patient-view", "new", 200, 2.0, cards=(ReturnedCard(CARD.replace("4", "5"), "c", "s"),))
        )
        assert store.flush_audit(5)
        with store.engine.connect() as conn:
            instances = conn.exec_driver_sql("SELECT instance_id FROM service_calls ORDER BY id").scalars().all()
        assert instances == [None, None, "upgraded-node"]
        assert store.usage_report().calls == 3
        # the old feedback still counts for the old card (both without a site), at no site
        assert [c.overridden for c in store.usage_report().cards if c.card_id == "mvd-recurrence"] == [1]
        assert store.usage_report(site="hospital-a").calls == 0
    with Store(store_url).engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def _schema(url: str) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            return {
                table: {
                    "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
                    "pk": inspector.get_pk_constraint(table)["constrained_columns"],
                    "fks": sorted(
                        (
                            fk["name"],
                            tuple(fk["constrained_columns"]),
                            fk["referred_table"],
                            fk.get("options", {}).get("ondelete"),
                        )
                        for fk in inspector.get_foreign_keys(table)
                    ),
                    "indexes": sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
                    ),
                    "unique": sorted(
                        (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
                    ),
                    "checks": sorted(c["name"] for c in inspector.get_check_constraints(table)),
                }
                for table in sorted(set(inspector.get_table_names()) - {"alembic_version"})
            }
    finally:
        engine.dispose()


def test_the_baseline_revision_is_the_0_1_0_schema_exactly(tmp_path, store_url):
    legacy_url = f"sqlite:///{tmp_path / 'legacy.sqlite3'}"
    if store_url.startswith("postgresql"):
        # Two schemas on the same server: the legacy one in a second fresh schema.
        from support.db_fixture import fresh_postgres_schema

        legacy_gen = fresh_postgres_schema()
        legacy_url = next(legacy_gen)
    try:
        legacy_module().Store(legacy_url).close()
        engine = sa.create_engine(store_url)
        try:
            migrate.upgrade(engine, migrate.BASELINE_REVISION)
        finally:
            engine.dispose()
        assert _schema(store_url) == _schema(legacy_url)
    finally:
        if store_url.startswith("postgresql"):
            legacy_gen.close()


def test_the_current_schema_is_what_the_tables_module_declares(store_url):
    """Migrations and the table definitions the queries use must not drift apart."""
    from cds_service.storage import tables

    Store(store_url).close()
    migrated = _schema(store_url)
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as conn:
            for table in reversed(tables.metadata.sorted_tables):
                conn.execute(sa.schema.DropTable(table))
            tables.metadata.create_all(conn)
    finally:
        engine.dispose()
    assert _schema(store_url) == migrated


def test_manual_migrations_refuse_an_old_schema_and_say_what_to_run(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    fill_a_0_1_0_store(url)
    needs = migrate.head_revision()
    with pytest.raises(StoreError, match=rf"revision 0001 and this version needs {needs}.*cds-service db upgrade"):
        Store(url, StoreOptions(migrations="manual"))
    config = tmp_path / "settings.toml"
    config.write_text('db_migrations = "manual"\n')
    assert main(["report", "--config", str(config), "--database-url", url]) == 2
    err = capsys.readouterr().err
    assert "db_migrations is 'manual'" in err and "Traceback" not in err

    assert main(["db", "upgrade", "--database-url", url, "--instance", str(tmp_path / "i")]) == 0
    assert f"migrated from revision 0001 to {needs}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--database-url", url, "--instance", str(tmp_path / "i")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    Store(url, StoreOptions(migrations="manual")).close()
    assert len(table_rows(url)["service_calls"]) == 2
