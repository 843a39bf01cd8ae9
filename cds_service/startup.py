"""Everything a hook call needs that is built once per process: content, store, HTTP pool.

create_app() builds one Runtime and keeps it in `app.extensions["cds_service"]`.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cds_service.config import ConfigError, Settings
from cds_service.content.cards import CardContent, content_versions, load_cards
from cds_service.content.services import ServiceDefinition, load_services
from cds_service.errors import ApiError
from cds_service.fhir.client import FhirAccess
from cds_service.security.trust import TrustConfig, trust_from_settings
from cds_service.storage.audit import audit_key, build_call_record, patient_hash
from cds_service.storage.store import Store
from cds_service.terminology.concept_index import ConceptIndex
from cds_service.terminology.concepts_file import load_concepts

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
    trust: TrustConfig
    fhir: FhirAccess
    concepts: ConceptIndex
    cards: tuple[CardContent, ...]

    @property
    def content_version(self) -> str:
        return self._content_version

    def __post_init__(self) -> None:
        self._content_version = content_versions(list(self.cards))
        self._cards_by_hook = {
            hook: tuple(card for card in self.cards if hook in card.hooks)
            for hook in {s.hook for s in self.services.values()}
        }

    def cards_for(self, hook: str) -> tuple[CardContent, ...]:
        return self._cards_by_hook.get(hook, ())

    def service(self, service_id: str) -> ServiceDefinition:
        service = self.services.get(service_id)
        if service is None:
            raise ApiError(404, "unknown_service", "no CDS service with this id; GET /cds-services lists them")
        return service

    def hash_patient(self, patient_id: str) -> str:
        return patient_hash(patient_id, self.audit_key)

    def audit(self, notes) -> None:
        """Keep one audit row per call to a known service, whatever its outcome.

        A store failure is logged and does not turn an answered call into an error.
        """
        record = build_call_record(
            service_id=notes.service_id,
            hook=notes.hook,
            hook_instance=notes.hook_instance or "",
            outcome_status=notes.status or 0,
            duration_ms=notes.duration_ms,
            patient_hash=notes.patient_hash,
            content_version=self.content_version,
            client_iss=notes.client_iss,
            cards=notes.cards,
        )
        try:
            self.store.record_call(record)
        except Exception as exc:
            log.error("audit trail write failed: %s", type(exc).__name__)


def build_runtime(settings: Settings) -> Runtime:
    settings.instance_path.mkdir(parents=True, exist_ok=True)
    services = load_services(settings.cards_dir / "services.toml")
    overlay = load_overlay(settings.site_overlay)
    concepts = load_concepts(settings.cards_dir, overlay)
    cards = tuple(load_cards(settings.cards_dir, overlay, concepts))
    store = Store(settings.resolved_database_url)
    return Runtime(
        settings=settings,
        services=services,
        store=store,
        audit_key=audit_key(settings),
        trust=trust_from_settings(settings),
        fhir=FhirAccess(settings, prefetch_keys=max((len(s.prefetch) for s in services.values()), default=1)),
        concepts=concepts,
        cards=cards,
    )
