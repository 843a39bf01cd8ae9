"""Shared test configuration: the app and its test client (as in Flask's tutorial), and the
fixture plugins contributed by each area of the service.

A test module that needs the app configured differently overrides `app_settings`:

    @pytest.fixture
    def app_settings():
        return {"fhir_time_budget_s": 2.0}
"""

from __future__ import annotations

import pytest

from cds_service.http.app import create_app

pytest_plugins = [
    "support.db_fixture",
    "support.fhir_server_fixture",
    "support.log_guard",
]


@pytest.fixture
def app_settings() -> dict:
    """Settings overrides for `app` (a module overrides this fixture)."""
    return {}


@pytest.fixture
def make_app(tmp_path):
    """Build apps of the real service in development mode (unsigned clients accepted), each
    with its own instance folder; overrides go to create_app. Closed after the test: its
    threads (audit commit and writer, FHIR pool) stop and its store closes, so a
    long session does not pile up threads and objects that make every full garbage
    collection, and with it any timed call, slower."""
    apps = []

    def make(**overrides):
        overrides.setdefault("allow_unsigned", True)
        instance = overrides.pop("instance_path", None) or tmp_path / f"instance-{len(apps)}"
        app = create_app(instance_path=instance, **overrides)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["cds_service"].close()


@pytest.fixture
def app(make_app, app_settings):
    return make_app(**app_settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_client(make_app):
    """A test client of a fresh app built with these overrides (see `make_app`)."""
    return lambda **overrides: make_app(**overrides).test_client()
