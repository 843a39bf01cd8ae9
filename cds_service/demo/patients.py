"""The demo patients: FHIR collection Bundles shipped in the package, moved to today.

Each bundle is dated around its `timestamp`; `load_calls(today)` moves every date and
dateTime in it by (today - timestamp), so "7 months after the RFA" stays true whatever
the day the demo runs. Resources with status "draft" are the draft orders of an
order-select / order-sign call, not part of the chart.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from importlib import resources
from typing import Any

from cds_service.hooks import ORDER_HOOKS, SELECTING_HOOKS

_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?")


@dataclass(frozen=True)
class DemoCall:
    patient_id: str
    patient_name: str
    hook: str
    what: str
    chart: tuple[dict[str, Any], ...]  # the patient's resources (Patient first)
    drafts: tuple[dict[str, Any], ...]  # draft orders

    def request(self, user: str = "Practitioner/demo-clinician") -> dict[str, Any]:
        """The CDS Hooks request an EHR would send, with the prefetch filled in."""
        context: dict[str, Any] = {"userId": user, "patientId": self.patient_id}
        if self.hook in ORDER_HOOKS:
            context["draftOrders"] = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in self.drafts],
            }
        if self.hook in SELECTING_HOOKS:
            context["selections"] = [f"{r['resourceType']}/{r['id']}" for r in self.drafts]
        return {
            "hook": self.hook,
            "hookInstance": str(uuid.uuid4()),
            "context": context,
            "prefetch": self.prefetch(),
        }

    def prefetch(self) -> dict[str, Any]:
        def searchset(*types: str) -> dict[str, Any]:
            return {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": r} for r in self.chart if r["resourceType"] in types],
            }

        return {
            "patient": next(r for r in self.chart if r["resourceType"] == "Patient"),
            "conditions": searchset("Condition"),
            "procedures": searchset("Procedure"),
            "observations": searchset("Observation"),
            "medicationRequests": searchset("MedicationRequest"),
            "medicationStatements": searchset("MedicationStatement"),
        }


def load_calls(today: date) -> list[DemoCall]:
    folder = resources.files("cds_service.demo") / "patients"
    manifest = tomllib.loads((folder / "calls.toml").read_text(encoding="utf-8"))
    bundles: dict[str, dict[str, Any]] = {}
    calls = []
    for entry in manifest["calls"]:
        pid = entry["patient"]
        if pid not in bundles:
            raw = json.loads((folder / f"{pid}.json").read_text(encoding="utf-8"))
            bundles[pid] = shift_dates(raw, today - datetime.fromisoformat(raw["timestamp"]).date())
        resources_ = [e["resource"] for e in bundles[pid]["entry"]]
        patient = next(r for r in resources_ if r["resourceType"] == "Patient")
        name = " ".join(
            [*patient.get("name", [{}])[0].get("given", []), patient.get("name", [{}])[0].get("family", "")]
        )
        calls.append(
            DemoCall(
                patient_id=pid,
                patient_name=name.strip() or pid,
                hook=entry["hook"],
                what=entry["what"],
                chart=tuple(r for r in resources_ if r.get("status") != "draft"),
                drafts=tuple(r for r in resources_ if r.get("status") == "draft"),
            )
        )
    return calls


def shift_dates(value: Any, delta: timedelta) -> Any:
    """A copy of a FHIR JSON value with every full date / dateTime moved by `delta`."""
    if isinstance(value, dict):
        return {k: shift_dates(v, delta) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_dates(v, delta) for v in value]
    if isinstance(value, str):
        match = _DATE.fullmatch(value)
        if match:
            day = date(int(match.group(1)), int(match.group(2)), int(match.group(3))) + delta
            return day.isoformat() + (match.group(4) or "")
    return value
