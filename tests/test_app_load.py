"""The app under load and faults, in a real browser against one real server: four users synthesizing at once, and
a server killed outright mid-job."""
import json
import os
import re
import signal
import time

import pytest
import torch

from browser_app import add_teacher_run, chromium_page, serve_app
from dfkd_core.runs import RunStore

pytestmark = pytest.mark.browser

# Four users, each with their own seed and length of run, so every run can be traced back to the one who made it.
USERS = [{"seed": 0, "iterations": 50}, {"seed": 1, "iterations": 100}, {"seed": 2, "iterations": 200},
         {"seed": 3, "iterations": 300}]
ITERATION_OPTIONS = (50, 100, 200, 300, 500, 1000, 2000)   # the Synthesize page's slider (digits default: 200)


def set_slider(page, label: str, steps_right: int) -> None:
    """Move a select_slider from its first option `steps_right` options to the right, by keyboard as a user can."""
    # By aria-label: the accessible name repeats the label ("iterations iterations"), and a substring match would
    # also take "half-resolution iterations k".
    thumb = page.locator(f'input[type=range][aria-label="{label}"]')
    thumb.focus()
    thumb.press("Home")
    for _ in range(steps_right):
        thumb.press("ArrowRight")
    page.wait_for_function("([label, index]) => [...document.querySelectorAll('input[type=range]')].some("
                           "s => s.getAttribute('aria-label') === label && s.value === index)",
                           arg=[label, str(steps_right)], timeout=30_000)


def open_synthesize(page, url: str, user: dict) -> None:
    page.goto(url)
    page.get_by_role("button", name="Start").wait_for(timeout=60_000)
    set_slider(page, "pace (steps per second)", 0)    # 0 = as fast as the machine allows
    set_slider(page, "seed", user["seed"])
    set_slider(page, "iterations", ITERATION_OPTIONS.index(user["iterations"]))


@pytest.mark.slow   # ~60-100 s on 2 loaded cores: four browser sessions polling one server while four jobs run
def test_four_users_synthesize_at_once_each_on_their_own_run(tmp_path, digits_teacher, monkeypatch):
    monkeypatch.setenv("DFKD_MAX_JOBS", "4")   # one job each (the 2-core default would refuse two of them)
    add_teacher_run(tmp_path, digits_teacher.path, "bncnn3_w32 on digits")
    t0 = time.time()
    with serve_app(tmp_path) as url, chromium_page() as first:
        pages = [first] + [first.context.browser.new_page() for _ in USERS[1:]]
        for page, user in zip(pages, USERS):
            open_synthesize(page, url, user)
        for page in pages:   # as close together as four clicks can be
            page.get_by_role("button", name="Start").click()
        started = time.time()
        for page, user in zip(pages, USERS):
            page.get_by_text(f"done · step {user['iterations']}/{user['iterations']}").first.wait_for(
                timeout=120_000)
        finished = time.time()
        job_ids = [re.search(r"job=(\w+)", page.url).group(1) for page in pages]
    runs = RunStore(tmp_path).list(kind="synthesis")
    assert len(set(job_ids)) == 4 and len(runs) == 4 and all(r.status == "done" for r in runs)
    by_seed = {RunStore(tmp_path).get(r.id).config()["seed"]: r for r in runs}
    for user in USERS:
        run = RunStore(tmp_path).get(by_seed[user["seed"]].id)
        assert run.config()["iterations"] == user["iterations"] and len(run.metrics()) == user["iterations"]
    print(f"\n4 users: pages ready and started {started - t0:.1f} s after the server start, all done "
          f"{finished - started:.1f} s after the clicks")


@pytest.mark.slow   # ~10 s; tests/test_faults.py kills a JobManager process (the app's job runner) in the default suite
def test_server_killed_mid_synthesis_leaves_an_interrupted_run_with_its_images(tmp_path, digits_teacher,
                                                                                monkeypatch):
    monkeypatch.setenv("DFKD_PROGRESS_EVERY_S", "0.3")
    add_teacher_run(tmp_path, digits_teacher.path, "bncnn3_w32 on digits")
    store = RunStore(tmp_path)
    with serve_app(tmp_path) as url, chromium_page() as page:
        page.goto(url)
        page.get_by_role("button", name="Start").wait_for(timeout=60_000)
        set_slider(page, "iterations", ITERATION_OPTIONS.index(2000))
        page.get_by_role("button", name="Start").click()
        deadline = time.time() + 60
        while not [r for r in store.list(kind="synthesis")
                   if (r.dir / "images.pt").exists() and (r.dir / "grid.png").exists()]:
            assert time.time() < deadline, "no progress saved"
            time.sleep(0.1)
        [run] = store.list(kind="synthesis")
        server_pid = json.loads((run.dir / "run.json").read_text())["pid"]
        os.kill(server_pid, signal.SIGKILL)   # serve_app reaps it on the way out
    [record] = RunStore(tmp_path).list(kind="synthesis")   # the next start
    assert record.status == "interrupted"
    saved = torch.load(record.dir / "images.pt", weights_only=True)
    assert saved["images"].shape[0] == 100 and (record.dir / "grid.png").is_file()
