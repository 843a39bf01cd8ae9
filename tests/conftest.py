"""Shared test configuration: fixture plugins contributed by each area of the service."""

pytest_plugins = [
    "db_fixture",
    "fhir_server_fixture",
    "log_guard",
]
