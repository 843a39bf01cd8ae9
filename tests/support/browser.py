"""A real headless Chromium driven over the DevTools protocol (CDP) on a pipe.

No driver and no extra package: Chromium started with `--remote-debugging-pipe` reads CDP
commands on fd 3 and answers on fd 4 (JSON messages ending with a NUL byte). Every wait is
bounded. CHROMIUM (env) names the browser; default /usr/bin/chromium (Debian's package,
which scripts/test installs when missing).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def chromium_path() -> str | None:
    """The browser binary itself: Debian's /usr/bin/chromium is a shell launcher, and its
    /usr/lib/chromium/chromium is what `--remote-debugging-pipe` needs to be started as."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium", CHROMIUM, shutil.which("chromium")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class BrowserError(RuntimeError):
    pass


class Browser:
    def __init__(self, timeout_s: float = 30.0) -> None:
        path = chromium_path()
        if path is None:
            raise BrowserError("no chromium")
        self.timeout_s = timeout_s
        self._profile = tempfile.mkdtemp(prefix="cds-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Chromium finds the pipes at fd 3 (commands) and fd 4 (answers): a shell puts them there.
        # (moved above fd 10 first, so that closing the originals cannot close fd 3 or 4)
        r, w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._process = subprocess.Popen(
            [
                "/bin/bash",  # (dash cannot redirect fds above 9)
                "-c",
                f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-',
                path,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(r, w),
        )
        os.close(r)
        os.close(w)
        self._buffer = b""
        self._next_id = 0
        self.session: str | None = None

    # -- protocol
    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("the browser did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise BrowserError("the browser closed the pipe")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    # -- a page
    def open(self, url: str, width: int = 1000, height: int = 900, mobile: bool = False) -> None:
        """Load `url` at this viewport, in the one tab this browser keeps (made on first use)."""
        if self.session is None:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        else:  # the old document carries a mark the new one lacks: wait for the new one
            self.evaluate("window.__cdsOld = true")
        self.send("Emulation.setEmulatedMedia", {"media": ""}, self.session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
            self.session,
        )
        self.send("Page.enable", session=self.session)
        self.send("Page.navigate", {"url": url}, self.session)
        deadline = time.monotonic() + self.timeout_s
        while self.evaluate("document.readyState === 'complete' && !window.__cdsOld") is not True:
            if time.monotonic() > deadline:
                raise BrowserError("the page did not finish loading")
            time.sleep(0.05)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session)
        if "exceptionDetails" in result:
            raise BrowserError(f"script error: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            width = self.evaluate("document.documentElement.scrollWidth")
            height = self.evaluate("document.documentElement.scrollHeight")
            params["clip"] = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
        data = self.send("Page.captureScreenshot", params, self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def pdf(self, path: Path) -> Path:
        data = self.send("Page.printToPDF", {"printBackground": False}, self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close")
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)
