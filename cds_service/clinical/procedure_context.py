"""Reading what a Procedure (or a draft order) says about itself beyond its code and date:
its stated reason (`reasonCode`, `reasonReference`) and its body site (`bodySite`).

These elements are read tolerantly, as the reading rules ask (EVIDENCE.md "Reading the
record"): an element of the wrong shape makes only that input unreadable (the reason is
then "not readable" and the existing rule stands, as if none were stated), never the
whole resource. Nothing here knows about HTTP or card models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cds_service.clinical.fhir_elements import as_list, short_text, type_and_id
from cds_service.terminology.concept_index import ConceptIndex

__all__ = ["ConditionIndex", "StatedReason", "read_body_site", "read_reason"]

CONDITION_KINDS = frozenset({"condition"})
_LATERALITY = (("bilateral", "bilateral"), ("both", "bilateral"), ("left", "left"), ("right", "right"))


@dataclass(frozen=True)
class StatedReason:
    stated: bool = False  # a reason is stated (readable)
    concepts: frozenset[str] = frozenset()  # the condition concepts it names
    text: str | None = None  # as written, shortened (for the evidence page)
    unreadable: bool = False  # reasonCode / reasonReference present but of the wrong shape


class ConditionIndex:
    """Condition resources by "Condition/id" and by fullUrl, for reasonReference: built on
    the first look-up only (most calls state no reason by reference; the hot path does not
    pay for an index it never reads)."""

    def __init__(self, resources: list[tuple[Mapping[str, Any], str | None]]) -> None:
        self._resources = resources
        self._index: dict[str, Mapping[str, Any]] | None = None

    def get(self, key: str) -> Mapping[str, Any] | None:
        if self._index is None:
            self._index = {}
            for resource, full_url in self._resources:
                if resource.get("resourceType") != "Condition":
                    continue
                rid = resource.get("id")
                if isinstance(rid, str):
                    self._index.setdefault(f"Condition/{rid}", resource)
                if full_url:
                    self._index.setdefault(full_url, resource)
        return self._index.get(key)


def read_reason(resource: Mapping[str, Any], concepts: ConceptIndex, conditions: ConditionIndex | None) -> StatedReason:
    """The stated reason of a Procedure / ServiceRequest: which condition concepts it names.

    A reasonCode that names no concept the service knows is still a stated reason (another
    condition). A reasonReference to a Condition that is not in the data received cannot be
    read: the reason is then unknown (not "another condition")."""
    if "reasonCode" not in resource and "reasonReference" not in resource:
        return _NONE
    found: set[str] = set()
    texts: list[str] = []
    stated = unreadable = False
    raw_codes = resource.get("reasonCode")
    if raw_codes is not None:
        items = raw_codes if isinstance(raw_codes, list) else [raw_codes]
        for codeable in items:
            if not isinstance(codeable, dict):
                unreadable = True
                continue
            text = _text_of(codeable)
            if text is None and not concepts.match_codeable(codeable, CONDITION_KINDS):
                unreadable = True
                continue
            stated = True
            found.update(m.concept for m in concepts.match_codeable(codeable, CONDITION_KINDS))
            if text:
                texts.append(text)
    raw_refs = resource.get("reasonReference")
    if raw_refs is not None:
        items = raw_refs if isinstance(raw_refs, list) else [raw_refs]
        for ref in items:
            target = _resolve(ref, resource, conditions)
            if target is None:
                unreadable = True
                continue
            stated = True
            code = target.get("code")
            found.update(m.concept for m in concepts.match_codeable(code, CONDITION_KINDS))
            text = _text_of(code) if isinstance(code, dict) else None
            if text:
                texts.append(text)
    return StatedReason(
        stated=stated,
        concepts=frozenset(found),
        text=short_text("; ".join(dict.fromkeys(texts))) if texts else None,
        unreadable=unreadable and not stated,
    )


_NONE = StatedReason()


def read_body_site(resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The body site as text (the first readable one) and the laterality its words give."""
    for codeable in as_list(resource.get("bodySite")) or (
        [resource["bodySite"]] if isinstance(resource.get("bodySite"), dict) else []
    ):
        if not isinstance(codeable, dict):
            continue
        text = _text_of(codeable)
        if text:
            words = text.lower().replace(",", " ").replace("-", " ").split()
            side = next((side for word, side in _LATERALITY if word in words), None)
            return short_text(text), side
    return None, None


def _text_of(codeable: Mapping[str, Any]) -> str | None:
    text = codeable.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    for coding in as_list(codeable.get("coding")):
        if isinstance(coding, dict):
            display = coding.get("display")
            if isinstance(display, str) and display.strip():
                return display.strip()
            code = coding.get("code")
            if isinstance(code, str) and code.strip():
                return code.strip()
    return None


def _resolve(ref: object, resource: Mapping[str, Any], conditions: ConditionIndex | None) -> Mapping[str, Any] | None:
    if not isinstance(ref, dict):
        return None
    reference = ref.get("reference")
    if not isinstance(reference, str) or not reference:
        return None
    if reference.startswith("#"):
        for contained in as_list(resource.get("contained")):
            if (
                isinstance(contained, dict)
                and contained.get("resourceType") == "Condition"
                and contained.get("id") == reference[1:]
            ):
                return contained
        return None
    if conditions is None:
        return None
    return conditions.get(reference) or conditions.get(type_and_id(reference))
