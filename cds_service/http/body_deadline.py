"""A deadline for reading a request body: past it, the socket's read side is shut down.

gunicorn reads a body in a loop of socket reads, each bounded only by the socket's timeout:
a client sending one byte a second never trips it and holds the request thread as long as
it likes. One watchdog thread per process keeps the deadlines of the bodies being read; at
a deadline it shuts the socket for reading, so the reading thread gets end-of-file at once
and the route answers 408 (the answer can still be written).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator


class Watch:
    __slots__ = ("deadline", "done", "expired", "sock")

    def __init__(self, sock: socket.socket | None, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.done = False
        self.expired = False


class _Watchdog:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, sock: socket.socket, timeout_s: float) -> Watch:
        watch = Watch(sock, time.monotonic() + timeout_s)
        with self._cond:
            heapq.heappush(self._heap, (watch.deadline, next(self._order), watch))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(target=self._run, name="body-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        return watch

    def release(self, watch: Watch) -> None:
        with self._cond:
            watch.done = True

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][2].done:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0][0] - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                _, _, watch = heapq.heappop(self._heap)
                watch.expired = True
                if watch.sock is not None:  # always: only a socket is watched (watch())
                    with contextlib.suppress(OSError):
                        watch.sock.shutdown(socket.SHUT_RD)


_watchdog = _Watchdog()


@contextlib.contextmanager
def body_deadline(sock: socket.socket | None, timeout_s: float) -> Iterator[Watch]:
    """Within the block, reading from `sock` ends (end-of-file) `timeout_s` from now; the
    yielded Watch says whether it did (`expired`). No socket: nothing is watched."""
    if sock is None:
        yield Watch(None, float("inf"))
        return
    watch = _watchdog.watch(sock, timeout_s)
    try:
        yield watch
    finally:
        _watchdog.release(watch)
