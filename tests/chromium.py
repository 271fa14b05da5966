"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended
by a NUL byte, commands on the child's fd 3, replies and events on its fd 4), so the tests need no websocket or
browser-driver package. `find()` says which Chromium is installed, or None."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find() -> str | None:
    explicit = os.environ.get("CIRCUITLAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((path for path in map(shutil.which, NAMES) if path), None)


def high(*fds: int) -> tuple[int, ...]:
    """The fds moved to numbers >= 10 (close-on-exec), so that wiring them to 3 and 4 in the child clobbers neither."""
    import fcntl

    moved = tuple(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in fds)
    for fd in fds:
        os.close(fd)
    return moved


class Browser:
    """One headless Chromium process; `open(url)` loads a page in a new tab and reports what happened."""

    def __init__(self, executable: str, timeout: float = 60.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="circuitlab-chromium-")
        to_child_r, self._to_child = high(*os.pipe())
        self._from_child, from_child_w = high(*os.pipe())

        def wire() -> None:  # in the child: its fd 3 reads our commands, its fd 4 carries its replies (dup2 makes
            os.dup2(to_child_r, 3)  # them inheritable; every other fd of ours is close-on-exec)
            os.dup2(from_child_w, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-extensions", "--disable-background-networking", "--disable-dev-shm-usage",
             "--allow-file-access-from-files", f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=wire, close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Chromium did not answer (it exited or timed out)")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed its DevTools pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def wait_for(self, method: str, session: str) -> dict:
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._read()
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def open(self, url: str, screenshot: Path | None = None, script: str | None = None) -> dict:
        """Load `url`; returns console errors, uncaught exceptions, the URLs requested, every image's
        (name, naturalWidth), `script`'s value (a JS expression) and the screenshot's path."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        first = len(self.events)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired", session)
        images = self.evaluate("Array.from(document.images).map(i => [i.getAttribute('data-figure') || i.alt, i.complete ? i.naturalWidth : -1])", session)
        value = self.evaluate(script, session) if script else None
        shot = None
        if screenshot is not None:
            data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)["data"]
            screenshot.write_bytes(base64.b64decode(data))
            shot = screenshot
        mine = [e for e in self.events[first:] if e.get("sessionId") == session]
        errors = [e["params"] for e in mine if e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") in ("error", "assert")]
        errors += [e["params"] for e in mine if e.get("method") == "Runtime.exceptionThrown"]
        errors += [e["params"]["entry"] for e in mine if e.get("method") == "Log.entryAdded" and e["params"]["entry"].get("level") == "error"]
        requests = [e["params"]["request"]["url"] for e in mine if e.get("method") == "Network.requestWillBeSent"]
        self.send("Target.closeTarget", {"targetId": target})
        return {"errors": errors, "images": images, "requests": requests, "value": value, "screenshot": shot}

    def evaluate(self, expression: str, session: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self.profile, ignore_errors=True)
