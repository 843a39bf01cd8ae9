"""Everything a hook call needs that is built once per process: content, store, HTTP pool.

create_app() builds one Runtime and keeps it in `app.extensions["cds_service"]`.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cds_service.clinical.fhir_collect import READ_TYPES
from cds_service.clinical.fhir_elements import declared_elements
from cds_service.clinical.record_build import OBSERVATION_KINDS
from cds_service.clinical.render import issued_suggestions, offered_reasons
from cds_service.config import ConfigError, Settings, check_instance_folder
from cds_service.content.cards import CardContent, content_versions, load_cards
from cds_service.content.configuration import OPTIONS_EXTENSION, Option, options_for
from cds_service.content.services import ServiceDefinition, load_services, narrow_prefetch
from cds_service.content.site_models import check_learned_models
from cds_service.errors import ApiError
from cds_service.fhir.client import FhirAccess
from cds_service.fhir.decode import Decoding
from cds_service.hook_call import HookParts
from cds_service.security.client_auth import StoreReplayGuard
from cds_service.security.trust import TrustConfig, trust_from_settings
from cds_service.storage.audit import AuditNotes, audit_key, patient_hash
from cds_service.storage.engine import StoreUnavailable
from cds_service.storage.evidence_pages import EvidenceSetup, build_evidence_setup
from cds_service.storage.model_status import ModelStatus
from cds_service.storage.store import Store, StoreOptions
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
    replay_guard: StoreReplayGuard | None = None
    evidence: EvidenceSetup | None = None  # evidence pages: page store and chart specs
    model_status: ModelStatus | None = None  # monitoring verdicts of the site models (instance folder)
    # Several hospitals: site name -> its own concepts and cards (setting site_overlays); a
    # call is evaluated with its client's site only (trust file `site`), else the shared content.
    sites: dict[str, SiteContent] = field(default_factory=dict)
    # Hook requests decoded keeping only the elements the record reads; None: parsed whole.
    decoding: Decoding | None = None
    # What a hook call reads of all this (hook_call.answer), built once below.
    hook_parts: HookParts = field(init=False, repr=False, compare=False)

    @property
    def content_version(self) -> str:
        return self._content_version

    def __post_init__(self) -> None:
        if self.replay_guard is None:
            self.replay_guard = StoreReplayGuard(self.store, memory_fallback=self.settings.jti_memory_fallback)
        self._content_version = content_versions(list(self.cards))
        self._cards_by_hook = {
            hook: tuple(card for card in self.cards if hook in card.hooks)
            for hook in {s.hook for s in self.services.values()}
        }

        self._options_by_hook = {hook: options_for(cards, hook) for hook, cards in self._cards_by_hook.items()}
        self.hook_parts = HookParts(
            fhir=self.fhir,
            cards_for=self.cards_for,
            concepts_for=self.concepts_for,
            configuration_options=self.configuration_options,
            hash_patient=self.hash_patient,
            smart_launch_url=self.smart_launch_url,
            as_of=self.settings.as_of,
            model_status=self.model_status,
            evidence=self.evidence,
        )

    def cards_for(self, hook: str, site: str | None = None) -> tuple[CardContent, ...]:
        if site is not None:
            return self.sites[site].cards_for(hook)
        return self._cards_by_hook.get(hook, ())

    def concepts_for(self, site: str | None) -> ConceptIndex:
        return self.sites[site].concepts if site is not None else self.concepts

    def site_of(self, identity) -> str | None:
        """The site whose overlay the authenticated client's calls use (None: shared content)."""
        issuer = self.trust.issuer(identity.iss) if identity.iss else None
        return issuer.site_for(identity.tenant) if issuer is not None else None

    def smart_launch_url(self, iss: str) -> str | None:
        """The SMART app launch URL the issuer's EHR opens evidence pages with, else None."""
        issuer = self.trust.issuer(iss)
        return issuer.evidence_smart_launch_url if issuer is not None else None

    def configuration_options(self, hook: str) -> tuple[Option, ...]:
        """The card switches and the card budget a client of this hook may set (issue 19)."""
        return self._options_by_hook.get(hook, ())

    def discovery_entry(self, service: ServiceDefinition) -> dict:
        entry = service.discovery_entry()
        options = self.configuration_options(service.hook)
        if options:
            entry["extension"] = {OPTIONS_EXTENSION: [o.discovery_entry() for o in options]}
        return entry

    def service(self, service_id: str) -> ServiceDefinition:
        service = self.services.get(service_id)
        if service is None:
            raise ApiError(404, "unknown_service", "no CDS service with this id; GET /cds-services lists them")
        return service

    def issued_at(self, card_uuid: str, site: str | None):
        """The card this service returned at `site` (None: the shared content), else None:
        a card returned at another site is, to this site's clients, a card never returned."""
        issued = self.store.issued_card(card_uuid)
        return issued if issued is not None and issued.site == site else None

    def _site_cards(self, site: str | None) -> tuple[CardContent, ...]:
        return self.sites[site].cards if site is not None and site in self.sites else self.cards

    def issued_suggestions(self, card_uuid: str, site: str | None = None) -> dict[str, str] | None:
        """Suggestion uuid -> card file suggestion id for a card this service returned at
        `site`, or None when it has no record of returning that card there (or no longer has
        its card file)."""
        issued = self.issued_at(card_uuid, site)
        if issued is None:
            return None
        card = next((c for c in self._site_cards(site) if c.id == issued.card_id), None)
        return issued_suggestions(card, card_uuid) if card is not None else {}

    def offered_reasons(self, card_uuid: str, hook: str, site: str | None = None) -> frozenset[tuple[str, str]]:
        """(system, code) of the override reasons offered with a card this service returned
        at `site`; for a card it has no record of there, those any card of the hook can offer."""
        issued = self.issued_at(card_uuid, site)
        cards = self._site_cards(site)
        cards = [c for c in cards if c.id == issued.card_id] if issued is not None else self.cards_for(hook, site)
        return frozenset().union(*(offered_reasons(c) for c in cards))

    def hash_patient(self, patient_id: str) -> str:
        return patient_hash(patient_id, self.audit_key)

    def audit(self, notes: AuditNotes) -> bool:
        """Keep one audit row per call to a known service, whatever its outcome.

        A successful answer (2xx: it carries cards and their evidence links) waits until its
        row and its pages are committed, or spooled in the instance folder (Store.keep_call,
        a group commit); False when neither could keep them: the caller answers 503 instead.
        Refusals (4xx, 503) hand their row to the background writer and never wait.
        """
        record = notes.record(self.content_version)
        if 200 <= record.outcome_status < 300:
            return self.store.keep_call(record)
        self.store.submit_call(record)
        return True

    def check_audit_capacity(self) -> None:
        """Refuse a hook call (503) that could not be audited: the local spool is full."""
        spool = self.store.audit_writer.spool
        if spool is not None and self.store.is_down() and spool.size_bytes() >= spool.max_bytes:
            raise StoreUnavailable(
                "the service cannot keep its audit trail (database down, local spool full); retry later",
                retry_after_s=self.settings.db_retry_after_s,
            )

    def audit_spool_depth(self) -> int:
        """Audit rows waiting in the local spool for the database (all workers; for /metrics)."""
        return self.store.audit_spool_depth()

    def audit_queue_depth(self) -> int:
        """Audit rows queued in this process for the background writer (for /metrics)."""
        return self.store.audit_queue_depth()

    def close(self) -> None:
        """Stop what this runtime started: the FHIR pool and session, the audit writer's
        thread (what it holds is written first, bounded in time), and the store's
        connections. For a process that builds more than one app (tests)."""
        self.fhir.close()
        self.store.close()


def store_options(settings: Settings) -> StoreOptions:
    return StoreOptions(
        connect_timeout_s=settings.db_connect_timeout_s,
        statement_timeout_s=settings.db_statement_timeout_s,
        pool_timeout_s=settings.db_pool_timeout_s,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        keepalives_idle_s=settings.db_keepalives_idle_s,
        keepalives_interval_s=settings.db_keepalives_interval_s,
        keepalives_count=settings.db_keepalives_count,
        retry_after_s=settings.db_retry_after_s,
        migrations=settings.db_migrations,
        instance_id=settings.instance_id,
        spool_dir=settings.instance_path / "audit-spool",
        audit_queue_size=settings.audit_queue_size,
        audit_spool_max_bytes=settings.audit_spool_max_bytes,
        audit_commit_wait_s=settings.audit_commit_wait_s,
        sqlite_synchronous=settings.db_sqlite_synchronous,
    )


def open_store(settings: Settings) -> Store:
    """The store the settings name (migrated unless db_migrations is manual)."""
    check_instance_folder(settings.instance_path)
    return Store(settings.resolved_database_url, store_options(settings))


@dataclass
class SiteContent:
    """One hospital's content: the shipped cards and concepts with its own overlay."""

    name: str
    concepts: ConceptIndex
    cards: tuple[CardContent, ...]

    def __post_init__(self) -> None:
        hooks = {h for card in self.cards for h in card.hooks}
        self._by_hook = {hook: tuple(c for c in self.cards if hook in c.hooks) for hook in hooks}

    def cards_for(self, hook: str) -> tuple[CardContent, ...]:
        return self._by_hook.get(hook, ())


def load_sites(settings: Settings, trust: TrustConfig) -> dict[str, SiteContent]:
    """Each site's content; ConfigError when a trusted client names a site not configured."""
    sites = {}
    for name, path in sorted(settings.site_overlays.items()):
        overlay = load_overlay(Path(path))
        concepts = load_concepts(settings.cards_dir, overlay)
        cards = tuple(load_cards(settings.cards_dir, overlay, concepts, Path(path).parent))
        for warning in check_learned_models(cards, settings.allow_unvalidated_site_models):
            log.warning("site %s: %s", name, warning)
        sites[name] = SiteContent(name, concepts, cards)
    for issuer in trust.issuers.values():
        names = issuer.site.values() if isinstance(issuer.site, dict) else [issuer.site] if issuer.site else []
        for name in names:
            if name not in sites:
                raise ConfigError(
                    f"trust file: issuer {issuer.iss!r} is bound to site {name!r}, which is not in site_overlays "
                    f"(sites: {sorted(sites) or 'none'})"
                )
    return sites


def observation_codes(concepts: ConceptIndex, sites: Mapping[str, SiteContent]) -> list[str] | None:
    """The codes by which the record reads Observations, at any site (the decoder drops the
    Observations that name none of them); None, and nothing is dropped, when some Observation
    concept is found otherwise: by a text phrase, or in an ICD-10 system, whose codes are
    matched after normalising their spelling."""
    codes: list[str] = []
    for index in (concepts, *(site.concepts for site in sites.values())):
        for kind in OBSERVATION_KINDS:
            found = index.search_codes(kind)
            if found is None or any(index.is_icd10(system) for system, _code in found):
                return None
            codes.extend(code for _system, code in found)
    return codes


def build_runtime(settings: Settings) -> Runtime:
    check_instance_folder(settings.instance_path)
    trust = trust_from_settings(settings)
    services = load_services(settings.cards_dir / "services.toml")
    overlay = load_overlay(settings.site_overlay)
    concepts = load_concepts(settings.cards_dir, overlay)
    services = narrow_prefetch(services, concepts)
    overlay_dir = Path(settings.site_overlay).parent if settings.site_overlay else None
    cards = tuple(load_cards(settings.cards_dir, overlay, concepts, overlay_dir))
    for warning in check_learned_models(cards, settings.allow_unvalidated_site_models):
        log.warning(warning)
    sites = load_sites(settings, trust)
    # Hook requests and FHIR answers keep only the elements the record reads, of the resource
    # types it reads, and only the Observations whose codes it reads (fhir/decode.py).
    decoding = Decoding(declared_elements(), READ_TYPES, observation_codes(concepts, sites))
    store = open_store(settings)
    store.audit_writer.start()  # replays what an earlier run left in the spool
    if settings.as_of_date:
        log.warning(
            "!!! AS-OF DATE: every hook call judges the record as of %s, not today "
            "(as_of_date is for development and demos only; never use it in production)",
            settings.as_of_date,
        )
    return Runtime(
        settings=settings,
        services=services,
        store=store,
        audit_key=audit_key(settings),
        trust=trust,
        fhir=FhirAccess(
            settings,
            prefetch_keys=max((len(s.prefetch) for s in services.values()), default=1),
            decoding=decoding,
        ),
        decoding=decoding,
        concepts=concepts,
        cards=cards,
        evidence=build_evidence_setup(settings, store, cards),
        model_status=ModelStatus(settings.instance_path),
        sites=sites,
    )
