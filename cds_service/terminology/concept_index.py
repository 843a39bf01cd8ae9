"""Concept matching: which clinical concepts (cards/concepts.toml) a coded element names.

A ConceptIndex is built once at start-up (concepts.load_concepts) and answers, for raw
FHIR JSON, "which concepts does this CodeableConcept name?" with dictionary look-ups:
- (system, code) exactly; code system aliases (e.g. an OID for SNOMED CT) count as the
  system itself;
- ICD-10 codes (code systems with `code_format = "icd-10"`) compared without dots and
  case-insensitively ("G51.3" = "g513"), and families by prefix (`match = "prefix"`);
- free-text patterns (CodeableConcept.text and coding.display), only for concepts whose
  entry in concepts.toml lists `text`; such a match is marked `by_text=True`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from cds_service.formatting import number

ICD10_FORMAT = "icd-10"
KINDS = ("condition", "procedure", "medication", "observation", "body_site")
VALUE_KINDS = ("quantity", "ordinal", "count", "coded", "boolean")

# Free text longer than this is only searched in its first part: a medication name sits at
# the start, and it bounds the work an oversized string can cause.
TEXT_SEARCH_LIMIT = 4096
_SHOWN_TEXT_LIMIT = 120


@dataclass(frozen=True)
class Match:
    """How a resource was matched to a concept: the coding (or text) that matched."""

    concept: str  # concept id from cards/concepts.toml
    system: str | None  # code system URI, None when matched by text
    code: str | None
    display: str | None  # display of the matching coding, or the matched text
    by_text: bool = False  # True when only the free text matched


@dataclass(frozen=True)
class CodeSystem:
    alias: str  # short key used in concepts.toml ("icd10cm")
    uri: str  # canonical URI
    name: str  # short name shown on cards ("ICD-10-CM")
    aliases: tuple[str, ...] = ()  # other URIs meaning the same system (OIDs)
    code_format: str | None = None  # "icd-10": dots and case ignored; prefix families allowed
    local: bool = False  # the project's own CodeSystem


@dataclass(frozen=True)
class ConceptCode:
    system: str  # canonical URI
    code: str
    display: str | None = None
    prefix: bool = False  # ICD-10 family: every code starting with `code`
    checked: bool | None = None  # description confirmed against an official release
    site: bool = False  # added by the deployment's site overlay
    value_set: str | None = None  # oid or url of the concept's value set it was read from


@dataclass(frozen=True)
class ValueSet:
    """Provenance of a concept's codes: the published value set expansion they were read from."""

    name: str
    oid: str | None
    url: str | None
    version: str
    expansion_date: date
    source: str  # where the expansion was read
    note: str | None = None


@dataclass(frozen=True)
class Answer:
    """One allowed answer of a coded or boolean observation."""

    value: str | bool
    label: str
    codes: tuple[ConceptCode, ...] = ()
    texts: tuple[str, ...] = ()  # whole-text matches, case-insensitive ("persisted")


@dataclass(frozen=True)
class ValueSpec:
    kind: str  # quantity | ordinal | count | coded | boolean
    unit: str | None = None  # canonical UCUM unit (quantity)
    low: float | None = None  # valid range, inclusive
    high: float | None = None
    answers: tuple[Answer, ...] = ()

    def in_range(self, number: float) -> bool:
        return (self.low is None or number >= self.low) and (self.high is None or number <= self.high)

    def range_text(self) -> str:
        unit = f" {self.unit}" if self.unit and not self.unit.startswith("{") and self.unit != "1" else ""
        return f"{_num(self.low)}-{_num(self.high)}{unit}"


@dataclass(frozen=True)
class Concept:
    id: str
    label: str
    kind: str  # condition | procedure | medication | observation | body_site
    codes: tuple[ConceptCode, ...]
    text: tuple[str, ...] = ()  # free-text phrases (word-bounded, case-insensitive)
    value: ValueSpec | None = None  # observations only
    value_sets: tuple[ValueSet, ...] = ()  # where the codes were read (provenance)
    intraoperative: bool = False  # observations taken during a procedure (on its day, they belong to it)


def normalise_icd10(code: str) -> str:
    return "".join(code.split()).replace(".", "").upper()


def text_pattern(phrases: Iterable[str]) -> re.Pattern[str]:
    """Phrases -> one case-insensitive, word-bounded regex; blanks match any whitespace."""
    parts = [r"\s+".join(re.escape(word) for word in phrase.split()) for phrase in phrases]
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)", re.IGNORECASE)


class ConceptIndex:
    """All concepts, with the look-up tables for matching raw FHIR JSON."""

    def __init__(self, concepts: Mapping[str, Concept], systems: Mapping[str, CodeSystem]) -> None:
        self.concepts: dict[str, Concept] = dict(concepts)
        self.systems: dict[str, CodeSystem] = dict(systems)
        self._canonical: dict[str, str] = {}  # any known URI -> canonical URI
        self._names: dict[str, str] = {}
        icd_uris: set[str] = set()
        for system in self.systems.values():
            for uri in (system.uri, *system.aliases):
                self._canonical[uri] = system.uri
            self._names[system.uri] = system.name
            if system.code_format == ICD10_FORMAT:
                icd_uris.update((system.uri, *system.aliases))
        self._icd_uris = frozenset(icd_uris)
        self.local_system: str | None = next((s.uri for s in self.systems.values() if s.local), None)

        exact: dict[tuple[str, str], list[str]] = {}
        prefix: dict[tuple[str, str], list[str]] = {}
        prefix_lengths: dict[str, set[int]] = {}
        for concept in self.concepts.values():
            for c in concept.codes:
                key_code = self._key_code(c.system, c.code)
                for uri in self._uris_of(c.system):
                    table = prefix if c.prefix else exact
                    ids = table.setdefault((uri, key_code), [])
                    if concept.id not in ids:
                        ids.append(concept.id)
                    if c.prefix:
                        prefix_lengths.setdefault(uri, set()).add(len(key_code))
        self._exact = {k: tuple(v) for k, v in exact.items()}
        self._prefix = {k: tuple(v) for k, v in prefix.items()}
        self._prefix_lengths = {k: tuple(sorted(v)) for k, v in prefix_lengths.items()}
        self._kind = {c.id: c.kind for c in self.concepts.values()}
        # Observation concepts taken during a procedure (`intraoperative`), for the record.
        self.intraoperative = frozenset(c.id for c in self.concepts.values() if c.intraoperative)
        # The valid range of each numeric concept, for the record (an operation time read from a
        # Procedure's period is held to the same range as one recorded as an Observation).
        self.ranges: dict[str, tuple[float | None, float | None]] = {
            c.id: (c.value.low, c.value.high)
            for c in self.concepts.values()
            if c.value is not None and (c.value.low is not None or c.value.high is not None)
        }
        self.labels: dict[str, str] = {c.id: c.label for c in self.concepts.values()}
        self._text = tuple((c.id, c.kind, text_pattern(c.text)) for c in self.concepts.values() if c.text)
        self._text_kinds = frozenset(kind for _, kind, _ in self._text)
        self._answers: dict[str, tuple[dict[tuple[str, str], Answer], dict[str, Answer]]] = {}
        for concept in self.concepts.values():
            if concept.value and concept.value.answers:
                by_code: dict[tuple[str, str], Answer] = {}
                by_text: dict[str, Answer] = {}
                for answer in concept.value.answers:
                    for c in answer.codes:
                        for uri in self._uris_of(c.system):
                            by_code[(uri, self._key_code(c.system, c.code))] = answer
                    for t in answer.texts:
                        by_text[_fold(t)] = answer
                self._answers[concept.id] = (by_code, by_text)

    # -- reading the content -------------------------------------------------------------
    def concept(self, concept_id: str) -> Concept:
        return self.concepts[concept_id]

    def __contains__(self, concept_id: object) -> bool:
        return concept_id in self.concepts

    def ids(self, kind: str | None = None) -> tuple[str, ...]:
        return tuple(c.id for c in self.concepts.values() if kind is None or c.kind == kind)

    def system_name(self, uri: str | None) -> str:
        """Short name of a code system for display ("ICD-10-CM"); the URI if unknown."""
        if uri is None:
            return "text"
        return self._names.get(self._canonical.get(uri, uri), uri)

    def format_code(self, system: str | None, code: str | None) -> str:
        """ "ICD-10-CM G51.3" for a card's list of what was matched."""
        if code is None:
            return self.system_name(system)
        return f"{self.system_name(system)} {code}"

    def code_display(self, concept_id: str, system: str | None, code: str | None) -> str:
        """How the concepts file names a matched code: the code's display there (an exact code
        of the concept), else the concept's label. For a coding the sender left without text."""
        concept = self.concepts.get(concept_id)
        if concept is None:
            return ""
        if system is not None and code is not None:
            canonical = self._canonical.get(system, system)
            key = self._key_code(canonical, code)
            for c in concept.codes:
                if c.display and not c.prefix and c.system == canonical and self._key_code(c.system, c.code) == key:
                    return c.display
        return concept.label

    # -- matching ------------------------------------------------------------------------
    def lookup(self, system: str, code: str) -> tuple[str, ...]:
        """Concept ids a single (system, code) belongs to, regardless of kind."""
        if system in self._icd_uris:
            norm = normalise_icd10(code)
            hits = list(self._exact.get((system, norm), ()))
            for length in self._prefix_lengths.get(system, ()):
                if length > len(norm):
                    break
                hits.extend(self._prefix.get((system, norm[:length]), ()))
            return tuple(dict.fromkeys(hits))
        return self._exact.get((system, code), ())

    def match_codeable(self, codeable: object, kinds: frozenset[str] | Iterable[str]) -> list[Match]:
        """Concepts of the given kinds that a raw CodeableConcept names; [] for junk."""
        if type(codeable) is not dict:
            return []
        if type(kinds) is not frozenset:
            kinds = frozenset(kinds)
        found: dict[str, Match] | None = None
        codings = codeable.get("coding")
        if type(codings) is list:
            for coding in codings:
                if type(coding) is not dict:
                    continue
                system = coding.get("system")
                code = coding.get("code")
                if type(system) is not str or type(code) is not str:
                    continue
                if system in self._icd_uris:
                    ids = self.lookup(system, code)
                else:
                    exact = self._exact.get((system, code))
                    if exact is None:
                        continue
                    ids = exact
                for concept_id in ids:
                    if self._kind[concept_id] not in kinds or (found and concept_id in found):
                        continue
                    display = coding.get("display")
                    if found is None:
                        found = {}
                    found[concept_id] = Match(
                        concept=concept_id,
                        system=self._canonical.get(system, system),
                        code=code,
                        display=display if isinstance(display, str) else None,
                    )
        if self._text and not kinds.isdisjoint(self._text_kinds):
            texts = _texts_of(codeable, codings)
            if texts:
                for concept_id, kind, pattern in self._text:
                    if kind not in kinds or (found and concept_id in found):
                        continue
                    for text in texts:
                        if pattern.search(text, 0, TEXT_SEARCH_LIMIT):
                            if found is None:
                                found = {}
                            found[concept_id] = Match(
                                concept=concept_id,
                                system=None,
                                code=None,
                                display=_shown(text),
                                by_text=True,
                            )
                            break
        return list(found.values()) if found else []

    def match_answer(self, concept_id: str, value: object) -> Answer | None:
        """The answer of a coded/boolean concept that a raw value names.

        `value` is a CodeableConcept (codes first, then its text / displays as whole-text
        matches) or a string (whole-text match). None when nothing matches.
        """
        tables = self._answers.get(concept_id)
        if tables is None:
            return None
        by_code, by_text = tables
        if isinstance(value, str):
            return by_text.get(_fold(value[:TEXT_SEARCH_LIMIT]))
        if not isinstance(value, dict):
            return None
        codings = value.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                if not isinstance(coding, dict):
                    continue
                system, code = coding.get("system"), coding.get("code")
                if isinstance(system, str) and isinstance(code, str):
                    answer = by_code.get((system, self._key_code(system, code)))
                    if answer is not None:
                        return answer
        for text in _texts_of(value, codings):
            answer = by_text.get(_fold(text[:TEXT_SEARCH_LIMIT]))
            if answer is not None:
                return answer
        return None

    # -- internals -----------------------------------------------------------------------
    def search_codes(self, kind: str) -> tuple[tuple[str, str], ...] | None:
        """(system URI, code) of every concept of `kind`, each system under each of its URIs,
        site codes included: what a FHIR search by token asks for. None when the concepts
        of that kind cannot all be found by code (a free-text phrase or an ICD-10 family)."""
        out: dict[tuple[str, str], None] = {}
        for concept in self.concepts.values():
            if concept.kind != kind:
                continue
            if concept.text or any(c.prefix for c in concept.codes):
                return None
            for c in concept.codes:
                for uri in self._uris_of(c.system):
                    out.setdefault((uri, c.code.strip()))
        return tuple(out) or None

    def _uris_of(self, canonical: str) -> tuple[str, ...]:
        for system in self.systems.values():
            if system.uri == canonical:
                return (system.uri, *system.aliases)
        return (canonical,)

    def is_icd10(self, system: str) -> bool:
        """Whether codes of this system are matched after normalising their spelling (ICD-10)."""
        return system in self._icd_uris

    def _key_code(self, system: str, code: str) -> str:
        if system in self._icd_uris:
            return normalise_icd10(code)
        return code.strip()


def _texts_of(codeable: dict[str, Any], codings: object) -> list[str]:
    texts = []
    text = codeable.get("text")
    if isinstance(text, str) and text:
        texts.append(text)
    if isinstance(codings, list):
        for coding in codings:
            if isinstance(coding, dict):
                display = coding.get("display")
                if isinstance(display, str) and display:
                    texts.append(display)
    return texts


def _fold(text: str) -> str:
    return " ".join(text.split()).strip(" .").casefold()


def _shown(text: str) -> str:
    text = " ".join(text[:TEXT_SEARCH_LIMIT].split())
    return text if len(text) <= _SHOWN_TEXT_LIMIT else text[: _SHOWN_TEXT_LIMIT - 1] + "\u2026"


def _num(x: float | None) -> str:
    return number(x)
