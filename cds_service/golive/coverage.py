"""`cds-service coverage --fhir-server URL`: the codes on the site's records that the
concepts do not recognise but probably should, and a draft site overlay for a person to
review.

With the same Bulk Data / SMART Backend Services access as `learn`, it reads the coded
resource types the cards read (Condition, Procedure, Observation, MedicationRequest,
MedicationStatement; no Patient resource), one patient at a time from an on-disk staging
file, and keeps only the patients with hemifacial spasm or a vertebral (bone) metastasis,
found by the concepts' codes or by a condition whose text names them. On those patients'
records each coding the concepts do not recognise is proposed for a concept when
- it sits in the same CodeableConcept as a coding of that concept (`co-occurrence`), or
- its display or the element's text names the concept (`text`: the concept's text phrases,
  its label or one of its code displays, word for word).
Every proposal comes with the number of records and of patients that carry it and its
displays; nothing written names a patient or a resource (no ids, no dates, no values).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cds_service.fhir.bulk import BulkClient, BulkError
from cds_service.learning.staging import Staging, line_decoding
from cds_service.terminology.concept_index import ConceptIndex

TYPES = ("Condition", "Procedure", "Observation", "MedicationRequest", "MedicationStatement")
_ELEMENT = {
    "Condition": ("code", "condition"),
    "Procedure": ("code", "procedure"),
    "Observation": ("code", "observation"),
    "MedicationRequest": ("medicationCodeableConcept", "medication"),
    "MedicationStatement": ("medicationCodeableConcept", "medication"),
}
COHORT_CONCEPTS = ("hemifacial_spasm", "vertebral_metastasis")
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset({"of", "the", "and", "or", "a", "an", "for", "with", "to", "in", "on", "by"})
MAX_DISPLAYS = 3


class TokenSource(Protocol):
    """The FHIR server's access (security/smart_backend.py BackendTokenSource or StaticBearer)."""

    def authorization(self) -> str: ...

    def invalidate(self) -> None: ...


class CoverageError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Proposal:
    concept: str
    system: str
    code: str
    how: set[str] = field(default_factory=set)  # "co-occurrence", "text"
    records: int = 0
    patients: int = 0
    displays: Counter[str] = field(default_factory=Counter)


@dataclass
class CoverageResult:
    patients_read: int
    cohort: dict[str, int]  # concept -> patients
    proposals: list[Proposal]


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in _WORD.findall(text.casefold()) if w not in _STOP)


class Proposer:
    """Which concept an unrecognised coding probably means (by text or co-occurrence)."""

    def __init__(self, concepts: ConceptIndex) -> None:
        self.index = concepts
        self.names: dict[str, list[frozenset[str]]] = {}
        for concept_id in concepts.ids():
            concept = concepts.concept(concept_id)
            phrases = [concept.label, *concept.text, *(c.display for c in concept.codes if c.display)]
            self.names[concept_id] = [w for w in (_words(p.split("(")[0]) for p in phrases) if len(w) >= 2]

    def by_text(self, text: str, kind: str) -> set[str]:
        words = _words(text)
        return {
            cid
            for cid, names in self.names.items()
            if self.index.concept(cid).kind == kind and any(name <= words for name in names)
        }


def coded_elements(resource: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, CodeableConcept) of a resource the cards read; nothing for other resources."""
    resource_type = resource.get("resourceType")
    read = _ELEMENT.get(resource_type) if isinstance(resource_type, str) else None
    if read is None:
        return
    element, kind = read
    value = resource.get(element)
    if isinstance(value, dict):
        yield kind, value


def review_patient(
    resources: list[Mapping[str, Any]], concepts: ConceptIndex, proposer: Proposer
) -> tuple[set[str], dict[tuple[str, str, str], tuple[set[str], Counter[str]]]]:
    """The cohort concepts of one patient and the proposals on their records:
    (concept, system, code) -> (how, displays with their record counts)."""
    cohort: set[str] = set()
    found: dict[tuple[str, str, str], tuple[set[str], Counter[str]]] = {}
    for resource in resources:
        for kind, codeable in coded_elements(resource):
            recognised = {m.concept for m in concepts.match_codeable(codeable, {kind}) if not m.by_text}
            raw_text = codeable.get("text")
            text = raw_text if isinstance(raw_text, str) else ""
            codings = [c for c in codeable.get("coding") or () if isinstance(c, dict)]
            for coding in codings:
                system, code = coding.get("system"), coding.get("code")
                if not isinstance(system, str) or not isinstance(code, str) or concepts.lookup(system, code):
                    continue
                raw_display = coding.get("display")
                display = raw_display if isinstance(raw_display, str) else ""
                guesses = {cid: {"co-occurrence"} for cid in recognised}
                for cid in proposer.by_text(f"{display} {text}", kind):
                    guesses.setdefault(cid, set()).add("text")
                for cid, how in guesses.items():
                    entry = found.setdefault((cid, system, code), (set(), Counter()))
                    entry[0].update(how)
                    entry[1][display or text or code] += 1
            if kind == "condition":
                cohort |= recognised & set(COHORT_CONCEPTS)
                cohort |= {cid for cid in proposer.by_text(text, kind) if cid in COHORT_CONCEPTS}
                for coding in codings:
                    if isinstance(coding.get("display"), str):
                        cohort |= {cid for cid in proposer.by_text(coding["display"], kind) if cid in COHORT_CONCEPTS}
    return cohort, found


def survey(patients: Iterable[list[Mapping[str, Any]]], concepts: ConceptIndex) -> CoverageResult:
    """Aggregate the proposals over the cohort's patients (the stream gives one patient's
    resources at a time)."""
    proposer = Proposer(concepts)
    read = 0
    cohort_counts: Counter[str] = Counter()
    proposals: dict[tuple[str, str, str], Proposal] = {}
    for resources in patients:
        read += 1
        cohort, found = review_patient(resources, concepts, proposer)
        if not cohort:
            continue
        cohort_counts.update(cohort)
        for (cid, system, code), (how, displays) in found.items():
            proposal = proposals.setdefault((cid, system, code), Proposal(cid, system, code))
            proposal.how |= how
            proposal.records += sum(displays.values())
            proposal.patients += 1
            proposal.displays.update(displays)
    ordered = sorted(proposals.values(), key=lambda p: (p.concept, -p.patients, -p.records, p.system, p.code))
    return CoverageResult(patients_read=read, cohort=dict(sorted(cohort_counts.items())), proposals=ordered)


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def report_text(result: CoverageResult, fhir_base: str) -> str:
    lines = [
        f"Coverage of the concepts on {fhir_base}: {result.patients_read} patients read, "
        + ", ".join(f"{c}: {n} patients" for c, n in result.cohort.items())
        if result.cohort
        else f"Coverage of the concepts on {fhir_base}: {result.patients_read} patients read, none with "
        "hemifacial spasm or a vertebral metastasis",
    ]
    if not result.proposals:
        lines.append("No unrecognised code to propose.")
    for p in result.proposals:
        shown = "; ".join(d for d, _ in p.displays.most_common(MAX_DISPLAYS))
        lines.append(
            f"- {p.concept}: {p.system} {p.code} ({shown}): {p.records} records, {p.patients} patients; "
            f"by {' and '.join(sorted(p.how))}"
        )
    return "\n".join(lines)


def overlay_text(result: CoverageResult, fhir_base: str) -> str:
    """A draft site overlay: the proposed codes under their concepts, each commented with
    its evidence. For a person to review: nothing here is applied until it is moved into
    the deployment's site overlay."""
    lines = [
        f"# DRAFT site overlay written by `cds-service coverage` on {datetime.now(UTC):%Y-%m-%d} from {fhir_base}.",
        "# Review every code before use: delete the ones that do not mean the concept.",
    ]
    by_concept: dict[str, list[Proposal]] = defaultdict(list)
    for p in result.proposals:
        by_concept[p.concept].append(p)
    for concept, proposals in by_concept.items():
        lines += ["", f"[concepts.{concept}]", "codes = ["]
        for p in proposals:
            display = p.displays.most_common(1)[0][0] if p.displays else None
            entry = f"system = {_toml_string(p.system)}, code = {_toml_string(p.code)}"
            if display:
                entry += f", display = {_toml_string(display)}"
            evidence = f"{p.records} records, {p.patients} patients; by {' and '.join(sorted(p.how))}"
            lines.append(f"  {{ {entry} }},  # {evidence}")
        lines.append("]")
    return "\n".join(lines) + "\n"


def coverage(
    fhir_base: str,
    concepts: ConceptIndex,
    out_dir: Path,
    auth: TokenSource | None = None,
    *,
    group: str | None = None,
    prefer_bulk: bool = True,
    max_wait_s: float = 3600.0,
) -> tuple[CoverageResult, Path, Path]:
    client = BulkClient(
        fhir_base,
        auth.authorization if auth is not None else None,
        on_unauthorized=auth.invalidate if auth is not None else None,
        decoding=line_decoding(),  # each exported line decoded once, into what staging keeps
        max_wait_s=max_wait_s,
    )
    staging = Staging()
    try:
        try:
            extraction = client.extract(TYPES, group, prefer_bulk)
            for resource in extraction.resources:
                staging.add(resource)
        except BulkError as exc:
            raise CoverageError(f"extraction failed: {exc.reason}") from None
        result = survey(staging.patients(), concepts)
    finally:
        staging.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "coverage.txt"
    overlay_path = out_dir / "coverage.overlay.toml"
    report_path.write_text(report_text(result, fhir_base) + "\n", encoding="utf-8")
    overlay_path.write_text(overlay_text(result, fhir_base), encoding="utf-8")
    return result, report_path, overlay_path
