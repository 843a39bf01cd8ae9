"""A FHIR server that answers nothing: each GET waits until the server stops (or 20 s).

`asked` is set at the first request, so a test knows when a hook call is inside its FHIR
step (its JWT checked, its jti spent) and holding a request thread.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HangingFhirServer:
    def __init__(self) -> None:
        self.asked = threading.Event()
        self.requests = 0
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests += 1
                owner.asked.set()
                owner.release.wait(20)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HangingFhirServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
