"""The WSGI module builds the app from the environment, as a bare `gunicorn cds_service.wsgi:app` would."""

from __future__ import annotations

import gc
import importlib
import sys


def test_the_wsgi_module_serves_discovery_from_environment_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CDS_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("CDS_ALLOW_UNSIGNED", "true")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delitem(sys.modules, "cds_service.wsgi", raising=False)
    try:
        wsgi = importlib.import_module("cds_service.wsgi")
        answer = wsgi.app.test_client().get("/cds-services")
        assert answer.status_code == 200
        assert len(answer.get_json()["services"]) == 3
        assert (tmp_path / "instance" / "cds-service.sqlite3").exists()
        wsgi.app.extensions["cds_service"].store.close()
    finally:
        gc.unfreeze()
        sys.modules.pop("cds_service.wsgi", None)
