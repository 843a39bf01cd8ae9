"""On-disk staging of an extraction, so that resources can be read patient by patient
without holding the population in memory.

The exported resources are streamed into a private SQLite file (a fresh 0700 directory),
keyed by the patient they belong to (Patient.id, or the Patient their subject / patient
reference names); Medication resources, which belong to no patient, are kept aside and
added to the patients whose requests reference them. The file holds patient data: it is
deleted when the staging is closed, whatever happened.

Only what is read is staged: each resource arrives decoded with the declared elements
(`line_decoding`: fhir/decode.py's `Line`, from the export's line; a resource parsed whole,
from the search fallback, is reduced to the same), is filed by its patient reference, and is
stored without it (msgspec JSON, the elements the record and `learn` read). It is read back
decoded into the `Resource` Structs that the hook path's record builder reads. An element of
the wrong shape is kept as sent (the record's datatype checks make that input unreadable,
as at the bedside); it never fails the resource.
"""

from __future__ import annotations

import functools
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
from msgspec import UNSET

from cds_service.clinical.fhir_elements import PATIENT_REFERENCES, declared_elements
from cds_service.fhir.decode import Decoding

_BATCH = 2000
_SHARED = frozenset({"Medication"})
# The elements that reference a shared resource (MedicationRequest, MedicationStatement).
_SHARED_REFERENCES = ("medicationReference",)


@functools.cache
def line_decoding() -> Decoding:
    """The decoder of exported resources: the declared elements, filed by the patient."""
    return Decoding(declared_elements(), line_keys=PATIENT_REFERENCES)


def patient_key(resource: Mapping[str, Any]) -> str | None:
    """The id of the patient a resource belongs to, or None."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) and rid else None
    for element in PATIENT_REFERENCES:
        value = resource.get(element)
        ref = value.get("reference") if isinstance(value, dict) else None
        if isinstance(ref, str) and "Patient/" in ref:
            tail = ref.split("Patient/", 1)[1].split("/", 1)[0].split("?", 1)[0]
            if tail:
                return tail
    return None


class Staging:
    def __init__(self, parent: Path | None = None, decoding: Decoding | None = None) -> None:
        self.decoding = decoding or line_decoding()
        self._unfiled = {key: UNSET for key in self.decoding.line_keys}
        self._encode = msgspec.json.Encoder().encode
        # Read back as the record builder's Resource Structs (registered Mappings).
        self._decode_resource: Callable[[bytes], Mapping[str, Any]] = msgspec.json.Decoder(
            self.decoding.Resource
        ).decode
        self._decode_line: Callable[[bytes], Mapping[str, Any]] = msgspec.json.Decoder(self.decoding.Line).decode
        self.directory = Path(tempfile.mkdtemp(prefix="cds-learn-", dir=parent))  # mode 0700
        self._db = sqlite3.connect(self.directory / "staging.sqlite3")
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute("CREATE TABLE r (patient TEXT NOT NULL, body BLOB NOT NULL)")
        self._db.execute("CREATE TABLE shared (ref TEXT PRIMARY KEY, body BLOB NOT NULL)")
        self._pending: list[tuple[str, bytes]] = []
        self.unassigned = 0  # resources that name no patient (not used)
        self.unstorable = 0  # resources holding text that is not Unicode (a lone surrogate; not used)
        self.stored = 0

    def add(self, resource: Mapping[str, Any]) -> None:
        """Stage one resource: a `Line` from `line_decoding().resource`, or a JSON object
        parsed whole (reduced here to the same elements)."""
        line = resource if type(resource) is self.decoding.Line else msgspec.convert(resource, self.decoding.Line)
        kind = line.get("resourceType")
        if type(kind) is str and kind in _SHARED:
            rid = line.get("id")
            body = self._body(line)
            if isinstance(rid, str) and body is not None:
                self._db.execute("INSERT OR IGNORE INTO shared VALUES (?, ?)", (f"{kind}/{rid}", body))
            return
        key = patient_key(line)
        if key is None:
            self.unassigned += 1
            return
        body = self._body(line)
        if body is None:
            return
        self._pending.append((key, body))
        self.stored += 1
        if len(self._pending) >= _BATCH:
            self._flush()

    def _body(self, line: Any) -> bytes | None:
        """The resource as stored: its declared elements, without the patient reference."""
        if self._unfiled:
            line = msgspec.structs.replace(line, **self._unfiled)
        try:
            return self._encode(line)
        except UnicodeEncodeError:  # a lone surrogate (JSON escapes allow it; UTF-8 does not)
            self.unstorable += 1
            return None

    def _flush(self) -> None:
        if self._pending:
            self._db.executemany("INSERT INTO r VALUES (?, ?)", self._pending)
            self._pending = []

    def patients(self) -> Iterator[list[Mapping[str, Any]]]:
        """The resources of one patient at a time (no patient ids are handed out), decoded
        into the record builder's `Resource` Structs."""
        self._flush()
        self._db.execute("CREATE INDEX IF NOT EXISTS r_patient ON r (patient)")
        self._db.commit()
        has_shared = self._db.execute("SELECT 1 FROM shared LIMIT 1").fetchone() is not None
        decode = self._decode
        current: str | None = None
        batch: list[Mapping[str, Any]] = []
        for patient, body in self._db.execute("SELECT patient, body FROM r ORDER BY patient"):
            if patient != current and batch:
                yield self._with_shared(batch) if has_shared else batch
                batch = []
            current = patient
            batch.append(decode(body))
        if batch:
            yield self._with_shared(batch) if has_shared else batch

    def _decode(self, body: bytes) -> Mapping[str, Any]:
        """A stored resource as the Struct of its type; one whose resourceType is not a FHIR
        resource type (which the tagged decode refuses) as the `Line` it was stored from."""
        try:
            decoded: Mapping[str, Any] = self._decode_resource(body)
        except msgspec.ValidationError:
            decoded = self._decode_line(body)
        return decoded

    def _with_shared(self, resources: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        refs = set()
        for r in resources:
            for element in _SHARED_REFERENCES:
                value = r.get(element)
                ref = value.get("reference") if isinstance(value, dict) else None
                if isinstance(ref, str) and "Medication/" in ref:
                    refs.add("Medication/" + ref.split("Medication/", 1)[1].split("/", 1)[0])
        for ref in sorted(refs):
            row = self._db.execute("SELECT body FROM shared WHERE ref = ?", (ref,)).fetchone()
            if row is not None:
                resources.append(self._decode(row[0]))
        return resources

    def close(self) -> None:
        try:
            self._db.close()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
