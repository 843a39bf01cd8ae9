"""The gthread worker `cds-service serve` runs: gunicorn's, plus admission control.

gunicorn's threaded worker accepts every connection it can and queues the requests for its
thread pool without bound: one worker can hold calls waiting behind slow ones while
another worker is idle, and under load a call can wait longer than the CDS client waits
for it. This worker
- accepts new connections only while it has a free thread; when all its threads are
  taken it leaves new connections to the other workers for `ACCEPT_PAUSE_S`, and only then
  takes them itself (so a free worker always gets the first chance);
- stamps the moment a request was queued (the FHIR time budget counts from it);
- hands a new request to a small separate pool (the shedding lane), which answers hook
  calls 503 + Retry-After at once (health, readiness, discovery and metrics are still
  answered there), when more requests already wait than there are threads, or when every
  thread has been held longer than `admission_max_wait_s` (slow FHIR calls, slow request
  bodies: a thread is not coming soon);
- moves a request that has waited `admission_max_wait_s` for a thread to that lane too,
  without waiting for a thread to come free (before, its 503 came only once one did).
See http/admission.py for what the app does with the stamp.

When its master dies (SIGKILL, the OOM killer) a worker notices at its next loop turn
(within 1 s, gunicorn's parent check) and closes its listening socket at once, before it
lets in-flight calls finish: otherwise it held the port for up to `graceful_timeout_s`
and a supervisor's immediate restart could not bind it.
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
from concurrent import futures
from types import FrameType
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from cds_service.http import admission

SHED_THREADS = 2
ACCEPT_PAUSE_S = 0.2
DEFAULT_MAX_WAIT_S = 0.5  # when the app's settings cannot be read


# gunicorn ships no type information: its ThreadWorker is Any to mypy, and the connections
# (gthread.TConn) and results it hands through this class are opaque here (`object`).
class AdmissionWorker(ThreadWorker):  # type: ignore[misc]  # subclassing gunicorn's untyped worker
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # gunicorn's Worker(age, ppid, sockets, app, ...)
        super().__init__(*args, **kwargs)
        self._queued = 0  # requests handed to the thread pool and not finished
        self._lock = threading.Lock()
        self._shed_pool: futures.ThreadPoolExecutor | None = None
        self._busy_since: float | None = None
        self._started: dict[int, float] = {}  # request thread id -> when its request started
        # (accepted, future) of requests queued for a thread, oldest first (main thread only)
        self._waiting: collections.deque[tuple[float, futures.Future[object], object]] = collections.deque()
        self._max_wait_s: float | None = None

    def init_process(self) -> None:
        self._shed_pool = futures.ThreadPoolExecutor(max_workers=SHED_THREADS, thread_name_prefix="shed")
        super().init_process()

    # -- who accepts ----------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self._queued >= self.cfg.threads)

    def _pause_left(self) -> float:
        if self._busy_since is None:
            return 0.0
        return max(0.0, ACCEPT_PAUSE_S - (time.monotonic() - self._busy_since))

    def set_accept_enabled(self, enabled: bool) -> None:
        if not enabled and self.ppid != os.getppid():
            # Orphaned: stop listening now so that a new master can bind the port; the
            # calls in flight still finish on their own sockets.
            super().set_accept_enabled(False)
            for listener in self.sockets:
                listener.close()
            return
        if enabled and self._busy():
            if self._busy_since is None:
                self._busy_since = time.monotonic()
            if self._pause_left() > 0:
                enabled = False
        elif not self._busy():
            self._busy_since = None
        super().set_accept_enabled(enabled)

    def accept(self, listener: socket.socket) -> None:
        was_busy = self._busy()
        super().accept(listener)
        if was_busy:
            # Saturated for a whole pause and no other worker took them: take what waits
            # now (beyond the queue it goes to the shedding lane), then give the other
            # workers the first chance again.
            while True:
                before = self.nr_conns
                super().accept(listener)
                if self.nr_conns == before:
                    break
        if self._busy():
            self._busy_since = time.monotonic()
            super().set_accept_enabled(False)

    def wait_for_and_dispatch_events(self, timeout: float) -> object:
        pause = self._pause_left()
        if pause > 0:
            timeout = min(timeout, pause)
        if self._waiting:  # wake when the oldest waiting request has waited long enough
            overdue_in = self._waiting[0][0] + self.max_wait_s - time.monotonic()
            timeout = min(timeout, max(0.005, overdue_in))
        result = super().wait_for_and_dispatch_events(timeout)
        self._shed_overdue()
        return result

    # -- queue or shed --------------------------------------------------------------

    @property
    def max_wait_s(self) -> float:
        if self._max_wait_s is None:
            try:
                self._max_wait_s = float(self.wsgi.extensions["cds_service"].settings.admission_max_wait_s)
            except (AttributeError, KeyError, TypeError, ValueError):
                self._max_wait_s = DEFAULT_MAX_WAIT_S
        return self._max_wait_s

    def _threads_held(self, now: float) -> bool:
        """Every request thread busy, each for longer than the admission wait: a request
        queued now would wait longer than that for one."""
        starts = list(self._started.values())
        return len(starts) >= self.cfg.threads and max(starts) <= now - self.max_wait_s

    def enqueue_req(self, conn: object) -> None:
        accepted = time.monotonic()
        with self._lock:
            shed = self._queued >= 2 * self.cfg.threads or (
                self._queued >= self.cfg.threads and self._threads_held(accepted)
            )
            if not shed:
                self._queued += 1
        self._submit(conn, accepted, shed)

    def _submit(self, conn: object, accepted: float, shed: bool) -> None:
        pool = self._shed_pool if shed else self.tpool
        if pool is None:  # never: init_process makes the shedding pool before any request
            pool = self.tpool
        fs: futures.Future[object] = pool.submit(self._handle_stamped, conn, accepted, shed)
        if not shed:
            self._waiting.append((accepted, fs, conn))

        def done(fut: futures.Future[object]) -> None:
            if not fut.cancelled():  # a cancelled one was moved to the shedding lane
                self.method_queue.defer(self.finish_request, conn, fut)

        fs.add_done_callback(done)

    def _shed_overdue(self) -> None:
        """Requests that waited `max_wait_s` and still have no thread go to the shedding
        lane (a hook call gets its 503 now, health and readiness their answer)."""
        limit = time.monotonic() - self.max_wait_s
        while self._waiting and self._waiting[0][0] <= limit:
            accepted, fs, conn = self._waiting.popleft()
            if fs.cancel():  # not started: no thread ever took it
                with self._lock:
                    self._queued -= 1
                self._submit(conn, accepted, True)

    def handle_request(self, req: admission.ServerRequest, conn: object) -> object:
        admission.bind_server_request(req)
        try:
            return super().handle_request(req, conn)
        finally:
            admission.bind_server_request(None)

    def _handle_stamped(self, conn: object, accepted: float, shed: bool) -> object:
        admission.stamp(accepted, shed)
        me = threading.get_ident()
        if not shed:
            self._started[me] = time.monotonic()
        try:
            return self.handle(conn)
        finally:
            admission.clear()
            if not shed:
                self._started.pop(me, None)
                with self._lock:
                    self._queued -= 1

    def handle_quit(self, sig: int, frame: FrameType | None) -> None:
        if self._shed_pool is not None:
            self._shed_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)
