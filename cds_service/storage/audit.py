"""The audit trail's values: a keyed hash of the patient id, the AuditNotes a hook call fills
in as it goes, and the CallRecord (one per call) the trail keeps from them.

The audit trail must let an auditor say "these calls concerned the same patient" without
holding the patient's identifier: the id is kept only as HMAC-SHA256 under a key that
stays on the server. The key comes from the setting `audit_hash_key`, or else is generated
once and kept in the instance folder (`audit-hash.key`, mode 0600) so that it survives
restarts and every worker uses the same one.

The notes are declared here, once, beside the row they become (AuditNotes.record): a new
field of the trail is added to both in this file. No Flask here: the route fills the notes
with plain values and Runtime.audit gives their record to the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple, Protocol

from cds_service.config import ConfigError, Settings


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ReturnedCard(NamedTuple):
    card_uuid: str
    card_id: str  # which card file (cards/<card_id>.toml)
    summary: str
    situation: str | None = None  # which of the card file's situations fired (None before 0005)


class PageRow(NamedTuple):
    """A returned card's evidence page, written in the same transaction as the call's row
    (or spooled with it): the token's SHA-256 only, never the token."""

    token_sha256: str
    card_id: str
    data: str  # the page data as JSON text
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class CallRecord:
    """One hook call as the audit trail keeps it."""

    service_id: str
    hook: str
    hook_instance: str
    outcome_status: int  # HTTP status answered (200, 400, 401, 412, ...)
    duration_ms: float
    patient_hash: str | None = None  # keyed hash (audit.patient_hash), never the id
    content_version: str = ""  # card file versions used, e.g. "mvd@1.2,rfa@1.0"
    client_iss: str | None = None  # JWT issuer, None when unauthenticated
    cards: tuple[ReturnedCard, ...] | list[ReturnedCard] = ()
    called_at: datetime = field(default_factory=_utcnow)
    instance_id: str | None = None  # which service instance answered (setting instance_id)
    record_id: str | None = None  # unique per row: a spooled row is replayed once, not twice
    # What the call used (hook_call.CallUsage.as_dict, issue 19): token, resource types,
    # missing prefetch keys, timings. No identifiers. Kept as JSON text.
    usage: str | None = None
    pages: tuple[PageRow, ...] = ()  # the evidence pages of the cards returned
    # The site whose overlay the call was evaluated with (issue 20; trust file `site`, per
    # issuer or per tenant). None: the deployment's shared content. Rows spooled before
    # 0.3.0 have no such field and replay as None.
    site: str | None = None

    def to_json(self) -> dict:
        """The record as JSON values, for the local audit spool (storage/audit_spool.py)."""
        return {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "cards": [list(card) for card in self.cards],
            "called_at": self.called_at.isoformat(),
            "pages": [
                [p.token_sha256, p.card_id, p.data, p.created_at.isoformat(), p.expires_at.isoformat()]
                for p in self.pages
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> CallRecord:
        return cls(
            **{
                **data,
                "cards": tuple(ReturnedCard(*card) for card in data.get("cards", ())),
                "called_at": datetime.fromisoformat(data["called_at"]),
                "pages": tuple(
                    PageRow(sha, card_id, page, datetime.fromisoformat(created), datetime.fromisoformat(expires))
                    for sha, card_id, page, created, expires in data.get("pages", ())
                ),
            }
        )


class UsageNote(Protocol):
    """What a call used (hook_call.CallUsage), as the audit row and the metrics keep it."""

    def as_dict(self) -> dict: ...


@dataclass
class AuditNotes:
    """What the audit trail keeps about one hook call, filled in as the call goes (the route,
    then hook_call.answer). Never a token or a raw patient identifier."""

    service_id: str
    hook: str
    started: float  # time.perf_counter() when the call arrived
    hook_instance: str | None = None
    patient_hash: str | None = None  # keyed hash (patient_hash), never the id
    client_iss: str | None = None
    site: str | None = None  # the client's site (trust file `site`): its overlay only
    status: int | None = None
    cards: list[tuple[str, str, str, str]] = field(default_factory=list)  # (uuid, card id, summary, situation)
    # The evidence pages of the cards returned, written with the audit row before the answer.
    pages: list[PageRow] = field(default_factory=list)
    # time.monotonic() when the call was accepted (queued for a thread): the FHIR time
    # budget counts from here. None: from when the prefetch step starts.
    accepted: float | None = None
    usage: UsageNote | None = None  # what the call used (issue 19), once it got that far

    @property
    def duration_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def record(self, content_version: str) -> CallRecord:
        """The audit row these notes become; `content_version` names the card files in force."""
        return build_call_record(
            service_id=self.service_id,
            hook=self.hook,
            hook_instance=self.hook_instance or "",
            outcome_status=self.status or 0,
            duration_ms=self.duration_ms,
            patient_hash=self.patient_hash,
            content_version=content_version,
            client_iss=self.client_iss,
            cards=self.cards,
            usage=self.usage.as_dict() if self.usage is not None else None,
            pages=self.pages,
            site=self.site,
        )


AUDIT_KEY_FILE = "audit-hash.key"
_GENERATED_KEY_BYTES = 32


def patient_hash(patient_id: str, key: bytes) -> str:
    """HMAC-SHA256 of the patient id under the audit key, as 64 hex characters."""
    if not key:
        raise ValueError("the audit hash key is empty")
    return hmac.new(key, patient_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _read_key_file(path: Path) -> bytes:
    text = ""
    for _attempt in range(20):
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"audit key file {path} cannot be read") from exc
        if text.endswith("\n"):
            break
        time.sleep(0.05)  # another worker is still writing it (no hard links here)
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(f"audit key file {path} does not hold a hexadecimal key") from None
    if len(key) < 16:
        raise ConfigError(f"audit key file {path} holds too short a key")
    return key


def _create_key_file(path: Path) -> bytes:
    """Write a new random key to `path` unless another process got there first.

    The key is written in full to a private temporary file, then hard-linked into place:
    the link either succeeds (ours is the key) or fails because the file exists (theirs
    is). Nobody ever reads a half-written key.
    """
    key = secrets.token_bytes(_GENERATED_KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key.hex() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return _read_key_file(path)
        except OSError:
            return _create_key_file_exclusively(path, key)
        return key
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_key_file_exclusively(path: Path, key: bytes) -> bytes:
    """For file systems without hard links: O_EXCL create; readers wait for the newline."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key_file(path)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return key


def audit_key(settings: Settings) -> bytes:
    """The audit hash key: the configured one, or the instance folder's generated one."""
    if settings.audit_hash_key:
        return settings.audit_hash_key.encode("utf-8")
    folder = Path(settings.instance_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"instance folder {folder} cannot be created") from exc
    path = folder / AUDIT_KEY_FILE
    if path.exists():
        return _read_key_file(path)
    try:
        return _create_key_file(path)
    except OSError as exc:
        raise ConfigError(f"audit key file {path} cannot be written") from exc


def build_call_record(
    *,
    service_id: str,
    hook: str,
    hook_instance: str,
    outcome_status: int,
    duration_ms: float,
    patient_hash: str | None = None,
    content_version: str = "",
    client_iss: str | None = None,
    cards: Iterable[tuple[str, str, str]] = (),
    called_at: datetime | None = None,
    usage: dict | None = None,
    pages: Iterable[PageRow] = (),
    site: str | None = None,
) -> CallRecord:
    """The audit row for one hook call: only the keyed hash of the patient id, never the id.

    `cards` are (card_uuid, card_id, summary) for each card returned; `content_version`
    names the card files (and site models) in force (card_content.content_versions).
    """
    return CallRecord(
        service_id=service_id,
        hook=hook,
        hook_instance=hook_instance,
        outcome_status=int(outcome_status),
        duration_ms=round(float(duration_ms), 3),
        patient_hash=patient_hash,
        content_version=content_version,
        client_iss=client_iss,
        cards=tuple(ReturnedCard(*card) for card in cards),
        called_at=called_at or datetime.now(UTC),
        usage=json.dumps(usage, sort_keys=True, separators=(",", ":")) if usage is not None else None,
        pages=tuple(pages),
        site=site,
    )
