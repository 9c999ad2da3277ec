"""The HTML report in a real browser (headless Debian chromium): it renders, no image is broken, no request leaves.

Requests are observed through the DevTools protocol over a pipe (`--remote-debugging-pipe`, no websocket, no
new dependency): Network.requestWillBeSent lists every request the PAGE makes — including ones its CSP
blocks — and none of chromium's own background traffic. A negative control runs the same checks on a copy
of the report with a broken image and external URLs injected, so the detectors are proven on every run.
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
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_report import real_results_files

from roofline import results
from roofline.render import html as report

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CSP_PROBE = ("window.__csp = []; document.addEventListener('securitypolicyviolation', "
             "function (e) { window.__csp.push(e.blockedURI); });")
PAGE_STATE = """JSON.stringify({
  images: document.images.length,
  broken: Array.prototype.filter.call(document.images, function (i) { return !(i.complete && i.naturalWidth > 0); })
    .map(function (i) { return i.src.slice(0, 60); }),
  csp: window.__csp,
  rows: document.querySelectorAll("table.ops tbody tr").length })"""


class DevTools:
    """Headless chromium driven over the DevTools protocol on fds 3 (commands in) and 4 (replies out)."""

    def __init__(self, user_dir: Path) -> None:
        child_in, self._to_child = os.pipe()
        self._from_child, child_out = os.pipe()

        def wire_fds() -> None:  # runs in the child: the protocol wants exactly fds 3 and 4
            a, b = fcntl.fcntl(child_in, fcntl.F_DUPFD, 10), fcntl.fcntl(child_out, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={user_dir}", "--remote-debugging-pipe",  # type: ignore[list-item]
                                      "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=wire_fds, close_fds=False)
        os.close(child_in)
        os.close(child_out)
        self._buffer, self._id, self.events = b"", 0, []  # type: tuple[bytes, int, list[dict[str, Any]]]

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                assert "error" not in reply, f"{method}: {reply.get('error')}"
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._read())

    def _read(self, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._from_child], [], [], left)[0], "chromium stopped answering"
            chunk = os.read(self._from_child, 1 << 20)
            assert chunk, "chromium exited"
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_child)
        os.close(self._from_child)


def open_page(path: Path, user_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Load a page, return (its state after the load event, every non-data: URL it requested besides itself)."""
    browser = DevTools(user_dir)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network.enable", "Page.enable"):
            browser.call(domain, session=session)
        browser.call("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_PROBE}, session=session)
        browser.call("Page.navigate", {"url": path.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        state = browser.call("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True},
                             session=session)["result"]["value"]
        requested = [e["params"]["request"]["url"] for e in browser.events
                     if e.get("method") == "Network.requestWillBeSent"]
    finally:
        browser.close()
    return json.loads(state), [u for u in requested if not u.startswith("data:") and u != path.as_uri()]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser-report")
    loaded = [results.load(p) for p in real_results_files(tmp_path_factory)]
    report.render_all(loaded[:1], out, png=False, svg=False)
    return out / "report.html"


def test_screenshot_is_not_blank(page: Path, tmp_path: Path) -> None:
    import matplotlib.image

    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",  # type: ignore[list-item]
                    "--window-size=1280,2000", page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    assert 0.03 < float(np.mean(np.any(pixels < 0.97, axis=-1))) < 0.8
    assert len(np.unique((pixels[::3, ::3].reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 100


def test_no_broken_image_and_no_request(page: Path, tmp_path: Path) -> None:
    state, requested = open_page(page, tmp_path / "profile")
    assert state["broken"] == [], "broken images"
    assert requested == [] and state["csp"] == [], "the page made requests"
    assert state["images"] == 2 and state["rows"] > 0


def test_the_checks_catch_a_broken_image_and_an_external_url(page: Path, tmp_path: Path) -> None:
    """The negative control: inject what must never be there and see each detector fire."""
    html = page.read_text()
    bad = ('<img src="data:image/png;base64,AAAA" alt="broken"><img src="https://example.com/pixel.png" alt="x">'
           '<link rel="stylesheet" href="https://fonts.example.com/inter.css">')
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("<footer>", bad + "<footer>"))
    state, requested = open_page(broken, tmp_path / "profile")
    assert len(state["broken"]) == 2
    assert set(requested) == {"https://example.com/pixel.png", "https://fonts.example.com/inter.css"}
    assert len(state["csp"]) == 2  # the report's Content Security Policy blocked both


def test_columns_sort_on_click(page: Path, tmp_path: Path) -> None:
    """The inline script: a click on 'time' orders rows by their median, blanks (skipped rows) last."""
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=session)
        browser.call("Page.navigate", {"url": page.as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired")
        script = """(function () {
          var table = document.querySelector("table.ops"), heads = table.tHead.rows[0].cells, col = -1;
          for (var i = 0; i < heads.length; i++) if (heads[i].textContent.trim() === "time") col = i;
          heads[col].click(); heads[col].click();
          return JSON.stringify(Array.prototype.map.call(table.tBodies[0].rows,
            function (r) { return r.cells[col].getAttribute("data-sort"); }));
        })()"""
        keys = json.loads(browser.call("Runtime.evaluate", {"expression": script, "returnByValue": True},
                                       session=session)["result"]["value"])
    finally:
        browser.close()
    times = [float(k) for k in keys if k]
    assert times == sorted(times, reverse=True) and len(times) >= 2
    assert all(k == "" for k in keys[len(times):])  # blanks last, after every measured row


def test_screenshot_png_decodes(tmp_path: Path) -> None:
    """Guard for the DevTools helper itself: a capture comes back as a real PNG."""
    target_page = tmp_path / "tiny.html"
    target_page.write_text("<!doctype html><p style='font-size:40px'>roofline</p>")
    browser = DevTools(tmp_path / "profile")
    try:
        target = browser.call("Target.createTarget", {"url": target_page.as_uri()})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        data = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
    finally:
        browser.close()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
