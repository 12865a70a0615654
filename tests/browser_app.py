"""Run the real app for a browser: a Streamlit server on a free port with its own run store, and Debian's
chromium driven by Playwright. Used by tests/test_browser.py and benchmarks/app_latency.py."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def add_teacher_run(home: Path, checkpoint: str | Path, name: str) -> str:
    """Put a checkpoint into a run store as a finished teacher run; returns the run id."""
    from dfkd_core.models import load_checkpoint
    from dfkd_core.runs import RunStore
    ckpt = load_checkpoint(checkpoint)
    run = RunStore(home).create("teacher", {"imported": str(checkpoint)}, method=ckpt.name,
                                dataset=ckpt.dataset.name, name=name)
    shutil.copy(checkpoint, run.path("model.pt"))
    run.set_status("done", summary={**ckpt.metrics, "model": ckpt.name, "dataset": ckpt.dataset.name})
    return run.id


@contextmanager
def serve_app(home: Path, port: int | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Start `streamlit run app.py` with DFKD_HOME=home; yields its URL; kills the server (and only it) after."""
    port = port or free_port()
    env = {**os.environ, "DFKD_HOME": str(home)}
    log_path = Path(home) / f"server-{port}.log"   # several servers may share one run store
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port",
                               str(port), "--server.headless", "true"], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the app did not start; see {log_path}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@contextmanager
def chromium():
    """Debian's chromium, headless; each `browser.new_page()` is a context of its own (a new app session)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def chromium_page(width: int = 1400, height: int = 1000):
    with chromium() as browser:
        yield browser.new_page(viewport={"width": width, "height": height})


# A MutationObserver that timestamps (performance.now()) every new live grid image and every progress text, so
# latencies are measured in the browser, where the user sees them.
WATCH_JS = """() => {
  window.__grids = []; window.__progress = [];
  const seen = new Set();
  const scan = () => {
    const t = performance.now();
    document.querySelectorAll('[data-testid="stImage"] img').forEach(img => {
      if (img.src && !seen.has(img.src)) { seen.add(img.src); window.__grids.push([t, img.src]); }
    });
    const p = document.querySelector('[data-testid="stProgress"]');
    const text = p ? p.innerText : '';
    const last = window.__progress[window.__progress.length - 1];
    if (text && (!last || last[1] !== text)) window.__progress.push([t, text]);
  };
  new MutationObserver(scan).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     characterData: true});
  scan();
}"""
