"""The CDS services offered (discovery as data, from cards/services.toml)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cds_service.config import ConfigError
from cds_service.hooks import HOOKS
from cds_service.terminology.concept_index import ConceptIndex

SUPPORTED_HOOKS = HOOKS
# The CDS Hooks version implemented, as discovery's `version` says it (semantic versioning).
CDS_HOOKS_VERSION = "3.0.0-ballot"


class CatalogError(ConfigError):
    """cards/services.toml cannot be used; raised at start-up."""


@dataclass(frozen=True)
class PrefetchTemplate:
    key: str
    query: str  # relative FHIR read or search URL with prefetch tokens
    required: bool  # no card can be judged without it
    # The concept kind whose codes narrow this search (`narrow_prefetch`), and the search
    # parameter that carries them; None: the search asks for everything of its type.
    codes_of: str | None = None
    code_param: str = "code"


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: tuple[PrefetchTemplate, ...]
    hook_version: str = "1.0"
    version: str = CDS_HOOKS_VERSION

    def discovery_entry(self) -> dict[str, Any]:
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
        PrefetchTemplate(
            key=key,
            query=str(spec["query"]),
            required=bool(spec.get("required", False)),
            codes_of=spec.get("codes_of"),
            code_param=str(spec.get("code_param", "code")),
        )
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


def narrow_prefetch(services: dict[str, ServiceDefinition], concepts: ConceptIndex) -> dict[str, ServiceDefinition]:
    """Ask the EHR for less: a template with `codes_of` gets a token filter listing every
    code of that kind's concepts (the site overlay's local codes included, each system under
    its aliases too), e.g. `Observation?patient=..&combo-code=http://loinc.org|72514-3,...`.
    When a concept of that kind can match by free text or by an ICD-10 family, no code
    filter can find all it reads, and the search stays broad."""
    narrowed = {}
    for service_id, service in services.items():
        templates = []
        for template in service.prefetch:
            codes = concepts.search_codes(template.codes_of) if template.codes_of else None
            if codes:
                tokens = ",".join(f"{_token(system)}|{_token(code)}" for system, code in codes)
                template = dataclasses.replace(template, query=f"{template.query}&{template.code_param}={tokens}")
            templates.append(template)
        narrowed[service_id] = dataclasses.replace(service, prefetch=tuple(templates))
    return narrowed


def _token(text: str) -> str:
    """A system or code in a token search: FHIR's escapes (`\\`, `,`, `|`, `$`), then the URL's."""
    for char in ("\\", ",", "|", "$"):
        text = text.replace(char, "\\" + char)
    return quote(text, safe=":/-._~\\")
