"""On-disk staging of an extraction, so that resources can be read patient by patient
without holding the population in memory.

The exported resources are streamed into a private SQLite file (a fresh 0700 directory),
keyed by the patient they belong to (Patient.id, or the Patient their subject / patient
reference names); Medication resources, which belong to no patient, are kept aside and
added to the patients whose requests reference them. The file holds patient data: it is
deleted when the staging is closed, whatever happened.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson

_BATCH = 2000
_SHARED = frozenset({"Medication"})


def patient_key(resource: dict) -> str | None:
    """The id of the patient a resource belongs to, or None."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and rid else None
    for element in ("subject", "patient"):
        value = resource.get(element)
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str) and "Patient/" in ref:
            tail = ref.split("Patient/", 1)[1].split("/", 1)[0].split("?", 1)[0]
            if tail:
                return tail
    return None


class Staging:
    def __init__(self, parent: Path | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="cds-learn-", dir=parent))  # mode 0700
        self._db = sqlite3.connect(self.directory / "staging.sqlite3")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE r (patient TEXT NOT NULL, body BLOB NOT NULL)")
        self._db.execute("CREATE TABLE shared (ref TEXT PRIMARY KEY, body BLOB NOT NULL)")
        self._pending: list[tuple[str, bytes]] = []
        self.unassigned = 0  # resources that name no patient (not used)
        self.stored = 0

    def add(self, resource: dict) -> None:
        kind = resource.get("resourceType")
        if kind in _SHARED:
            rid = resource.get("id")
            if isinstance(rid, str):
                self._db.execute(
                    "INSERT OR IGNORE INTO shared VALUES (?, ?)", (f"{kind}/{rid}", orjson.dumps(resource))
                )
            return
        key = patient_key(resource)
        if key is None:
            self.unassigned += 1
            return
        self._pending.append((key, orjson.dumps(resource)))
        self.stored += 1
        if len(self._pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._db.executemany("INSERT INTO r VALUES (?, ?)", self._pending)
            self._pending = []

    def patients(self) -> Iterator[list[dict]]:
        """The resources of one patient at a time (no patient ids are handed out)."""
        self._flush()
        self._db.execute("CREATE INDEX IF NOT EXISTS r_patient ON r (patient)")
        self._db.commit()
        has_shared = self._db.execute("SELECT 1 FROM shared LIMIT 1").fetchone() is not None
        current: str | None = None
        batch: list[dict] = []
        for patient, body in self._db.execute("SELECT patient, body FROM r ORDER BY patient"):
            if patient != current and batch:
                yield self._with_shared(batch) if has_shared else batch
                batch = []
            current = patient
            batch.append(orjson.loads(body))
        if batch:
            yield self._with_shared(batch) if has_shared else batch

    def _with_shared(self, resources: list[dict]) -> list[dict]:
        refs = set()
        for r in resources:
            ref = (r.get("medicationReference") or {}).get("reference") if isinstance(r, dict) else None
            if isinstance(ref, str) and "Medication/" in ref:
                refs.add("Medication/" + ref.split("Medication/", 1)[1].split("/", 1)[0])
        for ref in sorted(refs):
            row = self._db.execute("SELECT body FROM shared WHERE ref = ?", (ref,)).fetchone()
            if row is not None:
                resources.append(orjson.loads(row[0]))
        return resources

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
