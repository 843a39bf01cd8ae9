"""The application factory: one Runtime per app, the body limit, and every error as a FHIR
OperationOutcome: HTTP errors with their own headers, ApiErrors with their status, a 401
bare, and an unexpected exception as a 500 that shows nothing of it."""

from __future__ import annotations

import logging

from support import error_body

from cds_service.config import load_settings
from cds_service.http.app import create_app
from cds_service.startup import Runtime


def test_the_app_holds_one_runtime_built_from_its_settings(tmp_path):
    settings = load_settings({"instance_path": tmp_path / "inst", "max_body_bytes": 4096}, environ={})
    app = create_app(settings)
    try:
        runtime = app.extensions["cds_service"]
        assert isinstance(runtime, Runtime) and runtime.settings is settings
        assert app.config["MAX_CONTENT_LENGTH"] == 4096
        assert app.instance_path == str((tmp_path / "inst").resolve())
    finally:
        app.extensions["cds_service"].close()


def test_overrides_are_settings(make_app):
    app = make_app(fhir_max_pages=3, cors_origins=("https://ehr.example.org",))
    assert app.extensions["cds_service"].settings.fhir_max_pages == 3
    response = app.test_client().get("/cds-services", headers={"Origin": "https://ehr.example.org"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://ehr.example.org"


def test_discovery_keeps_the_order_of_the_cds_hooks_fields(client):
    service = client.get("/cds-services").get_json()["services"][0]
    assert list(service) == ["hook", "id", "title", "description", "prefetch", "version", "hookVersion", "extension"]
    assert service["version"] == "3.0.0-ballot" and service["hookVersion"] == "1.0"


def test_an_unknown_path_is_a_json_404(client):
    response = client.get("/no-such-path")
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert error_body.code(response.get_json()) == "not_found" and error_body.text(response.get_json())


def test_a_wrong_method_is_a_json_405_that_still_says_which_methods_are_allowed(client):
    response = client.delete("/cds-services")
    assert response.status_code == 405 and response.mimetype == "application/json"
    assert error_body.code(response.get_json()) == "method_not_allowed"
    assert response.get_json()["issue"][0]["code"] == "not-supported"
    assert "GET" in response.headers["Allow"]


def test_an_api_error_is_answered_with_its_status_and_body(client):
    response = client.post("/cds-services/no-such-service", json={})
    assert response.status_code == 404
    assert error_body.code(response.get_json()) == "unknown_service"
    assert response.get_json()["issue"][0]["code"] == "not-found"


def test_a_refused_client_gets_a_bare_401_with_a_bearer_challenge(make_app):
    response = make_app(allow_unsigned=False).test_client().get("/cds-services")
    assert response.status_code == 401
    assert response.get_json() == {"error": "unauthorized"}
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_an_unexpected_exception_is_a_500_that_shows_nothing_of_it(make_app, caplog):
    app = make_app()
    patient, token = "pt-app-" + "9931", "abc123" + "secret"  # data, not source text the traceback quotes

    @app.get("/boom")
    def boom():
        message = f"patient {patient} has token {token}"
        raise RuntimeError(message)

    with caplog.at_level(logging.ERROR, logger="cds_service.http.app"):
        response = app.test_client().get("/boom")
    assert response.status_code == 500
    assert response.get_json() == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "fatal",
                "code": "exception",
                "details": {
                    "coding": [{"system": "urn:hfs-cds-service:error", "code": "internal_error"}],
                    "text": "the service could not answer this request",
                },
            }
        ],
    }
    assert "unexpected RuntimeError while answering a request" in caplog.text
    assert "pt-app-9931" not in caplog.text and "abc123secret" not in caplog.text


def test_development_mode_is_loud_in_the_log(make_app, caplog):
    with caplog.at_level(logging.WARNING):
        make_app(allow_unsigned=True)
    assert any(r.levelno >= logging.WARNING and r.name == "cds_service.http.app" for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_app(allow_unsigned=False)
    assert not any(r.name == "cds_service.http.app" for r in caplog.records)
