"""One hook call after validation, top to bottom: prefetch -> record -> evaluate -> render.

Nothing here knows about Flask: the route hands over the validated hook request
(http/hook_request.py) and gets the list of CDS Hooks cards back (or an ApiError). AuditNotes collect what the audit trail
keeps about the call; they never hold a token or a raw patient identifier.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from cds_service import metrics
from cds_service.clinical.evaluate import evaluate
from cds_service.clinical.record import build_record
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
    status: int | None = None
    cards: list[tuple[str, str, str]] = field(default_factory=list)  # (uuid, card id, summary)
    # time.monotonic() when the call was accepted (queued for a thread): the FHIR time
    # budget counts from here. None: from when the prefetch step starts.
    accepted: float | None = None

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0


def answer(rt: Runtime, service: ServiceDefinition, request: HookRequest, notes: AuditNotes) -> list[dict]:
    notes.hook_instance = request.hook_instance
    notes.patient_hash = rt.hash_patient(request.patient_id)

    deadline = rt.fhir.new_deadline(notes.accepted) if rt.fhir is not None and notes.accepted is not None else None
    prefetched = resolve(service, request, rt.fhir, deadline=deadline)

    record = build_record(
        prefetched.data,
        draft_orders=request.draft_orders,
        selections=request.selections,
        concepts=rt.concepts,
        today=today(),
        unavailable=prefetched.gaps,
    )

    results = [evaluate(card, record, request.hook) for card in rt.cards_for(request.hook)]
    fired = [result for result in results if result is not None]
    cards = [render(result) for result in fired]
    notes.cards = [(card["uuid"], result.card_id, card["summary"]) for card, result in zip(cards, fired)]
    for result in fired:
        metrics.CARDS_FIRED.labels(card=result.card_id, situation=result.situation.id).inc()
    return cards


def today() -> date:
    return datetime.now(UTC).date()
