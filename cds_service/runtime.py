"""Everything a hook call needs that is built once per process: content, store, HTTP pool.

create_app() builds one Runtime and keeps it in `app.extensions["cds_service"]`.
"""
from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .audit import audit_key, patient_hash
from .catalog import ServiceDefinition, load_services
from .config import ConfigError, Settings
from .errors import ApiError
from .store import CallRecord, Store

log = logging.getLogger(__name__)


def load_overlay(path: Path | None) -> dict | None:
    """The deployment's site file (TOML): extra local codes and complete model parameters."""
    if path is None:
        return None
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"site overlay {path}: {exc}") from exc


@dataclass
class Runtime:
    settings: Settings
    services: dict[str, ServiceDefinition]
    store: Store
    audit_key: bytes

    def service(self, service_id: str) -> ServiceDefinition:
        service = self.services.get(service_id)
        if service is None:
            raise ApiError(404, "unknown_service", "no CDS service with this id; GET /cds-services lists them")
        return service

    def hash_patient(self, patient_id: str) -> str:
        return patient_hash(patient_id, self.audit_key)


def build_runtime(settings: Settings) -> Runtime:
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    services = load_services(settings.cards_dir / "services.toml")
    store = Store(settings.resolved_database_url)
    return Runtime(settings=settings, services=services, store=store, audit_key=audit_key(settings))
