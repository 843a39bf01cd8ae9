"""The CDS services offered (discovery as data, from cards/services.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from cds_service.config import ConfigError

SUPPORTED_HOOKS = ("patient-view", "order-select", "order-sign")
# The CDS Hooks version implemented, as discovery's `version` says it (semantic versioning).
CDS_HOOKS_VERSION = "3.0.0-ballot"


class CatalogError(ConfigError):
    """cards/services.toml cannot be used; raised at start-up."""


@dataclass(frozen=True)
class PrefetchTemplate:
    key: str
    query: str  # relative FHIR read or search URL with prefetch tokens
    required: bool  # no card can be judged without it


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: tuple[PrefetchTemplate, ...]
    hook_version: str = "1.0"
    version: str = CDS_HOOKS_VERSION

    def discovery_entry(self) -> dict:
        """The service as listed by GET /cds-services (a 2.0 client ignores `version` and
        `hookVersion`; CDS Hooks 3.0.0-ballot §Discovery adds them)."""
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": {t.key: t.query for t in self.prefetch},
            "version": self.version,
            "hookVersion": self.hook_version,
        }


def load_services(path: Path) -> dict[str, ServiceDefinition]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    templates = tuple(
        PrefetchTemplate(key=key, query=str(spec["query"]), required=bool(spec.get("required", False)))
        for key, spec in data.get("prefetch", {}).items()
    )
    services: dict[str, ServiceDefinition] = {}
    for entry in data.get("services", []):
        service = ServiceDefinition(
            id=str(entry["id"]),
            hook=str(entry["hook"]),
            title=str(entry["title"]),
            description=str(entry["description"]),
            prefetch=templates,
            hook_version=str(entry.get("hook_version", "1.0")),
            version=str(data.get("cds_hooks_version", CDS_HOOKS_VERSION)),
        )
        if service.hook not in SUPPORTED_HOOKS:
            raise CatalogError(f"{path}: service {service.id}: unsupported hook {service.hook}")
        if service.id in services:
            raise CatalogError(f"{path}: service id {service.id} is listed twice")
        services[service.id] = service
    return services
