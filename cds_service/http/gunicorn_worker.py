"""The gthread worker `cds-service serve` runs: gunicorn's, plus admission control.

gunicorn's threaded worker accepts every connection it can and queues the requests for its
thread pool without bound: one worker can hold calls waiting behind slow ones while
another worker is idle, and under load a call can wait longer than the CDS client waits
for it. This worker
- accepts new connections only while it has a free thread; when all its threads are
  taken it leaves new connections to the other workers for `ACCEPT_PAUSE_S`, and only then
  takes them itself (so a free worker always gets the first chance);
- stamps the moment a request was queued (the FHIR time budget counts from it);
- when more requests already wait than there are threads, hands the new one to a small
  separate pool (the shedding lane) that answers hook calls 503 + Retry-After at once
  (health, readiness, discovery and metrics are still answered there).
See http/admission.py for what the app does with the stamp.

When its master dies (SIGKILL, the OOM killer) a worker notices at its next loop turn
(within 1 s, gunicorn's parent check) and closes its listening socket at once, before it
lets in-flight calls finish: otherwise it held the port for up to `graceful_timeout_s`
and a supervisor's immediate restart could not bind it.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures

from gunicorn.workers.gthread import ThreadWorker

from cds_service.http import admission

SHED_THREADS = 2
ACCEPT_PAUSE_S = 0.2


class AdmissionWorker(ThreadWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._queued = 0  # requests handed to the thread pool and not finished
        self._lock = threading.Lock()
        self._shed_pool: futures.ThreadPoolExecutor | None = None
        self._busy_since: float | None = None

    def init_process(self) -> None:
        self._shed_pool = futures.ThreadPoolExecutor(max_workers=SHED_THREADS, thread_name_prefix="shed")
        super().init_process()

    # -- who accepts ----------------------------------------------------------------

    def _busy(self) -> bool:
        return self._queued >= self.cfg.threads

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

    def accept(self, listener) -> None:
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

    def wait_for_and_dispatch_events(self, timeout):
        pause = self._pause_left()
        if pause > 0:
            timeout = min(timeout, pause)
        return super().wait_for_and_dispatch_events(timeout)

    # -- queue or shed --------------------------------------------------------------

    def enqueue_req(self, conn) -> None:
        accepted = time.monotonic()
        with self._lock:
            shed = self._queued >= 2 * self.cfg.threads
            if not shed:
                self._queued += 1
        pool = self._shed_pool if shed else self.tpool
        fs = pool.submit(self._handle_stamped, conn, accepted, shed)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _handle_stamped(self, conn, accepted: float, shed: bool):
        admission.stamp(accepted, shed)
        try:
            return self.handle(conn)
        finally:
            admission.clear()
            if not shed:
                with self._lock:
                    self._queued -= 1

    def handle_quit(self, sig, frame) -> None:
        if self._shed_pool is not None:
            self._shed_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)
