"""A hostile FHIR server for memory tests: every GET is answered 200 with a JSON body sent
chunked (no Content-Length), as long as the client keeps reading, up to `total_bytes`.

`ChunkedFhirServer` runs on loopback in a thread. It counts how many bytes it managed to
send per request (`sent`), so a test can tell whether the client stopped reading at its
size cap or read (and buffered) the whole answer.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_PREFIX = b'{"resourceType":"Bundle","type":"searchset","entry":['
_ENTRY = b'{"resource":{"resourceType":"Observation","status":"final","code":{"text":"' + b"x" * 900 + b'"}}},'


class ChunkedFhirServer:
    def __init__(self, total_bytes: int, chunk_bytes: int = 64 * 1024) -> None:
        self.total_bytes = total_bytes
        self.chunk_bytes = chunk_bytes
        self.sent: list[int] = []  # bytes of body sent, one number per finished request
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                body = _PREFIX + _ENTRY * (owner.chunk_bytes // len(_ENTRY) + 1)
                chunk = body[: owner.chunk_bytes]
                filler = (_ENTRY * (owner.chunk_bytes // len(_ENTRY) + 1))[: owner.chunk_bytes]
                sent = 0
                try:
                    while sent < owner.total_bytes:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(chunk)
                        chunk = filler
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:  # the client hung up: what a size cap should do
                    pass
                with owner._lock:
                    owner.sent.append(sent)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A small send buffer, so that `sent` is close to what the client really read.
        self._server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/fhir"

    def __enter__(self) -> ChunkedFhirServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
