"""Drive a headless Chromium over the DevTools protocol, with nothing but the standard library.

Chromium's ``--remote-debugging-pipe`` speaks the DevTools protocol as
NUL-terminated JSON on file descriptors 3 (commands in) and 4 (replies and
events out), so no WebSocket client and no browser download is needed: the
system's Chromium (Debian's ``chromium`` package) is enough. Used by the
browser tests and by ``tools/screenshots.py``.

    with Browser.launch() as browser:
        page = browser.new_page(width=390, height=844, mobile=True)
        page.goto("http://127.0.0.1:8080/")
        page.evaluate("document.title")
        png = page.screenshot(full_page=True)
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

__all__ = ["Browser", "BrowserError", "Page", "find_chromium"]

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Without the networking switches Chromium reaches out to Google's hosts at start.
_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-features=Translate,MediaRouter",
    "--hide-scrollbars", "--mute-audio", "--remote-debugging-pipe",
)


def _stderr() -> int:
    """Where Chromium's own chatter goes: a file named by $CHROMIUM_LOG, else nowhere."""
    path = os.environ.get("CHROMIUM_LOG")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else \
        subprocess.DEVNULL


class BrowserError(RuntimeError):
    """Chromium is missing, died, or answered a command with an error."""


def find_chromium() -> Optional[str]:
    """The Chromium executable: ``$CHROMIUM``, else the first known name on PATH."""
    given = os.environ.get("CHROMIUM")
    if given:
        return given if shutil.which(given) else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class _Connection:
    """The pipe pair, a reader thread, and replies matched to commands by id."""

    def __init__(self, process: subprocess.Popen[bytes], commands: int, replies: int) -> None:
        self._process = process
        self._commands = os.fdopen(commands, "wb", buffering=0)
        self._replies = os.fdopen(replies, "rb", buffering=0)
        self._next_id = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition()
        self._results: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._replies.read(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with self._arrived:
                    self._closed = True
                    self._arrived.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._arrived:
                    if "id" in message:
                        self._results[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._arrived.notify_all()

    def call(self, method: str, params: Optional[dict[str, Any]] = None,
             session: Optional[str] = None, timeout: float = 30.0) -> dict[str, Any]:
        with self._lock:
            self._next_id += 1
            command_id = self._next_id
            message: dict[str, Any] = {"id": command_id, "method": method,
                                       "params": params or {}}
            if session is not None:
                message["sessionId"] = session
            try:
                self._commands.write(json.dumps(message).encode() + b"\0")
            except OSError as exc:
                raise BrowserError(f"{method}: Chromium is gone ({exc})") from None
        with self._arrived:
            if not self._arrived.wait_for(
                    lambda: command_id in self._results or self._closed, timeout):
                raise BrowserError(f"{method}: no answer within {timeout} s")
            if command_id not in self._results:
                raise BrowserError(f"{method}: Chromium closed the connection")
            reply = self._results.pop(command_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return dict(reply.get("result", {}))

    def wait_for_event(self, method: str, session: Optional[str], since: int,
                       timeout: float) -> dict[str, Any]:
        """The first event ``method`` for ``session`` at or after index ``since``."""
        def find() -> Optional[dict[str, Any]]:
            for event in self.events[since:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            return None

        with self._arrived:
            if not self._arrived.wait_for(lambda: find() is not None or self._closed, timeout):
                raise BrowserError(f"no {method} within {timeout} s")
            found = find()
        if found is None:
            raise BrowserError(f"Chromium closed before {method}")
        return found

    def close(self) -> None:
        for stream in (self._commands, self._replies):
            with contextlib.suppress(OSError):
                stream.close()


class Page:
    """One tab, with the few things a test or a screenshot needs."""

    def __init__(self, connection: _Connection, session: str) -> None:
        self._connection = connection
        self._session = session

    def call(self, method: str, params: Optional[dict[str, Any]] = None,
             timeout: float = 30.0) -> dict[str, Any]:
        return self._connection.call(method, params, self._session, timeout)

    def goto(self, url: str, timeout: float = 30.0) -> None:
        """Navigate and wait for the load event."""
        since = len(self._connection.events)
        result = self.call("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        self._connection.wait_for_event("Page.loadEventFired", self._session, since, timeout)

    def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        """The value of a JavaScript expression (promises awaited), as JSON would carry it."""
        result = self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        }, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}")
        return result.get("result", {}).get("value")

    def wait_until(self, expression: str, timeout: float = 15.0) -> Any:
        """Evaluate ``expression`` until it is truthy; its value, or BrowserError at timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)

    def before_each_document(self, source: str) -> None:
        """Run ``source`` in every document this page loads, before the page's own scripts."""
        self.call("Page.addScriptToEvaluateOnNewDocument", {"source": source})

    def screenshot(self, full_page: bool = True) -> bytes:
        """A PNG of the viewport, or of the whole page's height."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params.update(captureBeyondViewport=True, clip={
                "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])


class Browser:
    """A headless Chromium process and its DevTools connection."""

    def __init__(self, process: subprocess.Popen[bytes], connection: _Connection,
                 profile: str) -> None:
        self._process = process
        self._connection = connection
        self._profile = profile

    @classmethod
    def launch(cls, executable: Optional[str] = None) -> Browser:
        """Start Chromium headless with a fresh profile; BrowserError if it cannot be had."""
        path = executable or find_chromium()
        if path is None:
            raise BrowserError("no Chromium found (install Debian's 'chromium' package, or set "
                               "CHROMIUM to its path)")
        profile = tempfile.mkdtemp(prefix="massugc-chromium-")
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        # The shell moves the pipe ends to the descriptors Chromium expects, 3 and 4, by
        # way of two descriptors above both, since os.pipe() may have handed out 3 or 4.
        a = max(commands_read, replies_write) + 1
        b = a + 1
        script = (f"exec {a}<&{commands_read} {b}>&{replies_write} {commands_read}<&- "
                  f'{replies_write}>&- && exec "$0" "$@" 3<&{a} 4>&{b} {a}<&- {b}>&-')
        # bash, not sh: dash cannot name a descriptor above 9.
        process = subprocess.Popen(  # noqa: S603 (the executable is the caller's Chromium)
            [shutil.which("bash") or "bash", "-c", script, path, *_FLAGS,
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(commands_read, replies_write), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=_stderr(),
        )
        os.close(commands_read)
        os.close(replies_write)
        browser = cls(process, _Connection(process, commands_write, replies_read), profile)
        try:
            version = browser._connection.call("Browser.getVersion", timeout=60)
        except BrowserError:
            browser.close()
            raise
        browser.version = str(version.get("product", ""))
        return browser

    version = ""

    def new_page(self, width: int, height: int, *, mobile: bool = False) -> Page:
        """A new tab with this viewport; ``mobile`` honours ``<meta name="viewport">``."""
        target = self._connection.call("Target.createTarget", {"url": "about:blank"})
        session = self._connection.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )["sessionId"]
        page = Page(self._connection, session)
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        if mobile:
            page.call("Emulation.setTouchEmulationEnabled", {"enabled": True})
        return page

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self._connection.call("Browser.close", timeout=5)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._connection.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def browser_page(width: int, height: int, *, mobile: bool = False) -> Iterator[Page]:
    """A one-page browser, for scripts."""
    with Browser.launch() as browser:
        yield browser.new_page(width, height, mobile=mobile)
