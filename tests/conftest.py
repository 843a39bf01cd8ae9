"""Shared test configuration: fixture plugins contributed by each area of the service."""

pytest_plugins = [
    "support.db_fixture",
    "support.fhir_server_fixture",
    "support.log_guard",
]
