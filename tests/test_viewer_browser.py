"""The viewer in a real browser: ``streamlit run apps/viewer.py`` on a free localhost port, opened in
headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) through the DevTools protocol.

The test waits until the sample explorer has rendered (Streamlit draws client-side), asserts that
the run's student names and loaded images are in the page and that no exception is shown, and saves
a screenshot (``XKD_UPDATE_SCREENSHOT=1`` also writes it to docs/viewer_sample_explorer.png, the
picture in the README). Every wait is bounded and both processes are stopped in ``finally``.

Without Chromium (or the ``websockets`` package that drives it) the test skips with a one-line
reason, so the README's test command passes on a machine with nothing but Python; with
``XKD_REQUIRE_BROWSER=1`` (set by ``.ci/run``) it fails instead, so CI cannot skip it silently.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.test_viewer import ROOT, STUDENTS, VIEWER, build_runs_root

DOCS_SHOT = ROOT / "docs" / "viewer_sample_explorer.png"
SIZE = (1400, 1600)
PROBE = """(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const imgs = main ? [...main.querySelectorAll('img')] : [];
  return JSON.stringify({
    text: main ? main.innerText : '',
    images: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    media: imgs.filter(i => (i.getAttribute('src') || '').includes('/media/')).length,
    exception: !!document.querySelector('[data-testid="stException"]'),
    running: !!document.querySelector('[data-testid="stStatusWidgetRunningIcon"]'),
  });
})()"""


def get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - localhost only
        return r.read()


def wait_for(what: str, probe, deadline: float, proc: subprocess.Popen, log: Path):
    """Call ``probe`` until it returns something truthy; fail with the log when time is up."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            out = probe()
        except (OSError, RuntimeError, ValueError):  # not up yet, or the page is still navigating
            out = None
        if out:
            return out
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen | None) -> None:
    """Stop a process started here (and its own process group) by its id."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


class CDP:
    """The few DevTools-protocol calls the test needs, over the page's websocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.n = 0

    def call(self, method: str, timeout: float = 30.0, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, end - time.monotonic())))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")


def explore(cdp: CDP, url: str, server: subprocess.Popen, log: Path) -> bytes:
    """Open the sample explorer, wait until it has rendered and settled, check it, screenshot it."""
    cdp.call("Emulation.setDeviceMetricsOverride", width=SIZE[0], height=SIZE[1], deviceScaleFactor=1,
             mobile=False)
    cdp.call("Page.navigate", url=url)
    seen: list[dict] = []

    def rendered():
        state = json.loads(cdp.evaluate(PROBE) or "{}")
        seen.append(state)
        done = (state.get("images", 0) >= 3 and not state.get("running")
                and all(s in state.get("text", "") for s in STUDENTS))
        return state if done and len(seen) > 1 and seen[-2].get("images") == state["images"] else None

    state = wait_for("the sample explorer to render", rendered, time.monotonic() + 90, server, log)
    assert not state["exception"], state["text"][:2000]
    assert "Sample explorer" in state["text"] and "Worst-aligned first" in state["text"]
    for s in STUDENTS:
        assert s in state["text"]
    assert "ground-truth mask" in state["text"] and "stage0 own 32×32" in state["text"]
    assert state["media"] >= 3  # the image tiles come from the app's media endpoint
    return base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])


BROWSERS = ("chromium", "chromium-browser", "google-chrome")
REQUIRE = "XKD_REQUIRE_BROWSER"


def browser_or_skip(path: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The Chromium executable on ``path`` (default ``$PATH``). When it or the ``websockets`` package
    is missing: skip with a one-line reason, or fail when ``env`` (default ``os.environ``) has
    ``XKD_REQUIRE_BROWSER=1``."""
    env = os.environ if env is None else env
    exe = next((found for n in BROWSERS if (found := shutil.which(n, path=path))), None)
    missing = ([] if exe else ["headless Chromium (apt-get install chromium)"]) + (
        [] if importlib.util.find_spec("websockets") else ["the websockets package"])
    if not missing:
        return exe
    why = f"{' and '.join(missing)} not found; .ci/run installs it"
    if env.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {why}", pytrace=False)
    pytest.skip(why)


def run_browser(root: Path, tmp_path: Path, server_out, browser_out) -> bytes:
    """Start the server and the browser, render the explorer, return its screenshot; stop both."""
    from websockets.sync.client import connect

    exe = browser_or_skip()
    port, dport = free_port(), free_port()
    log, clog = Path(server_out.name), Path(browser_out.name)
    server = browser = None
    try:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(VIEWER), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
             "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer", "--", "--runs", str(root)],
            cwd=ROOT, env={**os.environ, "XKD_NO_PROGRESS": "1"}, stdout=server_out, stderr=subprocess.STDOUT,
            start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        wait_for("the streamlit health endpoint", lambda: get(f"{base}/_stcore/health") == b"ok",
                 time.monotonic() + 60, server, log)
        browser = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--hide-scrollbars", "--mute-audio", f"--remote-debugging-port={dport}", "--remote-allow-origins=*",
             f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={SIZE[0]},{SIZE[1]}", "about:blank"],
            stdout=browser_out, stderr=subprocess.STDOUT, start_new_session=True)

        def page_target():
            pages = [t for t in json.loads(get(f"http://127.0.0.1:{dport}/json/list")) if t.get("type") == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        url = wait_for("the Chromium DevTools endpoint", page_target, time.monotonic() + 30, browser, clog)
        with connect(url, max_size=None, open_timeout=20) as ws:
            return explore(CDP(ws), f"{base}/?page=explorer&run=quick", server, log)
    finally:
        stop(browser)
        stop(server)


def test_browser_or_skip_decides_without_launching(tmp_path: Path):
    """Absent browser: skip, or fail under XKD_REQUIRE_BROWSER=1; present: its path (never run)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for env in ({}, {REQUIRE: "0"}, {REQUIRE: ""}):
        with pytest.raises(pytest.skip.Exception, match=r"^headless Chromium .* not found; \.ci/run installs it$"):
            browser_or_skip(path=str(empty), env=env)
    with pytest.raises(pytest.fail.Exception, match=r"^XKD_REQUIRE_BROWSER=1 but headless Chromium"):
        browser_or_skip(path=str(empty), env={REQUIRE: "1"})
    fake = tmp_path / "bin" / "chromium"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    if importlib.util.find_spec("websockets"):
        for env in ({}, {REQUIRE: "1"}):
            assert browser_or_skip(path=str(fake.parent), env=env) == str(fake)
    fake.chmod(0o644)  # not executable: not a browser
    with pytest.raises(pytest.skip.Exception):
        browser_or_skip(path=str(fake.parent), env={})


def test_sample_explorer_renders_in_chromium(tmp_path_factory, tmp_path: Path):
    browser_or_skip()
    root = build_runs_root(tmp_path_factory)
    logs = tmp_path / "streamlit.log", tmp_path / "chromium.log"
    with logs[0].open("wb") as server_out, logs[1].open("wb") as browser_out:
        png = run_browser(root, tmp_path, server_out, browser_out)
    shot = Image.open(io.BytesIO(png)).convert("RGB")
    assert shot.size == SIZE
    px = np.asarray(shot).reshape(-1, 3)
    assert (px.min(axis=1) < 235).mean() > 0.05, "the screenshot is (almost) blank"
    assert len(np.unique(px[::7], axis=0)) > 200, "the screenshot has too few colours to show maps"
    small = shot.quantize(colors=256)
    out = tmp_path / DOCS_SHOT.name
    small.save(out, optimize=True)
    assert out.stat().st_size < 500_000
    if os.environ.get("XKD_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(out, DOCS_SHOT)
