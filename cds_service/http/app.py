"""Flask application factory."""

from __future__ import annotations

import logging
import traceback
from typing import Any

from flask import Flask, Response, jsonify
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from cds_service.config import Settings, load_settings
from cds_service.errors import ApiError, operation_outcome
from cds_service.http import admission, operations
from cds_service.http.cors import install_cors
from cds_service.http.evidence_page import install_evidence_pages
from cds_service.http.routes import blueprint
from cds_service.security.client_auth import log_dev_mode_warning
from cds_service.startup import build_runtime

log = logging.getLogger(__name__)

_HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the service. `settings` wins; else defaults < CDS_CONFIG file < env < overrides."""
    settings = settings or load_settings(overrides)
    app = Flask(__name__, instance_path=str(settings.instance_path.resolve()), static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if isinstance(app.json, DefaultJSONProvider):  # Flask's own provider: keep the keys' order
        app.json.sort_keys = False
    app.extensions["cds_service"] = build_runtime(settings)
    install_cors(app, settings.cors_origins)
    app.register_blueprint(blueprint)
    install_evidence_pages(app)
    app.register_blueprint(operations.blueprint)
    register_error_handlers(app)
    if settings.allow_unsigned:
        log_dev_mode_warning(log)
    return app


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int, dict[str, str]]:
        if error.status == 401:
            # A refused client learns nothing that would help it; the log has the reason.
            return jsonify({"error": "unauthorized"}), 401, {"WWW-Authenticate": "Bearer"}
        headers = dict(getattr(error, "headers", None) or {})
        if headers.pop("Connection", "").lower() == "close":
            admission.close_connection()  # e.g. a body left unread: close, do not drain it
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            headers.setdefault("Retry-After", str(retry_after))
        return jsonify(error.body()), error.status, headers

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int, list[tuple[str, str]]]:
        status = error.code or 500
        code = _HTTP_ERROR_CODES.get(status, "http_error")
        # Keep the exception's own headers (a 405 must say Allow), not its HTML content type.
        headers = [(k, v) for k, v in error.get_headers() if k.lower() != "content-type"]
        return jsonify(operation_outcome(status, code, error.description or code)), status, headers

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        # Never a stack trace to the client. The log keeps the exception type and the code
        # path, not the message, which could quote patient data.
        frames = "".join(traceback.format_tb(error.__traceback__))
        log.error("unexpected %s while answering a request\n%s", type(error).__name__, frames)
        return jsonify(operation_outcome(500, "internal_error", "the service could not answer this request")), 500
