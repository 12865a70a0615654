"""Latency of the live Synthesize page, measured in a real browser (Debian chromium via Playwright).

For each dataset: start the app on a fresh run store, open Synthesize, press Start on the default DeepInversion
preset and record in the browser (performance.now(), MutationObserver) when each new image grid and each progress
text appears; move the α_f slider and time until the job applies it; press Stop and time until the page shows
'cancelled', counting the steps the job made after the click.

    python benchmarks/app_latency.py                                   # digits (+ Fashion-MNIST if a teacher is given)
    python benchmarks/app_latency.py --fashion-teacher PATH.pt --screenshots docs/images
    python benchmarks/app_latency.py --repeat 0 --distill-screenshot docs/images/distill_digits.png

Prints a markdown table. Numbers depend on the machine's load, which is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from browser_app import WATCH_JS, add_teacher_run, chromium_page, serve_app  # noqa: E402

CLICK_JS = """(label) => {
  const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === label);
  const t = performance.now(); b.click(); return t;
}"""


def latest_run(home: Path) -> Path | None:
    runs = sorted((home / "runs").glob("synthesis-*"))
    return runs[-1] if runs else None


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def first_event(home: Path, key: str) -> dict | None:
    run = latest_run(home)
    return next((e for e in read_jsonl(run / "events.jsonl") if key in e), None) if run else None


def measure(page, url: str, home: Path, window_s: float, screenshot: Path | None) -> dict:
    page.goto(url)
    page.get_by_role("button", name="Start").wait_for(timeout=600_000)
    page.wait_for_timeout(2000)  # a user reads the page before pressing Start
    page.evaluate(WATCH_JS)
    t_start = page.evaluate(CLICK_JS, "Start")
    page.wait_for_function("window.__grids.length >= 1", timeout=60_000)
    first_grid = page.evaluate("window.__grids[0][0]")
    page.wait_for_timeout(window_s * 1000 / 2)
    steady_end = page.evaluate("performance.now()")
    # Steer: one step left on the α_f slider (1 -> 0.3); the job logs the step where it took effect.
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="α_f").get_by_role("slider")
    slider.focus()
    t_key = time.time()
    page.keyboard.press("ArrowLeft")
    applied = None
    while time.time() - t_key < 10 and applied is None:
        applied = (first_event(home, "updated") or {}).get("time")
        time.sleep(0.01)
    page.wait_for_timeout(window_s * 1000 / 2)
    window_end = page.evaluate("performance.now()")
    if screenshot is not None:  # mid-run, the α_f change marked on the curves
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))
    t_stop = page.evaluate(CLICK_JS, "Stop")
    page.get_by_text(re.compile(r"(cancelled|done) · step")).first.wait_for(timeout=60_000)
    page.wait_for_timeout(300)
    progress = page.evaluate("window.__progress")
    grids = [t for t, _ in page.evaluate("window.__grids") if first_grid <= t <= steady_end]
    cancelled_at = next((t for t, text in progress if "cancelled" in text), None)  # None: it finished first
    requested = first_event(home, "cancel_requested")
    ui_times = [t for t, _ in progress if first_grid <= t <= window_end]
    steps = [int(text.split("step ")[1].split("/")[0]) for t, text in progress if "running" in text]
    seconds = (window_end - first_grid) / 1000
    return {"load": os.getloadavg()[0], "first_grid_s": (first_grid - t_start) / 1000,
            "grid_refresh_per_s": (len(grids) - 1) / ((steady_end - first_grid) / 1000),
            "max_ui_gap_s": max(b - a for a, b in zip(ui_times, ui_times[1:])) / 1000 if len(ui_times) > 1
            else float("nan"),
            "steps_per_s": (max(steps) - min(steps)) / seconds if steps else float("nan"),
            "knob_to_job_s": (applied - t_key) if applied else float("nan"),
            "stop_to_shown_s": (cancelled_at - t_stop) / 1000 if cancelled_at else float("nan"),
            # steps the job finished after the server received Stop (the job logs the request with its step)
            "steps_after_stop": len(read_jsonl(latest_run(home) / "metrics.jsonl")) - requested["step"]
            if requested else "n/a"}


def distill_screenshot(page, url: str, path: Path, images: int = 600) -> None:
    """The Distill page mid-run: default DeepInversion distillation of the stored teacher, captured once `images`
    images have been synthesized (curves, samples and phase all showing), then stopped."""
    page.set_viewport_size({"width": 1400, "height": 1900})  # the whole live view, KD loss included
    page.goto(f"{url}/distill")
    page.get_by_role("button", name="Start").wait_for(timeout=600_000)
    page.wait_for_timeout(1000)
    page.evaluate(CLICK_JS, "Start")
    page.wait_for_function("""(n) => { const p = document.querySelector('[data-testid="stProgress"]');
        const m = p && p.innerText.match(/(\\d+) images synthesized/); return m && +m[1] >= n; }""",
                           arg=images, timeout=600_000)
    page.wait_for_timeout(1500)  # the curves' fragment refreshes every 0.5 s
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.evaluate(CLICK_JS, "Stop")
    page.get_by_text(re.compile(r"(cancelled|done) · phase")).first.wait_for(timeout=120_000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fashion-teacher", help="a Fashion-MNIST teacher checkpoint (skipped if not given)")
    p.add_argument("--screenshots", type=Path, help="folder for mid-run screenshots of the Synthesize page")
    p.add_argument("--window", type=float, default=5.0, help="seconds of live view measured per run")
    p.add_argument("--repeat", type=int, default=1, help="runs per dataset (the machine's load varies)")
    p.add_argument("--distill-screenshot", type=Path, help="PNG of the Distill page mid-run on digits")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, chromium_page(1400, 1200) as page:
        home = Path(tmp) / "digits"
        home.mkdir()
        with serve_app(home) as url:
            t0 = time.time()
            page.goto(url)  # empty run store: the starter digits teacher trains first
            page.get_by_role("button", name="Start").wait_for(timeout=600_000)
            first_launch = time.time() - t0
            shot = args.screenshots / "synthesize_digits.png" if args.screenshots else None
            for _ in range(args.repeat):
                rows.append(("digits", "bncnn3_w32 (starter)", measure(page, url, home, args.window, shot)))
            if args.distill_screenshot:
                distill_screenshot(page, url, args.distill_screenshot)
        if args.fashion_teacher:
            home = Path(tmp) / "fashion"
            home.mkdir()
            teacher = add_teacher_run(home, args.fashion_teacher, "bncnn6_w32 on fashion-mnist")
            with serve_app(home) as url:
                shot = args.screenshots / "synthesize_fashion.png" if args.screenshots else None
                for _ in range(args.repeat):
                    rows.append(("fashion-mnist", "bncnn6_w32", measure(page, f"{url}/?teacher={teacher}", home,
                                                                         args.window, shot)))
    print(f"\nfirst launch (empty run store) to Start enabled, digits starter teacher trained: {first_launch:.1f} s")
    print(f"{os.cpu_count()} CPU cores; 'load' is the 1-minute load average when each run ended\n")
    print("| dataset | teacher | first grid after Start (s) | grid refreshes/s | max gap between UI updates, "
          "α_f moved meanwhile (s) | steps/s | α_f slider to job (s) | Stop to 'cancelled' shown (s) "
          "| steps after Stop | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for dataset, teacher, r in rows:
        print(f"| {dataset} | {teacher} | {r['first_grid_s']:.2f} | {r['grid_refresh_per_s']:.1f} | "
              f"{r['max_ui_gap_s']:.2f} | {r['steps_per_s']:.1f} | {r['knob_to_job_s']:.2f} | "
              f"{r['stop_to_shown_s']:.2f} | {r['steps_after_stop']} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
