"""One hook call after validation, top to bottom: prefetch -> record -> evaluate -> render.

Nothing here knows about Flask, nor the whole runtime: the route hands over the HookParts a
call reads (built once at start-up) and the validated hook request (http/hook_request.py),
and gets the list of CDS Hooks cards back (or an ApiError); the call's AuditNotes (declared
in storage/audit.py) are filled in as it goes.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from cds_service import metrics
from cds_service.clinical.evaluate import CardResult, evaluate
from cds_service.clinical.evidence import evidence_link
from cds_service.clinical.record_build import build_record
from cds_service.clinical.render import render
from cds_service.content.configuration import read_configuration, within_budget
from cds_service.fhir.prefetch import FhirUse, resolve

if TYPE_CHECKING:
    from cds_service.content.cards import CardContent
    from cds_service.content.configuration import Option
    from cds_service.content.services import ServiceDefinition
    from cds_service.fhir.client import FhirAccess
    from cds_service.hooks import HookRequest
    from cds_service.storage.audit import AuditNotes
    from cds_service.storage.evidence_pages import EvidenceSetup
    from cds_service.storage.model_status import ModelStatus
    from cds_service.terminology.concept_index import ConceptIndex


@dataclass(frozen=True)
class HookParts:
    """What a hook call reads of the process's runtime, and nothing more: built once at
    start-up (startup.Runtime.hook_parts) and handed to `answer` by the route."""

    fhir: FhirAccess | None  # FHIR access for fallback searches and the call's time budget
    cards_for: Callable[[str, str | None], Sequence[CardContent]]  # (hook, site) -> cards
    concepts_for: Callable[[str | None], ConceptIndex]  # site -> its concepts
    configuration_options: Callable[[str], Sequence[Option]]  # hook -> the switches a client may set
    hash_patient: Callable[[str], str]  # patient id -> its keyed hash for the audit trail
    smart_launch_url: Callable[[str], str | None]  # issuer -> its SMART launch URL for evidence pages
    as_of: date | None = None  # development and demos: judge the record as of this date
    model_status: ModelStatus | None = None  # monitoring verdicts of the site models
    evidence: EvidenceSetup | None = None  # evidence pages: page store and chart specs


@dataclass
class CallUsage:
    """What one hook call used, for the audit row and the metrics: the FHIR side (token,
    resource types, missing prefetch keys) and the time of each step. No identifiers."""

    fhir: FhirUse = field(default_factory=FhirUse)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def timed(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings_ms[stage] = round((now - since) * 1000.0, 3)
        return now

    def as_dict(self) -> dict:
        return {
            "token": self.fhir.token,
            "resource_types": {
                "prefetched": sorted(self.fhir.prefetched),
                "fetched": sorted(self.fhir.fetched),
                "refused": sorted(self.fhir.refused),
            },
            "prefetch_keys_missing": list(self.fhir.missing_keys),
            "timings_ms": dict(self.timings_ms),
        }


def answer(
    parts: HookParts, service: ServiceDefinition, request: HookRequest, notes: AuditNotes, base_url: str = ""
) -> list[dict]:
    """The cards for one hook call. `base_url`: the service's public root URL (the setting
    public_base_url, else the request's root), for the evidence page links."""
    notes.hook_instance = request.hook_instance
    notes.patient_hash = parts.hash_patient(request.patient_id)
    configuration = read_configuration(request.extension, parts.configuration_options(request.hook))

    deadline = (
        parts.fhir.new_deadline(notes.accepted) if parts.fhir is not None and notes.accepted is not None else None
    )
    notes.usage = usage = CallUsage()
    step = time.perf_counter()
    try:
        prefetched = resolve(service, request, parts.fhir, deadline=deadline, use=usage.fhir)
    finally:
        step = usage.timed("prefetch", step)

    instant = call_instant(parts.as_of)
    record = build_record(
        prefetched.data,
        draft_orders=request.draft_orders,
        selections=request.selections,
        concepts=parts.concepts_for(notes.site),
        today=instant.date(),
        unavailable=prefetched.gaps,
        now=instant,
    )
    step = usage.timed("record", step)

    cards_on = [card for card in parts.cards_for(request.hook, notes.site) if configuration.shows_card(card.id)]
    results = [_evaluate(parts, card, record, request.hook, notes.site) for card in cards_on]
    fired = [r for r in results if r is not None and configuration.shows(r.card_id, r.situation.id)]
    fired = within_budget(fired, [r.situation.indicator or r.card.indicator for r in fired], configuration)
    step = usage.timed("evaluate", step)
    smart_launch = parts.smart_launch_url(notes.client_iss) if notes.client_iss else None
    cards = [_card(parts, result, request.patient_id, base_url, notes, smart_launch) for result in fired]
    usage.timed("render", step)
    notes.cards = [
        (card["uuid"], result.card_id, card["summary"], result.situation.id) for card, result in zip(cards, fired)
    ]
    for result in fired:
        metrics.CARDS_FIRED.labels(card=result.card_id, situation=result.situation.id).inc()
    return cards


def _evaluate(parts: HookParts, card, record, hook: str, site: str | None = None) -> CardResult | None:
    """The card's result; with the evidence only (and the one-line reason) when monitoring
    has retired the card's site model."""
    model = card.site_model
    reason = None
    if model is not None and parts.model_status is not None:
        reason = parts.model_status.retired(card.id, model.label, model.version, site)
    if reason is None:
        return evaluate(card, record, hook)
    result = evaluate(card.with_site_model(None), record, hook)
    return dataclasses.replace(result, retired=reason) if result is not None else None


def _card(
    parts: HookParts,
    result: CardResult,
    patient_id: str,
    base_url: str,
    notes: AuditNotes,
    smart_launch: str | None = None,
) -> dict:
    card = render(result, patient_id=patient_id, card_uuid=str(uuid.uuid4()))
    if parts.evidence is not None and base_url:
        # The page data is made here; its row is committed with the call's audit row before
        # the answer leaves (Runtime.audit), so the link opens at once from any worker.
        new_page = parts.evidence.new_page

        def keep(data: dict) -> str:  # the page knows its card's uuid: an open is counted for that card
            token, row = new_page({**data, "card_uuid": card["uuid"]})
            notes.pages.append(row)
            return token

        link = evidence_link(result, parts.evidence.chart_specs, keep, base_url, card["summary"])
        if smart_launch:
            link = smart_app_link(link, smart_launch)
        card["links"].insert(0, link)
    return card


def smart_app_link(link: dict, launch_url: str) -> dict:
    """The evidence page link for an EHR that launches SMART apps rather than opening URLs
    (configured per issuer): the app's launch URL, the page token as appContext."""
    token = link["url"].rstrip("/").rsplit("/", 1)[1]
    return {"label": link["label"], "url": launch_url, "type": "smart", "appContext": token}


def call_instant(as_of: date | None = None) -> datetime:
    """The instant the record is judged at: now, or (development and demos) the as-of date
    at the current time of day."""
    now = datetime.now(UTC)
    if as_of is None:
        return now
    return datetime.combine(as_of, now.timetz())


def today() -> date:
    return datetime.now(UTC).date()
