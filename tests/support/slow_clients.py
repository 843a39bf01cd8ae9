"""Slow-body clients: connections that send a hook call's headers at once and then its body
one byte at a time, as a broken or hostile client (or a bad network) would.

`SlowBodyClients(port, count, headers=...)` opens `count` such connections on loopback and keeps them
trickling until the context ends; `answers` collects the status line each one got (if the
server answered before the body was complete, e.g. 408).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class SlowBodyClients:
    def __init__(
        self,
        port: int,
        count: int,
        *,
        path: str = "/cds-services/hfs-outcomes-patient-view",
        body_bytes: int = 10_000,
        byte_every_s: float = 0.5,
        headers: Callable[[], dict] | None = None,
    ) -> None:
        self.port = port
        self.count = count
        self.path = path
        self.body_bytes = body_bytes
        self.byte_every_s = byte_every_s
        self.headers = headers or dict  # called once per connection (a fresh JWT each)
        self.answers: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _trickle(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                extra = "".join(f"{name}: {value}\r\n" for name, value in self.headers().items())
                head = (
                    f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{extra}"
                    f"Content-Type: application/json\r\nContent-Length: {self.body_bytes}\r\n\r\n"
                )
                sock.sendall(head.encode() + b"{")
                sock.settimeout(self.byte_every_s)
                for _ in range(self.body_bytes - 1):
                    if self._stop.is_set():
                        return
                    try:
                        answer = sock.recv(200)
                    except TimeoutError:
                        answer = None
                    if answer is not None:  # answered (or closed) before the body was sent
                        with self._lock:
                            self.answers.append(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
                        return
                    sock.sendall(b" ")
        except OSError:
            with self._lock:
                self.answers.append("connection error")

    def __enter__(self) -> SlowBodyClients:
        for _ in range(self.count):
            thread = threading.Thread(target=self._trickle, daemon=True)
            thread.start()
            self._threads.append(thread)
        time.sleep(0.3)  # all connected and sending
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
