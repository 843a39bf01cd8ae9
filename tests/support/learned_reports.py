"""Small model reports as `cds-service learn` writes them (the parts the service reads), and
the overlay entry that names one: for tests of learned site models without a FHIR server."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from support.synthetic_cohort import Generator

NO_BULK = {"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}
RFA_COEFFICIENTS = {"operation_time": -0.55, "paralysis_grade_after": -0.9}

RFA_LEARNED = {
    "label": "Example Hospital learned RFA model",
    "version": "2026-11-26",
    "coefficients": RFA_COEFFICIENTS,
    "reference_label": "operation time 40 min, grade II (the training medians)",
    "coding": {"operation_time": {"scale": 10, "offset": 0}, "paralysis_grade_after": {"scale": 1, "offset": 1}},
    "reference": {"operation_time": 4.0, "paralysis_grade_after": 1.0},
    "baseline_survival": {"3": 0.8, "6": 0.65, "12": 0.35},
}


MODEL_CARD = {
    "intended_use": "RFA recurrence risk on card A",
    "intended_users": "physicians ordering RFA",
    "setting": "patients with hemifacial spasm at this site",
    "outcome_definition": "recurrence or repeat treatment",
    "missing_inputs": "complete cases; the card withholds the estimate",
    "updating_policy": "monitored; retired on drift",
}


def rfa_report(status: str = "passed", **changes) -> dict:
    report = {
        "format": "hfs-cds-site-model-report/2",
        "status": status,
        "message": "Fitted and internally validated" if status == "passed" else "Fitted, but ...",
        "card": {"id": "rfa-recurrence", "version": "1.0.0"},
        "model_card": MODEL_CARD,
        "approval": {"approved_by": "Dr A. Reviewer", "approved_at": "2026-11-27T09:00:00Z"}
        if status == "passed"
        else None,
        "model": {"kind": "cox", "outcome": "recurrence", "time_unit": "months"},
        "counts": {"included": 412, "events": 187, "patients_scanned": 900, "excluded": {}},
        "minimums": {
            "checks": [
                {"name": "events per predictor parameter", "value": 93.5, "required": ">= 10", "passed": True},
                {
                    "name": "C-statistic (optimism-corrected)",
                    "value": 0.74 if status == "passed" else 0.53,
                    "required": ">= 0.6",
                    "passed": status == "passed",
                },
            ]
        },
        "performance": {
            "c_statistic_apparent": 0.75,
            "c_statistic_optimism_corrected": 0.74 if status == "passed" else 0.53,
            "calibration_slope_apparent": 1.0,
            "calibration_slope_optimism_corrected": 0.96,
        },
        "coefficients": [
            {"predictor": name, "estimate": value, "ci_low": value - 0.2, "ci_high": value + 0.2}
            for name, value in RFA_COEFFICIENTS.items()
        ],
        "predictor_ranges": {
            "operation_time": {"n": 412, "min": 20.0, "max": 60.0, "unit": "min", "coded_min": 2.0, "coded_max": 6.0},
            "paralysis_grade_after": {"n": 412, "min": 1.0, "max": 5.0, "coded_min": 0.0, "coded_max": 4.0},
        },
        "calibration": {
            "horizon": 12,
            "groups": [
                {"n": 206, "predicted": 0.42, "observed": 0.40},
                {"n": 206, "predicted": 0.61, "observed": 0.63},
            ],
        },
        "provenance": {
            "fhir_server": "https://user:secret@fhir.example-hospital.org:8443/fhir/R4?x=1",
            "generated_at": "2026-11-26T10:00:00Z",
            "versions": {"python": "3.12"},
        },
    }
    for key, value in changes.items():
        report[key] = value
    return report


def learned_overlay(tmp_path: Path, report: dict, entry: dict | None = None, card_id: str = "rfa-recurrence") -> dict:
    """An overlay dict whose model names `report`, written to tmp_path (absolute path)."""
    path = Path(tmp_path) / f"{card_id}.report.json"
    path.write_text(json.dumps(report), encoding="utf-8")
    model = copy.deepcopy(entry if entry is not None else RFA_LEARNED)
    model["report"] = str(path)
    return {"models": {card_id: model}}


def serve_population(stub, generator: Generator) -> None:
    """The generator's patients as a FHIR server without Bulk Data (one page per type)."""
    by_type: dict[str, list[dict]] = {}
    for i, resources in enumerate(generator.population.patients):
        for j, r in enumerate(resources):
            r = {k: v for k, v in r.items() if k != "_fullUrl"}
            if r["resourceType"] == "Patient":
                r["id"] = f"p{i}"
            else:
                r["id"] = f"r{i}-{j}"
                r["subject"] = {"reference": f"Patient/p{i}"}
            by_type.setdefault(r["resourceType"], []).append(r)
    stub.expect_request("/fhir/metadata").respond_with_json(NO_BULK)
    for rtype in (
        "Patient",
        "Condition",
        "Procedure",
        "Observation",
        "Encounter",
        "MedicationRequest",
        "MedicationStatement",
    ):
        entries = [{"resource": r} for r in by_type.get(rtype, [])]
        stub.expect_request(f"/fhir/{rtype}").respond_with_json(
            {"resourceType": "Bundle", "type": "searchset", "entry": entries}
        )
