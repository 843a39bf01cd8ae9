"""CORS for browser-based CDS clients: preflights are answered without a JWT, and allowed
origins can read every CDS Hooks answer (refusals included)."""

from __future__ import annotations

import pytest
from flask import Flask, jsonify, request

from cds_service.config import ConfigError
from cds_service.http.cors import install_cors

EHR = "https://ehr.example.org"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}


def cds_app(origins: tuple[str, ...]) -> Flask:
    """A minimal service whose every CDS Hooks route needs an Authorization header, with an
    authentication hook registered before CORS is installed."""
    app = Flask(__name__)

    @app.before_request
    def require_token():
        if request.path.startswith("/cds-services") and "Authorization" not in request.headers:
            return jsonify({"error": "unauthorized"}), 401
        return None

    @app.get("/cds-services")
    def discovery():
        return jsonify({"services": []})

    @app.post("/cds-services/<service_id>")
    def call(service_id):
        return jsonify({"cards": []})

    @app.get("/health")
    def health():
        return jsonify({"ok": True})

    install_cors(app, origins)
    return app


@pytest.mark.parametrize("path", ["/cds-services", "/cds-services/hfs-order", "/cds-services/hfs-order/feedback"])
def test_a_preflight_from_an_allowed_origin_is_answered_without_a_token(path):
    response = cds_app((EHR,)).test_client().options(path, headers={"Origin": EHR, **PREFLIGHT})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == EHR
    assert response.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
    assert response.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type"
    assert int(response.headers["Access-Control-Max-Age"]) > 0
    assert "Origin" in response.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_preflight_from_another_origin_gets_no_permission():
    response = (
        cds_app((EHR,))
        .test_client()
        .options("/cds-services/x", headers={"Origin": "https://evil.example", **PREFLIGHT})
    )
    assert response.status_code == 204
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers


def test_answers_and_refusals_carry_the_allowed_origin():
    client = cds_app((EHR, "http://localhost:3000")).test_client()
    ok = client.post("/cds-services/hfs-order", json={}, headers={"Origin": EHR, "Authorization": "Bearer x"})
    refused = client.get("/cds-services", headers={"Origin": "http://localhost:3000"})
    assert ok.status_code == 200 and ok.headers["Access-Control-Allow-Origin"] == EHR
    assert refused.status_code == 401
    assert refused.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert "Origin" in ok.headers["Vary"] and "Origin" in refused.headers["Vary"]


def test_a_wildcard_allows_any_origin_without_credentials():
    client = cds_app(("*",)).test_client()
    preflight = client.options("/cds-services", headers={"Origin": "https://anyone.example", **PREFLIGHT})
    answer = client.get("/cds-services", headers={"Origin": "https://anyone.example", "Authorization": "Bearer x"})
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    assert "Access-Control-Allow-Credentials" not in answer.headers


def test_other_paths_and_no_configuration_get_no_cors_headers():
    configured = cds_app((EHR,)).test_client()
    assert "Access-Control-Allow-Origin" not in configured.get("/health", headers={"Origin": EHR}).headers
    plain = cds_app(()).test_client()
    response = plain.get("/cds-services", headers={"Origin": EHR, "Authorization": "Bearer x"})
    assert "Access-Control-Allow-Origin" not in response.headers
    # Without CORS the preflight is not ours to answer: the auth hook sees it.
    assert plain.options("/cds-services", headers={"Origin": EHR, **PREFLIGHT}).status_code == 401


def test_a_configured_origin_with_a_trailing_slash_or_capitals_still_matches():
    client = cds_app(("https://EHR.example.org/",)).test_client()
    response = client.get("/cds-services", headers={"Origin": EHR, "Authorization": "Bearer x"})
    assert response.headers["Access-Control-Allow-Origin"] == EHR


@pytest.mark.parametrize("bad", ["ehr.example.org", "https://ehr.example.org/path", "https://"])
def test_a_cors_origin_that_is_not_an_origin_is_a_configuration_error(bad):
    with pytest.raises(ConfigError):
        install_cors(Flask(__name__), (bad,))
