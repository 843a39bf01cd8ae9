"""Resources through `learn`'s staging as an export delivers them: each one an NDJSON line,
decoded once (fhir/decode.py `Line`), filed by its patient, stored and read back decoded."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson

from cds_service.learning.staging import Staging, line_decoding


def line_of(resource: dict) -> Mapping[str, Any]:
    """One exported line decoded (a well-formed resource always decodes)."""
    decoded = line_decoding().resource(orjson.dumps(resource))
    assert decoded is not None, "a JSON object must take the decoded path"
    return decoded


def filed(resources: Iterable[dict], patient_id: str) -> list[dict]:
    """The resources with the patient reference an export gives them (a test chart's
    resources may leave it out where the record does not read it)."""
    out = []
    for r in resources:
        if r.get("resourceType") not in ("Patient", "Medication") and "subject" not in r and "patient" not in r:
            r = {**r, "subject": {"reference": f"Patient/{patient_id}"}}
        out.append(r)
    return out


def staged(resources: Iterable[dict], folder: Path | None = None) -> list[list[Mapping[str, Any]]]:
    """Each patient's resources as `learn` reads them back from its staging."""
    with Staging(folder) as staging:
        for resource in resources:
            staging.add(line_of(resource))
        return list(staging.patients())


def staged_patient(resources: list[dict], folder: Path | None = None) -> list[Mapping[str, Any]]:
    """One chart's resources (its Patient first) as `learn` reads them back."""
    patient_id = resources[0]["id"]
    (patient,) = staged(filed(resources, patient_id), folder)
    return patient
