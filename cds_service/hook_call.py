"""One hook call after validation, top to bottom: prefetch -> record -> evaluate -> render.

Nothing here knows about Flask: the route hands over the validated hook request
(http/hook_request.py) and gets the list of CDS Hooks cards back (or an ApiError). AuditNotes collect what the audit trail
keeps about the call; they never hold a token or a raw patient identifier.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from cds_service import metrics
from cds_service.clinical.evaluate import CardResult, evaluate
from cds_service.clinical.evidence import evidence_link
from cds_service.clinical.record_build import build_record
from cds_service.clinical.render import render
from cds_service.fhir.prefetch import resolve

if TYPE_CHECKING:
    from cds_service.content.services import ServiceDefinition
    from cds_service.http.hook_request import HookRequest
    from cds_service.startup import Runtime


@dataclass
class AuditNotes:
    service_id: str
    hook: str
    started: float
    hook_instance: str | None = None
    patient_hash: str | None = None
    client_iss: str | None = None
    site: str | None = None  # the client's site (trust file `site`): its overlay only
    status: int | None = None
    cards: list[tuple[str, str, str, str]] = field(default_factory=list)  # (uuid, card id, summary, situation)
    # time.monotonic() when the call was accepted (queued for a thread): the FHIR time
    # budget counts from here. None: from when the prefetch step starts.
    accepted: float | None = None

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


def answer(
    rt: Runtime, service: ServiceDefinition, request: HookRequest, notes: AuditNotes, base_url: str = ""
) -> list[dict]:
    """The cards for one hook call. `base_url`: the service's public root URL (the setting
    public_base_url, else the request's root), for the evidence page links."""
    notes.hook_instance = request.hook_instance
    notes.patient_hash = rt.hash_patient(request.patient_id)

    deadline = rt.fhir.new_deadline(notes.accepted) if rt.fhir is not None and notes.accepted is not None else None
    prefetched = resolve(service, request, rt.fhir, deadline=deadline)

    instant = call_instant(rt.settings.as_of)
    record = build_record(
        prefetched.data,
        draft_orders=request.draft_orders,
        selections=request.selections,
        concepts=rt.concepts_for(notes.site),
        today=instant.date(),
        unavailable=prefetched.gaps,
        now=instant,
    )

    results = [_evaluate(rt, card, record, request.hook, notes.site) for card in rt.cards_for(request.hook, notes.site)]
    fired = [result for result in results if result is not None]
    cards = [_card(rt, result, request.patient_id, base_url) for result in fired]
    notes.cards = [
        (card["uuid"], result.card_id, card["summary"], result.situation.id) for card, result in zip(cards, fired)
    ]
    for result in fired:
        metrics.CARDS_FIRED.labels(card=result.card_id, situation=result.situation.id).inc()
    return cards


def _evaluate(rt: Runtime, card, record, hook: str, site: str | None = None) -> CardResult | None:
    """The card's result; with the evidence only (and the one-line reason) when monitoring
    has retired the card's site model."""
    model = card.site_model
    reason = None
    if model is not None and rt.model_status is not None:
        reason = rt.model_status.retired(card.id, model.label, model.version, site)
    if reason is None:
        return evaluate(card, record, hook)
    result = evaluate(card.with_site_model(None), record, hook)
    return dataclasses.replace(result, retired=reason) if result is not None else None


def _card(rt: Runtime, result: CardResult, patient_id: str, base_url: str) -> dict:
    card = render(result, patient_id=patient_id, card_uuid=str(uuid.uuid4()))
    if rt.evidence is not None and base_url:
        # The page data is made here; the store write happens off the request path.

        def save(data: dict) -> str:  # the page knows its card's uuid: an open is counted for that card
            return rt.evidence.save({**data, "card_uuid": card["uuid"]})

        link = evidence_link(result, rt.evidence.chart_specs, save, base_url, card["summary"])
        card["links"].insert(0, link)
    return card


def call_instant(as_of: date | None = None) -> datetime:
    """The instant the record is judged at: now, or (development and demos) the as-of date
    at the current time of day."""
    now = datetime.now(UTC)
    if as_of is None:
        return now
    return datetime.combine(as_of, now.timetz())


def today() -> date:
    return datetime.now(UTC).date()
