"""Collecting the resources of one hook call from prefetched or fetched FHIR data: the
resource types the record reads, Bundles unpacked one level, de-duplicated by type and id;
and the Medication resources a request may reference. Split from record_build.py (which
reads the collected resources into facts); nothing here reads an element beyond the type,
id and fullUrl.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard, cast

__all__ = ["READ_TYPES", "collect", "medication_index"]


READ_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "Procedure",
        "Observation",
        "MedicationRequest",
        "MedicationStatement",
        "Medication",
        "ServiceRequest",
    }
)


def _is_object(value: object) -> TypeGuard[Mapping[str, Any]]:
    """A JSON object: a dict, or a resource decoded with only its read elements (fhir/decode.py,
    which marks its classes; an isinstance check against Mapping costs more than the read)."""
    return type(value) is dict or getattr(type(value), "json_object", False) is True


def collect(sources: Iterable[object]) -> list[tuple[Mapping[str, Any], str | None]]:
    """The resources of the types the record reads, from the sources (Bundles unpacked one
    level), de-duplicated by type+id (the first one wins)."""
    out: list[tuple[Mapping[str, Any], str | None]] = []
    seen: set[tuple[str, str]] = set()
    read_types = READ_TYPES
    for source in sources:
        if not _is_object(source):
            continue
        if source.get("resourceType") == "Bundle":
            entries = source.get("entry")
            if type(entries) is not list:
                continue
        else:
            entries = ({"resource": source},)
        # One flat loop: this runs for every resource of the call (hundreds in a real chart).
        # A decoded entry or resource (fhir/decode.py) is read by attribute: its elements are
        # attributes (UNSET, not an object, when not sent), its resourceType its class's tag.
        for entry in entries:
            if type(entry) is dict:
                resource = entry.get("resource")
                full_url = entry.get("fullUrl")
            elif getattr(type(entry), "json_object", False) is True:
                resource = getattr(entry, "resource", None)
                full_url = getattr(entry, "fullUrl", None)
            else:
                continue
            if type(resource) is dict:
                kind = resource.get("resourceType")
                rid = resource.get("id")
            elif getattr(type(resource), "json_object", False) is True:
                kind = getattr(resource, "resourceType", None)
                rid = getattr(resource, "id", None)
            else:
                continue
            if type(kind) is not str or kind not in read_types:
                continue
            if type(rid) is str:
                key = (kind, rid)
                if key in seen:
                    continue
                seen.add(key)
            out.append((cast(Mapping[str, Any], resource), full_url if type(full_url) is str else None))
    return out


def medication_index(resources: list[tuple[Mapping[str, Any], str | None]]) -> dict[str, Mapping[str, Any]]:
    index: dict[str, Mapping[str, Any]] = {}
    for resource, full_url in resources:
        if resource.get("resourceType") != "Medication":
            continue
        rid = resource.get("id")
        if isinstance(rid, str):
            index.setdefault(f"Medication/{rid}", resource)
        if full_url:
            index.setdefault(full_url, resource)
    return index
