"""Evidence page data kept for a while behind an unguessable token, then deleted.

A card's link carries only a token (secrets.token_urlsafe, 256 bits); the table keeps the
SHA-256 of the token, never the token itself, so a copy of the database does not open the
pages. When a page expires its data is deleted at once (data set to NULL) and only a
tombstone (hash, expiry) stays for TOMBSTONE_DAYS so that an expired link says "expired"
(410) rather than "unknown" (404); then the row goes too.

Table `evidence_pages` (declared in tables.py; created by the Alembic revision
0003, which the Store applies when it opens):
    token_sha256  CHAR-like VARCHAR(64) primary key   hex SHA-256 of the token
    card_id       VARCHAR(200) not null               which card file (for the report)
    data          TEXT null                           the page data as JSON; NULL once expired
    created_at    timestamp with time zone not null
    expires_at    timestamp with time zone not null, indexed

Pages are not written here: `EvidenceSetup.new_page` makes the token and the row, and the
row goes with the call's audit row into one transaction of the audit writer
(Store.keep_call, storage/audit_writer.py) before the card is returned, so the link opens
at once from any worker or instance. When the store could not take that transaction the row is spooled with
the audit row and written when the spool is replayed; meanwhile (the spool is not empty) an
unknown token answers 503 with Retry-After, not 404. Reads are bounded like every store
operation (Store.read): a database that refuses or stops answering gives 503, never a 500
or a long wait. `EvidencePages.save` keeps one page on its own (tests, the demo), through
the same writer (Store.keep_pages).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from cds_service.content.cards import CardContent
from cds_service.content.chart_specs import ChartSpec, load_chart_specs
from cds_service.storage.audit import PageRow
from cds_service.storage.engine import StoreUnavailable
from cds_service.storage.store import Store
from cds_service.storage.tables import LEN_CARD_ID, evidence_pages
from cds_service.storage.write_gate import write_gate

if TYPE_CHECKING:
    from cds_service.config import Settings

log = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits; the brief asks for at least 128
DEFAULT_TTL_S = 24 * 3600.0
TOMBSTONE_DAYS = 7
PURGE_INTERVAL_S = 300.0


@dataclass(frozen=True)
class PageLookup:
    """What a token opens: `data` when live, else `expired` (410) or neither (404)."""

    data: dict[str, Any] | None
    expired: bool = False
    expires_at: datetime | None = None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class EvidencePages:
    """Evidence page data in the service's database (the Store's).

    Reads and writes are bounded by the store's deadlines and answer StoreUnavailable (503)
    when the database refuses or does not answer."""

    def __init__(self, store: Store, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise ValueError("the evidence page lifetime must be positive")
        self.store = store
        self.engine: Engine = store.engine
        self.ttl_s = float(ttl_s)
        self._next_purge = 0.0

    def row(self, data: dict[str, Any], ttl_s: float | None = None, token: str | None = None) -> tuple[str, PageRow]:
        """A new page's token and the row that keeps it (written by whoever takes the row)."""
        token = token or new_token()
        created = _utcnow()
        ttl = self.ttl_s if ttl_s is None else float(ttl_s)
        return token, PageRow(
            token_sha256=token_hash(token),
            card_id=str(data.get("card_id", ""))[:LEN_CARD_ID],
            data=json.dumps(data, ensure_ascii=False, separators=(",", ":")),
            created_at=created,
            expires_at=created + timedelta(seconds=ttl),
        )

    def save(self, data: dict[str, Any], ttl_s: float | None = None, token: str | None = None) -> str:
        """Keep `data` (JSON-ready) for ttl_s seconds, committed before it returns; returns
        the page's token. StoreUnavailable when the store cannot take it now."""
        token, row = self.row(data, ttl_s, token)
        if not self.store.keep_pages([row]):
            raise StoreUnavailable(
                "the evidence page cannot be written now; retry later", retry_after_s=self.store.options.retry_after_s
            )
        self.maybe_purge(row.created_at)
        return token

    def get(self, token: str, now: datetime | None = None) -> PageLookup:
        """The page data for a token, or why there is none (expired or unknown)."""
        now = now or _utcnow()
        if not token or len(token) > 200:
            return PageLookup(None)
        query = sa.select(evidence_pages.c.data, evidence_pages.c.expires_at).where(
            evidence_pages.c.token_sha256 == token_hash(token)
        )
        row = self.store.read("evidence_page", lambda conn: conn.execute(query).first())
        if row is None:
            return PageLookup(None)
        data: str | None = row[0]
        expires_at: datetime = row[1]
        if expires_at <= now or data is None:
            return PageLookup(None, expired=True, expires_at=expires_at)
        return PageLookup(json.loads(data), expires_at=expires_at)

    def purge_expired(self, now: datetime | None = None) -> int:
        """Delete the data of expired pages (and old tombstones); returns pages emptied."""
        now = now or _utcnow()
        with write_gate(self.engine, _GATE_WAIT_S), self.engine.begin() as conn:
            emptied = conn.execute(
                evidence_pages.update()
                .where(evidence_pages.c.expires_at <= now, evidence_pages.c.data.is_not(None))
                .values(data=None)
            ).rowcount
            conn.execute(
                evidence_pages.delete().where(evidence_pages.c.expires_at < now - timedelta(days=TOMBSTONE_DAYS))
            )
        return emptied or 0

    def maybe_purge(self, now: datetime | None = None) -> None:
        """Purge expired pages at most every PURGE_INTERVAL_S (never raises)."""
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL_S
            try:
                self.purge_expired(now)
            except (DBAPIError, TimeoutError) as exc:
                log.warning("evidence page purge failed: %s", type(exc).__name__)


_GATE_WAIT_S = 10.0  # the purge waits this long for this process's other writers


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class EvidenceSetup:
    """What the render step and the page route share: the page store and the chart specs."""

    pages: EvidencePages
    chart_specs: dict[str, tuple[ChartSpec, ...]]

    def new_page(self, data: dict[str, Any]) -> tuple[str, PageRow]:
        """A card's page: its token for the link, and the row to write with the call's audit
        row (Store.keep_call) before the card is returned."""
        return self.pages.row(data)

    def save(self, data: dict[str, Any]) -> str:
        """Keep a page's data now and return its token (tools and tests)."""
        return self.pages.save(data)

    def get(self, token: str) -> PageLookup:
        """The page behind a token. StoreUnavailable (503) when the store cannot answer, and
        when the page is unknown while audit rows wait in the local spool: its page may be
        one of theirs, written when the spool is replayed."""
        found = self.pages.get(token)
        if found.data is None and not found.expired and self._spool_waiting():
            raise StoreUnavailable(
                "this evidence page may still be being written; retry shortly",
                retry_after_s=self.pages.store.options.retry_after_s,
            )
        return found

    def _spool_waiting(self) -> bool:
        return self.pages.store.audit_spool_depth() > 0


def build_evidence_setup(
    settings: Settings, store: Store, cards: list[CardContent] | tuple[CardContent, ...]
) -> EvidenceSetup:
    """The evidence pages of one process: the page store and the chart specs."""
    pages = EvidencePages(store, ttl_s=settings.evidence_page_ttl_h * 3600.0)
    # Expired pages are purged on the audit writer's thread, at most every
    # PURGE_INTERVAL_S: never on a request's path.
    store.audit_writer.housekeeping = pages.maybe_purge
    return EvidenceSetup(pages=pages, chart_specs=load_chart_specs(settings.cards_dir, cards))
