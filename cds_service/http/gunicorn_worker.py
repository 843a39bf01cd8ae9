"""The gthread worker `cds-service serve` runs: gunicorn's, plus admission stamps.

gunicorn's threaded worker queues every accepted request for its thread pool without
bound; under load a call can wait there longer than the CDS client waits for it. This
worker
- stamps the moment a request was queued (the FHIR time budget counts from it), and
- when more requests are already waiting than there are threads, hands the new one to a
  small separate pool (the shedding lane) that answers hook calls 503 + Retry-After
  at once (health, readiness, discovery and metrics are still answered there).
See http/admission.py for what the app does with the stamp.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

from gunicorn.workers.gthread import ThreadWorker

from cds_service.http import admission

SHED_THREADS = 2


class AdmissionWorker(ThreadWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._waiting = 0
        self._lock = threading.Lock()
        self._shed_pool: futures.ThreadPoolExecutor | None = None

    def init_process(self) -> None:
        self._shed_pool = futures.ThreadPoolExecutor(max_workers=SHED_THREADS, thread_name_prefix="shed")
        super().init_process()

    def enqueue_req(self, conn) -> None:
        accepted = time.monotonic()
        with self._lock:
            saturated = self._waiting >= self.cfg.threads
            if not saturated:
                self._waiting += 1
        if saturated:
            fs = self._shed_pool.submit(self._handle_stamped, conn, accepted, True)
        else:
            fs = self.tpool.submit(self._handle_stamped, conn, accepted, False)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self.finish_request, conn, fut))

    def _handle_stamped(self, conn, accepted: float, shed: bool):
        if not shed:
            with self._lock:
                self._waiting -= 1
        admission.stamp(accepted, shed)
        try:
            return self.handle(conn)
        finally:
            admission.clear()

    def handle_quit(self, sig, frame) -> None:
        if self._shed_pool is not None:
            self._shed_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)
