"""Complete hook requests for scenario patients, built with `support.fhir`."""

from __future__ import annotations

from support.fhir import ICD10PCS, condition, new_id, patient_view, procedure


def hfs_after_mvd_patient_view(patient_id: str) -> dict:
    """An HFS patient whose spasm resolved after an MVD about 17 months ago."""
    return patient_view(
        patient_id,
        conditions=[
            condition(
                "G51.31",
                id=new_id("cond"),
                patient=patient_id,
                status="resolved",
                verification="confirmed",
                onset="2019-05-01",
            )
        ],
        procedures=[
            procedure(
                (ICD10PCS, "00NM0ZZ"),
                "2025-06-10T08:00:00Z",
                "2025-06-10T10:10:00Z",
                id=new_id("proc"),
                patient=patient_id,
            )
        ],
    )
