"""Evidence page data kept for a while behind an unguessable token, then deleted.

A card's link carries only a token (secrets.token_urlsafe, 256 bits); the table keeps the
SHA-256 of the token, never the token itself, so a copy of the database does not open the
pages. When a page expires its data is deleted at once (data set to NULL) and only a
tombstone (hash, expiry) stays for TOMBSTONE_DAYS so that an expired link says "expired"
(410) rather than "unknown" (404); then the row goes too.

Table `evidence_pages` (declared on the store's MetaData; created by the Alembic revision
0003, which the Store applies when it opens):
    token_sha256  CHAR-like VARCHAR(64) primary key   hex SHA-256 of the token
    card_id       VARCHAR(200) not null               which card file (for the report)
    data          TEXT null                           the page data as JSON; NULL once expired
    created_at    timestamp with time zone not null
    expires_at    timestamp with time zone not null, indexed

`EvidencePages.save` writes in the caller's thread (about a millisecond on SQLite).
`BackgroundSaver` wraps it to take the write off the hook call's path: the token is made
at once and the rows are written by one daemon thread per process, in batches (what
arrives within BATCH_LINGER_S, one INSERT per batch, retried before a page is dropped;
pages still waiting are written at a normal stop); `get` also looks at the rows still
waiting, so a page opened at once is found in the same process.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import queue
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from cds_service.content.chart_specs import ChartSpec, load_chart_specs
from cds_service.storage.audit_spool import BATCH_LINGER_S
from cds_service.storage.store import UtcDateTime, metadata
from cds_service.storage.write_gate import write_gate

if TYPE_CHECKING:
    from cds_service.config import Settings

log = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits; the brief asks for at least 128
DEFAULT_TTL_S = 24 * 3600.0
TOMBSTONE_DAYS = 7
PURGE_INTERVAL_S = 300.0
_LEN_CARD_ID = 200

evidence_pages = sa.Table(
    "evidence_pages",
    metadata,
    sa.Column("token_sha256", sa.String(64), primary_key=True),
    sa.Column("card_id", sa.String(_LEN_CARD_ID), nullable=False),
    sa.Column("data", sa.Text(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False, index=True),
)


@dataclass(frozen=True)
class PageLookup:
    """What a token opens: `data` when live, else `expired` (410) or neither (404)."""

    data: dict | None
    expired: bool = False
    expires_at: datetime | None = None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


class EvidencePages:
    """Evidence page data in the service's database (the Store's engine)."""

    def __init__(self, engine: Engine, ttl_s: float = DEFAULT_TTL_S) -> None:
        if ttl_s <= 0:
            raise ValueError("the evidence page lifetime must be positive")
        self.engine = engine
        self.ttl_s = float(ttl_s)
        self._next_purge = 0.0

    def save(self, data: dict, ttl_s: float | None = None, token: str | None = None) -> str:
        """Keep `data` (JSON-ready) for ttl_s seconds; returns the page's token."""
        token = token or new_token()
        self._write(token, data, ttl_s)
        return token

    def _write(self, token: str, data: dict, ttl_s: float | None, now: datetime | None = None) -> None:
        self._write_many([(token, data, ttl_s, now or _utcnow())])

    def _write_many(self, pages: list[tuple[str, dict, float | None, datetime]]) -> None:
        """Several pages (token, data, ttl_s or None, created) in one statement and one
        transaction: the write lock is held once per batch, not once per page."""
        rows = []
        for token, data, ttl_s, created in pages:
            ttl = self.ttl_s if ttl_s is None else float(ttl_s)
            rows.append(
                {
                    "token_sha256": token_hash(token),
                    "card_id": str(data.get("card_id", ""))[:_LEN_CARD_ID],
                    "data": json.dumps(data, ensure_ascii=False, separators=(",", ":")),
                    "created_at": created,
                    "expires_at": created + timedelta(seconds=ttl),
                }
            )
        if not rows:
            return
        # One multi-row INSERT (one statement step), not executemany (a step per row): on a
        # busy worker each step waits for the GIL while the write lock is held.
        with write_gate(self.engine, _GATE_WAIT_S), self.engine.begin() as conn:
            conn.execute(evidence_pages.insert().values(rows))
        self._maybe_purge(max(created for *_, created in pages))

    def get(self, token: str, now: datetime | None = None) -> PageLookup:
        """The page data for a token, or why there is none (expired or unknown)."""
        now = now or _utcnow()
        if not token or len(token) > 200:
            return PageLookup(None)
        query = sa.select(evidence_pages.c.data, evidence_pages.c.expires_at).where(
            evidence_pages.c.token_sha256 == token_hash(token)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return PageLookup(None)
        data, expires_at = row
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

    def _maybe_purge(self, now: datetime) -> None:
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + PURGE_INTERVAL_S
            try:
                self.purge_expired(now)
            except (DBAPIError, TimeoutError) as exc:
                log.warning("evidence page purge failed: %s", type(exc).__name__)


_BATCH = 100  # pages per write at most
_ATTEMPTS = 3  # writes of one batch before its pages are dropped
_RETRY_S = 0.5  # pause before the next attempt, times the attempt number
_GATE_WAIT_S = 10.0  # wait for this process's other writers (background thread: no caller waits)


class BackgroundSaver:
    """`save` that returns the token at once and writes the row in a daemon thread.

    One writer thread per process (started on first use, again after a fork). A full queue
    or a failed write drops that page (logged by type only): the card is still answered,
    its link then opens the 404 page.
    """

    def __init__(self, pages: EvidencePages, max_pending: int = 1000) -> None:
        self.pages = pages
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[dict, float | None, datetime]] = {}
        self._queue: queue.Queue[str | None] | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def save(self, data: dict, ttl_s: float | None = None) -> str:
        token = new_token()
        with self._lock:
            self._ensure_thread()
            if len(self._pending) >= self.max_pending:
                log.warning("evidence page dropped: the write queue is full")
                return token
            self._pending[token] = (data, ttl_s, _utcnow())
            q = self._queue
        q.put(token)
        return token

    def get(self, token: str, now: datetime | None = None) -> PageLookup:
        with self._lock:
            waiting = self._pending.get(token) if self._pid == os.getpid() else None
        if waiting is not None:
            data, ttl_s, created = waiting
            ttl = self.pages.ttl_s if ttl_s is None else ttl_s
            return PageLookup(data, expires_at=created + timedelta(seconds=ttl))
        return self.pages.get(token, now)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait (bounded) until every pending page is written; True when none is left."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Write the pages still waiting (at most `timeout_s`) and stop the writer thread."""
        atexit.unregister(self.close)
        with self._lock:
            if self._pid != os.getpid() or self._queue is None:
                return
        self.flush(timeout_s)
        with self._lock:
            q, thread = self._queue, self._thread
            self._queue, self._thread, self._pid = None, None, None
        q.put(None)
        if thread is not None:
            thread.join(timeout_s)

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid() and self._queue is not None:
            return
        self._pid = os.getpid()
        self._pending.clear()
        self._queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(self._queue,), name="evidence-pages", daemon=True)
        self._thread.start()
        # A normal stop (SIGTERM) writes the pages still waiting (their links stay good).
        atexit.register(self.close, 3.0)

    def _run(self, q: queue.Queue[str | None]) -> None:
        stopping = False
        while not stopping:
            first = q.get()
            if first is None:  # close()
                return
            tokens = [first]  # then what arrives within the linger, written together
            linger_until = time.monotonic() + BATCH_LINGER_S
            while len(tokens) < _BATCH:
                try:
                    token = q.get(timeout=max(0.0, linger_until - time.monotonic()))
                except queue.Empty:
                    break
                if token is None:  # close(): write this batch, then stop
                    stopping = True
                    break
                tokens.append(token)
            with self._lock:
                items = [(t, *self._pending[t]) for t in tokens if t in self._pending]
            for attempt in range(1, _ATTEMPTS + 1):
                try:
                    self.pages._write_many(items)
                    break
                except Exception as exc:  # a lost page must not kill the writer
                    # The page is served from memory meanwhile (`get`): a busy database (the
                    # write lock held by another writer) is retried before a page is dropped.
                    if attempt == _ATTEMPTS:
                        log.error("evidence page write failed: %s (%d pages)", type(exc).__name__, len(items))
                    else:
                        log.warning("evidence page write failed: %s; retrying", type(exc).__name__)
                        time.sleep(_RETRY_S * attempt)
            with self._lock:
                for token in tokens:
                    self._pending.pop(token, None)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class EvidenceSetup:
    """What the render step and the page route share: the page store and the chart specs."""

    pages: EvidencePages
    saver: BackgroundSaver
    chart_specs: dict[str, tuple[ChartSpec, ...]]

    def save(self, data: dict) -> str:
        """Keep a page's data (written off the request path) and return its token."""
        return self.saver.save(data)

    def get(self, token: str) -> PageLookup:
        return self.saver.get(token)


def build_evidence_setup(settings: Settings, engine: Engine, cards) -> EvidenceSetup:
    """The evidence pages of one process: table checked/created, writer, chart specs."""
    pages = EvidencePages(engine, ttl_s=settings.evidence_page_ttl_h * 3600.0)
    return EvidenceSetup(
        pages=pages, saver=BackgroundSaver(pages), chart_specs=load_chart_specs(settings.cards_dir, cards)
    )
