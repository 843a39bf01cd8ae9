"""The patient's story: the whole record read once per call, as a clinician reads it.

EVIDENCE.md "The patient's story": a card describes the patient's situation now, read from
the whole record, not from one resource at a time; the hook path and `learn` read it with
the same code (this module). Built once per PatientRecord (`story_of`, cached on the
record) and reused by every card and every predictor of the call.

- Operations as episodes: records of the same treatment (a procedure concept) on the same
  day are one operation (an operating-room record with CPT 61458 and a period, and a
  billing record with ICD-10-PCS 00NM0ZZ, date only, are one MVD). A revision needs two
  operations on different days. Records entered in error, not done or not yet completed
  are set aside (the build keeps them in `record.set_aside`). Each episode keeps its
  records, its day and period (from the record with a period, else one with a time of day),
  its stated indication, body site and laterality.
- Indication: a procedure whose stated reason names only other conditions is not a
  treatment of the condition a card concerns (`Episode.treats`).
- The course of a condition relative to an episode (`course`): recorded after it, resolved
  after it (with the date), not placeable, ongoing from before, or none.
- Treatments in order (`treatments_after`): later episodes of the given treatments.
- Operation time (`operation_time`): an Observation of the procedure's day wins over the
  period; a period longer than 12 hours is a stay, not an operation time; both are held to
  the concept's valid range.

Nothing here knows about FHIR JSON, HTTP or card models; dates are compared by
clinical/dates.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, TypeGuard, cast

from cds_service.clinical.dates import day_of, has_time, instant_of, placed_after
from cds_service.clinical.record import (
    ConditionFact,
    ObservationFact,
    PatientRecord,
    ProcedureFact,
    SetAsideProcedure,
)

__all__ = ["Course", "Episode", "OperationTime", "Story", "operation_time", "story_of"]

STAY_MINUTES = 12 * 60  # a period longer than this is a stay (an admission), not an operation
RESOLVED_STATUSES = ("resolved", "inactive", "remission")


@dataclass(frozen=True)
class Episode:
    """One operation: the records of one treatment on one day, merged."""

    concept: str
    fact: ProcedureFact  # the operation as one fact (times from its operating-room record)
    records: tuple[ProcedureFact, ...]  # every record merged into it (one, or more)

    @property
    def day(self) -> date | None:
        return day_of(self.fact.performed) if self.fact.performed is not None else None

    def treats(self, condition: str | None) -> bool:
        """Done for the condition: a record states it as the reason, or none states a reason."""
        if condition is None:
            return True
        stated = [r for r in self.records if r.reason_stated]
        return not stated or any(condition in r.reason_concepts for r in stated)


@dataclass(frozen=True)
class Course:
    """Where a condition stands relative to one operation (EVIDENCE.md E and "The patient's story").

    answer: "after" (active, recurrent or relapsed entry dated after it), "resolved" (an entry
    that went on after it and ended on a date after it: delayed resolution), "unplaced" (an
    active entry with no date that places it, or dated only on the operation's day),
    "ongoing" (active since before it, no end date), "undated" (the operation has no date),
    or "none" (none active, none resolved after it)."""

    answer: str
    fact: ConditionFact | None = None
    resolved_on: date | None = None  # "resolved": the abatement (or recorded) date
    resolved_how: str = ""  # "abatement" | "recorded"


@dataclass(frozen=True)
class OperationTime:
    """The operation time of an episode, where it came from, and what was not used (why)."""

    minutes: float | None
    source: str = ""  # "observation" | "period" | ""
    observation: ObservationFact | None = None
    period_minutes: float | None = None  # the period's length, also when it was not used
    period_not_used: str = ""  # "stay" (longer than 12 hours) | "range" (outside the valid range)


class Story:
    """The patient's story, built from one PatientRecord (see the module docstring)."""

    def __init__(self, record: PatientRecord) -> None:
        self.record = record
        self.episodes: dict[str, tuple[Episode, ...]] = {
            concept: _episodes(concept, facts, record.today) for concept, facts in record.procedures.items()
        }

    # -- operations ----------------------------------------------------------------------------
    def operations(self, concept: str, condition: str | None = None) -> list[Episode]:
        """The operations of a treatment done for the condition (None: any), oldest first,
        undated last."""
        return [e for e in self.episodes.get(concept, ()) if e.treats(condition)]

    def latest(self, concept: str, condition: str | None = None) -> Episode | None:
        """The latest dated operation; an undated one only when none has a date."""
        found = self.operations(concept, condition)
        dated = [e for e in found if e.fact.performed is not None]
        if dated:
            return dated[-1]
        return found[0] if found else None

    def count(self, concept: str, condition: str | None = None) -> int:
        return len(self.operations(concept, condition))

    def episode_of(self, fact: ProcedureFact | None) -> Episode | None:
        if fact is None:
            return None
        for episodes in self.episodes.values():
            for e in episodes:
                if e.fact is fact or fact in e.records:
                    return e
        return None

    def not_for(self, concept: str, condition: str) -> list[Episode]:
        """Operations of the treatment whose stated reason is another condition."""
        return [e for e in self.episodes.get(concept, ()) if not e.treats(condition)]

    def set_aside(self, concepts: tuple[str, ...]) -> list[SetAsideProcedure]:
        return [s for s in self.record.set_aside if s.match.concept in concepts]

    def treatments_after(
        self, fact: ProcedureFact | None, concepts: tuple[str, ...], condition: str | None = None
    ) -> list[Episode]:
        """Operations of the treatments placed after the given one (by instant with times of
        day, else a later day), oldest first."""
        start = fact.performed if fact is not None else None
        if start is None:
            return []
        later = [
            e
            for concept in concepts
            for e in self.operations(concept, condition)
            if e.fact is not fact and fact not in e.records and placed_after(e.fact.performed, start) is True
        ]
        # (placed_after(...) is True above: each of them is dated)
        return sorted(later, key=lambda e: instant_of(cast(datetime, e.fact.performed)))

    # -- conditions ----------------------------------------------------------------------------
    def course(self, concept: str, fact: ProcedureFact | None) -> Course:
        """Where the condition stands relative to the operation (see Course)."""
        record = self.record
        active = record.active_conditions(concept)
        if fact is None or fact.performed is None:
            return Course("undated", _earliest(active)) if active else Course("none")
        after = record.conditions_after(concept, fact)
        if after:  # the first entry after it: when the spasm was recorded again
            return Course("after", _earliest(after))
        unplaced = record.conditions_unplaced(concept, fact)
        if unplaced:
            return Course("unplaced", _earliest(unplaced))
        if active:
            return Course("ongoing", _earliest(active))
        resolved = self.resolved_after(concept, fact)
        if resolved is not None:
            return resolved
        return Course("none")

    def resolved_after(self, concept: str, fact: ProcedureFact) -> Course | None:
        """An entry of the condition that ended after the operation's day: an abatement date
        after it, else a resolved (inactive, remission) status recorded after it."""
        day = day_of(cast(datetime, fact.performed))  # course() asks for a dated operation only
        found: list[tuple[date, str, ConditionFact]] = []
        for c in self.record.conditions.get(concept, ()):
            if c.is_active:
                continue
            if c.abatement is not None:
                if day < c.abatement <= self.record.today:  # an end dated after the call is not used
                    found.append((c.abatement, "abatement", c))
            elif c.clinical_status in RESOLVED_STATUSES and c.recorded is not None and c.recorded > day:
                found.append((c.recorded, "recorded", c))
        if not found:
            return None
        on, how, c = max(found, key=lambda x: x[0])
        return Course("resolved", c, resolved_on=on, resolved_how=how)


def story_of(record: PatientRecord) -> Story:
    """The record's story, built on first use and kept on the record for the rest of the call."""
    story = record.story_cache
    if not isinstance(story, Story):
        story = Story(record)
        record.story_cache = story
    return story


def operation_time(record: PatientRecord, fact: ProcedureFact | None, concept: str) -> OperationTime:
    """The operation time of the operation (the bedside and `learn` read it here, alike).

    An operation-time Observation dated on the operation's day wins (the newest with a
    number; one without a number is skipped); else the period of the operation, unless it
    is longer than 12 hours (a stay) or outside the concept's valid range."""
    if fact is None:
        return OperationTime(None)
    low, high = record.ranges.get(concept, (None, None))
    period = fact.duration_minutes
    if fact.performed is not None:
        pday = day_of(fact.performed)
        for obs in record.observations_for(concept):
            if obs.effective is not None and day_of(obs.effective) == pday and _is_number(obs.value):
                return OperationTime(float(obs.value), "observation", obs, period_minutes=period)
    if period is None:
        return OperationTime(None)
    if period > STAY_MINUTES:
        return OperationTime(None, period_minutes=period, period_not_used="stay")
    if (low is not None and period < low) or (high is not None and period > high):
        return OperationTime(None, period_minutes=period, period_not_used="range")
    return OperationTime(period, "period", period_minutes=period)


# ------------------------------------------------------------------------------ building
def _episodes(concept: str, facts: list[ProcedureFact], today: date) -> tuple[Episode, ...]:
    """The operations of one treatment: completed records not dated after today, merged by
    day (oldest first); undated records cannot be merged and stay one episode each."""
    done = [f for f in facts if f.status == "completed" and (f.performed is None or day_of(f.performed) <= today)]
    by_day: dict[date, list[ProcedureFact]] = {}
    undated: list[ProcedureFact] = []
    for f in done:
        if f.performed is None:
            undated.append(f)
        else:
            by_day.setdefault(day_of(f.performed), []).append(f)
    out = [_merge(concept, tuple(records)) for _, records in sorted(by_day.items())]
    out += [Episode(concept, f, (f,)) for f in undated]
    return tuple(out)


def _merge(concept: str, records: tuple[ProcedureFact, ...]) -> Episode:
    if len(records) == 1:
        return Episode(concept, records[0], records)
    # The operating-room record gives the times: one with a period, else one with a time of day.
    ranked = sorted(records, key=lambda r: (r.start is None or r.end is None, not _has_time(r), _sort_key(r)))
    first = ranked[0]
    stated = [r for r in records if r.reason_stated]
    merged = replace(
        first,
        reason_stated=bool(stated),
        reason_concepts=frozenset().union(*(r.reason_concepts for r in stated)) if stated else frozenset(),
        reason_text=next((r.reason_text for r in ranked if r.reason_text), None),
        reason_unreadable=all(r.reason_unreadable for r in records),
        body_site=next((r.body_site for r in ranked if r.body_site), None),
        laterality=next((r.laterality for r in ranked if r.laterality), None),
    )
    return Episode(concept, merged, records)


def _has_time(fact: ProcedureFact) -> bool:
    return fact.performed is not None and has_time(fact.performed)


def _sort_key(fact: ProcedureFact) -> tuple[Any, ...]:
    m = fact.match
    return (m.by_text, m.system or "", m.code or "")


def _earliest(facts: list[ConditionFact]) -> ConditionFact | None:
    """The earliest entry (by onset, else recorded date); ties broken by the entry's other
    fields, so the order the resources came in never matters."""
    return min(facts, key=condition_order) if facts else None


def condition_order(c: ConditionFact) -> tuple[Any, ...]:
    return (
        c.onset or c.recorded or date.max,
        c.recorded or date.max,
        c.clinical_status or "",
        c.abatement or date.max,
        c.match.system or "",
        c.match.code or "",
    )


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------ how it was read
def reading_notes(story: Story, concepts: frozenset[str] | set[str], condition: str | None) -> list[dict[str, Any]]:
    """How each operation of these treatments was read, for the evidence page: which records
    were merged into one operation, which were set aside and why, which were done for another
    condition. Carries no identifiers; codes and dates only."""
    labels = story.record.labels
    out: list[dict[str, Any]] = []
    for concept in sorted(c for c in concepts if c in story.episodes):
        name = labels.get(concept, concept)
        for e in story.episodes[concept]:
            when = e.day.isoformat() if e.day else "date not recorded"
            codes = ", ".join(dict.fromkeys(_code_words(r) for r in e.records))
            if len(e.records) > 1:
                how = f"{len(e.records)} records of the same day merged into one operation ({codes})"
                if e.fact.start is not None and e.fact.end is not None:
                    how += "; its times are those of the record with a start and an end"
            else:
                how = f"one record ({codes})"
            if condition is not None and not e.treats(condition):
                how += f"; its stated reason ({e.fact.reason_text or 'another condition'}) is another condition: not counted as a treatment of {labels.get(condition, condition).lower()}"
            elif e.fact.reason_stated:
                how += f"; stated reason: {e.fact.reason_text or labels.get(condition or '', 'recorded')}"
            elif e.fact.reason_unreadable:
                how += "; its stated reason could not be read, so it is taken as for this condition"
            if e.fact.body_site:
                how += f"; body site: {e.fact.body_site}"
            out.append({"fact": f"{name} on {when}", "how": how})
    for s in story.record.set_aside:
        if s.match.concept in concepts:
            when = s.day.isoformat() if s.day else "date not recorded"
            out.append(
                {
                    "fact": f"{labels.get(s.match.concept, s.match.concept)} on {when}",
                    "how": f"set aside: its status is {s.status} (not a completed operation)",
                }
            )
    return out


def _code_words(fact: ProcedureFact) -> str:
    m = fact.match
    if m.by_text:
        return f'text "{m.display}"'
    return f"code {m.code}" + (f" {m.display}" if m.display else "")
