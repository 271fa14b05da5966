"""Headless Chromium for the report tests, driven by Playwright's Python package on the system's own Chromium
(`executable_path`: nothing is downloaded; `playwright install` is never needed). `skip_reason()` says why the
browser test cannot run here (no Chromium, no playwright), or None."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions", "--disable-background-networking",
        "--no-first-run", "--allow-file-access-from-files"]


def find_chromium() -> str | None:
    """CIRCUITLAB_CHROMIUM, else the first Chromium or Chrome on PATH."""
    explicit = os.environ.get("CIRCUITLAB_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return next((path for path in map(shutil.which, NAMES) if path), None)


def skip_reason() -> str | None:
    missing = []
    if find_chromium() is None:
        missing.append("no Chromium (Debian: apt-get install chromium; .ci/run installs it when it can)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("no playwright (pip install playwright, or the [test] extra; no browser download is needed)")
    return "; ".join(missing) or None


class Browser:
    """One headless Chromium; `open(url)` loads a page in a new tab and reports what happened. A context manager."""

    def __init__(self, executable: str | None = None, timeout_s: float = 60.0):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=executable or find_chromium(), args=ARGS, timeout=timeout_s * 1000)
        except Exception:
            self._playwright.stop()
            raise
        self.timeout_ms = timeout_s * 1000

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self, url: str, screenshot: Path | None = None, script: str | None = None) -> dict:
        """Load `url`; returns the console errors, uncaught exceptions, failed loads and error log entries; the URLs
        requested; every image's (name, naturalWidth); `script`'s value (a JS expression) and the screenshot's path."""
        page = self._browser.new_page()
        page.set_default_timeout(self.timeout_ms)
        errors: list[str] = []
        requests: list[str] = []
        page.on("console", lambda message: errors.append(f"console {message.type}: {message.text}") if message.type in ("error", "assert") else None)
        page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda request: errors.append(f"failed load: {request.url}"))
        page.on("request", lambda request: requests.append(request.url))
        log = page.context.new_cdp_session(page)  # Chromium's own log (blocked loads, security messages)
        log.on("Log.entryAdded", lambda event: errors.append(f"log: {event['entry'].get('text')}") if event["entry"].get("level") == "error" else None)
        log.send("Log.enable")
        try:
            page.goto(url, wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('data-figure') || i.alt, i.complete ? i.naturalWidth : -1])")
            value = page.evaluate(script) if script else None
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            page.close()
        return {"errors": errors, "images": images, "requests": requests, "value": value, "screenshot": screenshot}

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()
