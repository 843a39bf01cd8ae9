"""A loopback TCP proxy that a test can cut or black-hole (threads, no dependencies).

`TcpProxy(upstream_port)` listens on 127.0.0.1 and forwards every connection to the
upstream port (the real PostgreSQL). Then:
- `cut()`: existing connections are closed and new ones refused (the server is down);
- `blackhole()`: connections stay open and new ones are accepted, but nothing is
  forwarded in either direction (a network partition: sockets open, no replies);
- `restore()`: forwarding again; connections that were black-holed are closed (their
  protocol state is lost), as after a real partition the peer would reset them.
- `pause()`: a partition that heals: bytes are held, in both directions, on existing and
  new connections, and `resume()` delivers them (as TCP retransmission would), so a
  statement sent during the pause completes after it. `refuse()` is `cut()`.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = "open"
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._flowing = threading.Event()
        self._flowing.set()
        self._listen()

    # -- controls

    def cut(self) -> None:
        with self._lock:
            self.mode = "cut"
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._close_all()

    def blackhole(self) -> None:
        with self._lock:
            self.mode = "blackhole"

    def refuse(self) -> None:
        self.cut()

    def pause(self) -> None:
        with self._lock:
            self.mode = "paused"
            self._flowing.clear()

    def resume(self) -> None:
        with self._lock:
            self.mode = "open"
            self._flowing.set()

    def restore(self) -> None:
        previous = self.mode
        with self._lock:
            self.mode = "open"
            self._flowing.set()
        if previous == "blackhole":
            self._close_all()
        if self._listener is None:
            self._listen()

    def close(self) -> None:
        self.cut()

    def url_for(self, url) -> str:
        """A SQLAlchemy URL (object) redirected through the proxy, as a string."""
        return url.set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    # -- internals

    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = None
            if self.mode in ("open", "paused"):
                try:
                    upstream = socket.create_connection(self.upstream, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            with self._lock:
                self._connections.append(client)
                if upstream is not None:
                    self._connections.append(upstream)
            if upstream is None:  # black-holed: accept, then never answer
                threading.Thread(target=self._drain, args=(client,), daemon=True).start()
                continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _drain(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.mode in ("blackhole", "cut"):
                    continue  # black hole: swallow it
                while not self._flowing.wait(0.1):  # paused: hold it
                    if self.mode in ("blackhole", "cut"):
                        break
                if self.mode in ("blackhole", "cut"):
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            if self.mode in ("open", "paused"):
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def _close_all(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
