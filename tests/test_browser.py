"""The real app in a real browser: Playwright drives Debian's chromium against a server started here."""
import re

import pytest

from browser_app import WATCH_JS, add_teacher_run, chromium_page, serve_app

pytestmark = pytest.mark.browser


def test_start_on_digits_shows_images_forming_and_a_loss_curve(tmp_path, digits_teacher):
    add_teacher_run(tmp_path, digits_teacher.path, "bncnn3_w32 on digits")
    with serve_app(tmp_path) as url, chromium_page() as page:
        page.goto(url)
        start = page.get_by_role("button", name="Start")
        start.wait_for(timeout=60_000)
        assert page.get_by_text("DeepInversion").first.is_visible()
        page.evaluate(WATCH_JS)
        start.click()

        # The grid appears, then changes: the batch is being optimized in front of the user.
        page.wait_for_function("window.__grids.length >= 1", timeout=30_000)
        page.wait_for_function("window.__grids.length >= 3", timeout=30_000)
        steps = [int(m) for m in re.findall(r"step (\d+)/", " ".join(t for _, t in page.evaluate("window.__progress")))]
        assert steps == sorted(steps) and steps[-1] > steps[0]
        page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=30_000)  # a loss curve
        assert page.locator(".js-plotly-plot").count() >= 1
        assert "job=" in page.url  # a reload can reattach

        page.reload()  # reattach: the same job keeps drawing
        page.locator('[data-testid="stImage"] img').first.wait_for(timeout=30_000)
        stop = page.get_by_role("button", name="Stop")
        if stop.is_enabled():
            stop.click()
        page.get_by_text(re.compile(r"(cancelled|done) · step")).first.wait_for(timeout=30_000)


FIRST_VISITS = (("/runs", "Runs"), ("/distill", "Distill"), ("/runs_page", "Synthesize"))


def test_first_direct_visit_after_a_server_start_shows_the_navigation(tmp_path, digits_teacher):
    """The first script run after a server start treats pages/ as an old-style multipage app: a first visit to a
    page's URL must still show app.py's top navigation and that page, and a visit to a page file's own name
    (/runs_page) must not show a bare page (it lands on the default page, with the navigation)."""
    add_teacher_run(tmp_path, digits_teacher.path, "bncnn3_w32 on digits")
    with chromium_page() as page:
        for path, title in FIRST_VISITS:
            with serve_app(tmp_path) as url:   # a fresh server for every visit: each is the first script run
                page.goto(url + path)
                heading = page.locator("h1").first
                heading.wait_for(timeout=60_000)
                page.wait_for_timeout(1000)   # a bare page would have shown by now; let any rerun settle
                assert page.locator("h1").first.inner_text() == title, path
                nav = page.locator('[data-testid="stTopNavLink"]').all_inner_texts()
                assert {"Teacher", "Synthesize", "Distill", "Runs"} <= {t.split("\n")[-1] for t in nav}, (path, nav)
