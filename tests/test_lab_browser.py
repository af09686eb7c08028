"""Open the lab report in a real headless browser: every figure loads, nothing errors.

Chromium is driven over the DevTools protocol through ``--remote-debugging-pipe`` (fds 3 and
4, NUL-separated JSON), so no WebSocket client or other dependency is needed. CI installs
Debian's chromium (``apt-get install -y chromium``); there a missing browser is a failure,
elsewhere the test is skipped.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from lab_support import quick_report

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CONSOLE_EVENTS = ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")


def find_chromium() -> str:
    for name in (os.environ.get("CHROMIUM"), *CANDIDATES):
        if name and (path := shutil.which(name)):
            return path
    message = "no chromium found (install it with: apt-get install -y chromium, or set CHROMIUM=/path/to/it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


class Chromium:
    """A headless chromium and a minimal DevTools-protocol client over its debugging pipe."""

    def __init__(self, binary: str, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="lab-chromium-")
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        args = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--no-first-run", "--no-default-browser-check", "--mute-audio",
            f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank",
        ]  # fmt: skip
        # chromium reads commands on fd 3 and writes replies on fd 4
        shell = f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self.proc = subprocess.Popen(
            ["bash", "-c", shell, "bash", *args],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.last_id = 0
        self.events: list[dict[str, Any]] = []

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self.from_browser], [], [], left)
            if ready:
                chunk = os.read(self.from_browser, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise RuntimeError(f"chromium closed its debugging pipe:\n{err[-3000:]}")
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, predicate: Any) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._message(deadline)
            if "method" in message:
                self.events.append(message)
            if predicate(message):
                return message

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self.last_id += 1
        command: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self.to_browser, json.dumps(command).encode() + b"\0")
        my_id = self.last_id
        reply = self.wait_for(lambda m: m.get("id") == my_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def open(self, url: str) -> tuple[str, list[dict[str, Any]]]:
        """Load ``url`` in a new tab; returns the tab's session and the images' load status."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session)
        script = (
            "JSON.stringify([...document.images].map(i => ({src: i.getAttribute('src'), "
            "complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))"
        )
        value = self.send("Runtime.evaluate", {"expression": script, "returnByValue": True}, session=session)
        time.sleep(0.2)  # let late console messages arrive
        self.send("Runtime.evaluate", {"expression": "1"}, session=session)
        return session, json.loads(value["result"]["value"])

    def problems(self, session: str) -> list[str]:
        """Console errors/warnings, uncaught exceptions and browser log errors of a tab."""
        out = []
        for e in self.events:
            if e.get("sessionId") != session or e["method"] not in CONSOLE_EVENTS:
                continue
            p = e["params"]
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                out.append(
                    f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}"
                )
            elif e["method"] == "Runtime.exceptionThrown":
                out.append(
                    f"exception: {p['exceptionDetails'].get('text')} {p['exceptionDetails'].get('exception', {}).get('description', '')}"
                )
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def close(self) -> None:
        try:
            os.write(self.to_browser, json.dumps({"id": 10**9, "method": "Browser.close"}).encode() + b"\0")
        except OSError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_browser, self.from_browser):
            os.close(fd)
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Any:
    b = Chromium(find_chromium())
    yield b
    b.close()


def test_the_checker_sees_broken_images_and_console_errors(browser: Chromium, tmp_path: Path) -> None:
    """The negative control: a page with a missing image and a console error is caught."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><body><img src="missing.png"><script>console.error("boom")</script></body></html>'
    )
    session, images = browser.open(page.as_uri())
    assert images == [{"src": "missing.png", "complete": True, "width": 0, "height": 0}]
    problems = browser.problems(session)
    assert any("boom" in p for p in problems), problems


def test_report_opens_in_a_real_browser(browser: Chromium, tmp_path_factory: pytest.TempPathFactory) -> None:
    report = quick_report(tmp_path_factory)
    summary = json.loads((report / "summary.json").read_text())
    session, images = browser.open((report / "index.html").as_uri())
    assert [i["src"] for i in images] == summary["figures"]
    assert len(images) >= 12
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, image
    assert browser.problems(session) == []
