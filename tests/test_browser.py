"""The real app in a real browser: Playwright drives Debian's chromium against a server started here."""
import re
import time
from contextlib import ExitStack

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError, expect

from browser_app import WATCH_JS, add_teacher_run, chromium, serve_app
from dfkd_core.runs import RunStore

pytestmark = pytest.mark.browser


class SharedApp:
    """One server and one chromium for the tests that need no fresh server: a first page costs ~12 s of imports
    on 2 cores, paid once here. Each test gets its own browser context, so its own app session."""

    def __init__(self, url: str, home, teacher_id: str, browser):
        self.url, self.home, self.teacher_id, self.browser = url, home, teacher_id, browser
        self.store = RunStore(home)

    def running(self) -> list[str]:
        return [r.id for r in self.store.list() if r.status == "running"]


@pytest.fixture(scope="module")
def browser():
    """One chromium for the module (Playwright's sync API allows one at a time in a thread)."""
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory, digits_teacher, browser):
    home = tmp_path_factory.mktemp("shared_app")
    teacher_id = add_teacher_run(home, digits_teacher.path, "bncnn3_w32 on digits")
    with serve_app(home) as url:
        yield SharedApp(url, home, teacher_id, browser)


@pytest.fixture
def open_page(shared_app):
    """A new tab (a new session) on the shared server; after the test, the jobs it started have ended, so the next
    test finds every job slot free."""
    pages = []

    def new(width: int = 1400, height: int = 1000):
        pages.append(shared_app.browser.new_page(viewport={"width": width, "height": height}))
        return pages[-1]
    yield new
    for page in pages:
        page.context.close()
    deadline = time.time() + 120
    while shared_app.running() and time.time() < deadline:
        time.sleep(0.2)
    assert not shared_app.running(), f"runs still running after the test: {shared_app.running()}"


def test_start_on_digits_shows_images_forming_and_a_loss_curve(shared_app, open_page):
    url, page = shared_app.url, open_page()
    broken = []   # a live grid served as a media file the next poll had already replaced showed as broken
    page.on("console", lambda message: "Image source error" in message.text and broken.append(message.text))
    page.goto(url)
    start = page.get_by_role("button", name="Start")
    start.wait_for(timeout=60_000)
    assert page.get_by_text("DeepInversion").first.is_visible()
    page.evaluate(WATCH_JS)
    start.click()

    # The grid appears, then changes: the batch is being optimized in front of the user, and every grid loads.
    page.wait_for_function("window.__grids.length >= 1", timeout=30_000)
    page.wait_for_function("window.__grids.length >= 12", timeout=60_000)
    assert not broken, broken
    steps = [int(m) for m in re.findall(r"step (\d+)/", " ".join(t for _, t in page.evaluate("window.__progress")))]
    assert steps == sorted(steps) and steps[-1] > steps[0]
    page.locator(".js-plotly-plot .scatterlayer .trace").first.wait_for(timeout=30_000)  # a loss curve
    assert page.locator(".js-plotly-plot").count() >= 1
    assert "job=" in page.url  # a reload can reattach

    page.reload()  # reattach: the same job keeps drawing
    page.locator('[data-testid="stImage"] img').first.wait_for(timeout=30_000)
    stop = page.get_by_role("button", name="Stop", exact=True)
    if stop.is_enabled():
        try:
            stop.click(timeout=10_000)
        except PlaywrightTimeoutError:   # the run ended between the check and the click (a loaded machine)
            assert not stop.is_enabled()
    page.get_by_text(re.compile(r"(cancelled|done) · step")).first.wait_for(timeout=30_000)


# Every page of app.py's navigation by URL; the root hands over to the default page (Synthesize), which has its own
# URL like every other page.
DEEP_LINKS = {"/synthesize": "Synthesize", "/teacher": "Teacher", "/distill": "Distill", "/runs": "Runs",
              "/boundaries": "Boundaries", "/representations": "Representations", "/attention": "Attention",
              "/methods": "Methods", "/applications": "Applications"}
NAVIGATION = {"Synthesize", *DEEP_LINKS.values()}
UNKNOWN = "/no_such_page"
FINISHED = '[data-testid="stApp"][data-test-script-state="notRunning"]'


STARTING_UP = "Starting up"   # navigation.run_app's spinner while a fresh server imports PyTorch
# Every spinner text the page ever showed, however briefly (an observer from the first byte of each document).
SPINNER_WATCH_JS = """new MutationObserver(() => document.querySelectorAll('[data-testid="stSpinner"]').forEach(
    s => (window.__spinners = window.__spinners || []).push(s.innerText))).observe(document, {childList: true,
    subtree: true, characterData: true});"""


def page_not_found(page):
    return page.get_by_role("dialog").filter(has_text="Page not found")


# A fresh server per visit costs ~10 s of CPU, so the default suite visits three (a page with heavy imports, a light
# one, and a path that names no page); `-m slow` visits every other page the same way. That every page hands over
# before its imports is checked for all of them in tests/test_app.py.
FIRST_VISITS_SAMPLED = ["/distill", "/methods", UNKNOWN]


def test_first_direct_visit_to_a_deep_link_after_a_server_start(tmp_path, digits_teacher, browser):
    """Right after a server start, a visit to a deep link (a bookmark, a link in the README) shows that page with
    the top navigation and no "Page not found" notice. Each visit gets a fresh server: only the first script run
    of a server process differs (a `pages/` folder beside app.py made Streamlit run it as an old-style multipage
    app, which knows no /distill, and pop the notice over the right page). A path that names no page must still
    get the notice and the default page, under the same waits: the check does see a notice that is there."""
    visits = [(path, DEEP_LINKS.get(path, "Synthesize")) for path in FIRST_VISITS_SAMPLED]
    _first_visits(tmp_path, digits_teacher, browser, visits)


@pytest.mark.slow
def test_first_direct_visit_to_every_other_deep_link_after_a_server_start(tmp_path, digits_teacher, browser):
    _first_visits(tmp_path, digits_teacher, browser,
                  [(p, t) for p, t in DEEP_LINKS.items() if p not in FIRST_VISITS_SAMPLED])


def _first_visits(tmp_path, digits_teacher, browser, visits: list[tuple[str, str]]) -> None:
    """Each visit on a fresh server. A few servers at a time, each visited in its own tab: a first script run is one
    busy core, this machine has two."""
    add_teacher_run(tmp_path, digits_teacher.path, "bncnn3_w32 on digits")
    for start in range(0, len(visits), 3):
        batch = visits[start:start + 3]
        with ExitStack() as servers:
            urls = [servers.enter_context(serve_app(tmp_path)) for _ in batch]
            tabs = [browser.new_page(viewport={"width": 1400, "height": 1000}) for _ in batch]
            for tab, url, (path, _) in zip(tabs, urls, batch):
                tab.add_init_script(SPINNER_WATCH_JS)
                tab.goto(url + path, wait_until="commit")
            for tab, (path, title) in zip(tabs, batch):
                tab.locator("h1").first.wait_for(timeout=60_000)
                tab.locator(FINISHED).wait_for(timeout=60_000)   # the notice, if any, came before the run ended
                tab.wait_for_timeout(250)
                assert tab.locator("h1").first.inner_text() == title, path
                nav = tab.locator('[data-testid="stTopNavLink"]').all_inner_texts()
                assert NAVIGATION <= {t.split("\n")[-1] for t in nav}, (path, nav)
                notices = page_not_found(tab).count()
                assert notices == (path == UNKNOWN), f"{path}: {page_not_found(tab).all_inner_texts()}"
                # Not a blank page while the server loads PyTorch: the page's imports once came first.
                spinners = tab.evaluate("window.__spinners || []")
                assert any(STARTING_UP in text for text in spinners), (path, spinners)
            for tab in tabs:
                tab.context.close()


def test_every_deep_link_on_a_server_already_in_use(shared_app, open_page):
    """The same visits on one server that has served other pages before (the navigation is declared by then): a
    bookmark to /synthesize used to get "Page not found" here, since Streamlit served the default page only at /."""
    url, page = shared_app.url, open_page()
    for path, title in [("/", "Synthesize"), *DEEP_LINKS.items(), ("/", "Synthesize"), (UNKNOWN, "Synthesize")]:
        page.goto(url + path)
        page.locator("h1").first.wait_for(timeout=60_000)
        page.locator(FINISHED).wait_for(timeout=60_000)
        page.wait_for_timeout(250)
        assert page.locator("h1").first.inner_text() == title, path
        notices = page_not_found(page).count()
        assert notices == (path == UNKNOWN), f"{path}: {page_not_found(page).all_inner_texts()}"


def test_a_link_to_a_methods_section_opened_in_a_new_tab_lands_on_that_section(shared_app, open_page):
    """Every knob's help links to /methods#<section>, which a click opens in a new tab: the browser looked for the
    anchor before the app had drawn the sections and stayed at the top, ~10,000 px above it."""
    page = open_page()
    page.goto(shared_app.url + "/methods#uncertainty")
    page.locator(FINISHED).wait_for(timeout=60_000)
    page.wait_for_function("""() => { const e = document.getElementById('uncertainty');
                                      return e && Math.abs(e.getBoundingClientRect().top) < 100; }""", timeout=15_000)


def test_boundaries_compare_starts_on_the_first_click_after_picking_a_student(shared_app, open_page,
                                                                             digits_teacher):
    """Picking students used to need a multiselect, whose choice is committed only when it loses focus: the first
    click on Compare went into that commit and did nothing. The students are pills now: one click each, then one
    click on Compare starts the comparison."""
    import copy

    from dfkd_core.distill import DistillConfig, DistillJob
    teacher_id, store = shared_app.teacher_id, shared_app.store
    config = DistillConfig(method="noise", steps=5, batch_size=16, eval_every=5)
    job = DistillJob(copy.deepcopy(digits_teacher), config,
                     run=store.create("distill", config.to_dict(), teacher=teacher_id, method="noise",
                                      dataset="digits", name="noise student"))
    job.run()
    before = len(store.list(kind="analysis"))
    url, page = shared_app.url, open_page()
    page.goto(url + "/boundaries")
    page.locator(FINISHED).wait_for(timeout=60_000)
    page.get_by_role("button", name="noise student").first.click()
    page.get_by_role("button", name="Compare", exact=True).click()
    deadline = time.time() + 60
    while len(store.list(kind="analysis")) == before and time.time() < deadline:
        time.sleep(0.2)
    assert len(store.list(kind="analysis")) > before, "the first click on Compare started nothing"


def test_compare_live_shows_both_syntheses_forming_side_by_side(shared_app, open_page):
    """One click on Compare: DeepDream and DeepInversion from the same noise, two grids and the per-layer BN chart."""
    url, page = shared_app.url, open_page()
    page.goto(url + "/synthesize")
    page.locator(FINISHED).wait_for(timeout=60_000)
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_role("strong").filter(has_text="A: DeepDream").wait_for(timeout=30_000)
    page.get_by_role("strong").filter(has_text="B: DeepInversion").wait_for(timeout=30_000)
    page.wait_for_function("document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 2",
                           timeout=30_000)
    page.get_by_text("BN distance per layer").first.wait_for(timeout=30_000)
    assert "compare=" in page.url   # a reload reattaches to the pair
    stop = page.get_by_role("button", name="Stop both")
    if stop.is_enabled():
        stop.click()
    assert page_not_found(page).count() == 0


def test_a_pool_of_one_tiny_image_is_not_blown_up_on_the_distill_page(shared_app, open_page):
    """A pool of one 8x8 digit: its grid is a 64-px cell, shown at that size, not stretched to the width of the
    caption under it (a content-width st.image is as wide as its caption)."""
    url, page = shared_app.url, open_page()
    page.goto(url + "/distill")
    page.locator(FINISHED).wait_for(timeout=60_000)
    for label, value in (("images N", "1"), ("KD steps after synthesis", "10")):
        field = page.get_by_label(label, exact=True)
        field.fill(value)
        field.press("Enter")
        page.wait_for_timeout(500)
        page.locator(FINISHED).wait_for(timeout=60_000)
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_text(re.compile(r"^done · step")).first.wait_for(timeout=120_000)
    grid = page.locator('[data-testid="stImage"] img').first
    grid.wait_for(timeout=30_000)
    natural, shown = grid.evaluate("img => [img.naturalWidth, img.clientWidth]")
    assert natural < 100 and shown <= natural, (natural, shown)


def test_clicking_an_image_to_inspect_it_frames_it_and_keeps_every_caption_readable(shared_app, open_page):
    """The one-image view's grid is a selectable plotly figure: a click selects that image's point, and plotly
    fades every unselected point, which used to leave the captions under all images at a fifth of their colour."""
    url, page = shared_app.url, open_page(height=2400)
    page.goto(url + "/synthesize")
    page.locator(FINISHED).wait_for(timeout=60_000)
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_role("heading", name="Inspect one image").wait_for(timeout=120_000)
    page.locator(FINISHED).wait_for(timeout=60_000)
    heading = page.get_by_role("heading", name="Inspect one image").bounding_box()
    grid = next(c for c in page.locator('[data-testid="stPlotlyChart"]').all()
                if c.bounding_box()["y"] > heading["y"])
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 4 + 2 * 60 + 28, box["y"] + 4 + 28)   # the third image: 56-px cells, 4-px gaps
    page.wait_for_function("document.querySelector('input[aria-label=\"image #\"]').value === '2'",
                           timeout=60_000)
    page.locator(FINISHED).wait_for(timeout=60_000)
    page.wait_for_timeout(500)
    grid = next(c for c in page.locator('[data-testid="stPlotlyChart"]').all()
                if c.bounding_box()["y"] > heading["y"])
    faded = grid.evaluate("""g => [...g.querySelectorAll('.textpoint text')].filter(t =>
        parseFloat(getComputedStyle(t).opacity) < 1 || parseFloat(getComputedStyle(t).fillOpacity) < 1).length""")
    captions = grid.locator(".textpoint").count()
    assert captions >= 50 and faded == 0, f"{faded} of {captions} captions faded after the click"
    framed = grid.evaluate("""g => [...g.querySelectorAll('.scatterlayer .point')].filter(p =>
        parseFloat(getComputedStyle(p).opacity) > 0.5).length""")
    assert framed == 1, f"{framed} images framed"


def test_after_deleting_the_opened_run_the_box_names_the_run_the_page_shows(shared_app, open_page, digits_teacher):
    """Deleting the opened run on the Runs page left its name in the Open box while the page below showed the newest
    remaining run (the box kept its own value when the page dropped the deleted choice)."""
    doomed = add_teacher_run(shared_app.home, digits_teacher.path, "a teacher to delete")
    page = open_page()
    page.goto(shared_app.url + "/runs")
    page.locator(FINISHED).wait_for(timeout=60_000)
    opened = page.get_by_role("combobox", name="Open", exact=True)
    assert doomed in opened.input_value()
    page.get_by_text("Delete the opened run").click()
    page.get_by_text(f"Yes, delete {doomed}").click()
    delete = page.get_by_role("button", name="Delete", exact=True)
    # A click that lands while the checkbox's rerun is still running can be dropped by Streamlit (CI saw it once):
    # click only once that rerun has drawn the enabled button and ended.
    expect(delete).to_be_enabled(timeout=60_000)
    page.locator(FINISHED).wait_for(timeout=60_000)
    delete.click()
    deadline = time.time() + 30
    while doomed in opened.input_value() and time.time() < deadline:
        time.sleep(0.2)
    page.locator(FINISHED).wait_for(timeout=60_000)
    remaining = [r.id for r in shared_app.store.list()]
    assert doomed not in remaining, "the Delete click did not delete the run"
    assert remaining[0] in opened.input_value(), opened.input_value()


def test_a_teacher_picked_on_one_page_is_the_one_every_other_page_opens_on(shared_app, open_page, digits_teacher):
    """Each page used to open on the newest teacher: a teacher picked on Distill was not the one Boundaries, the
    Teacher page or Synthesize then showed, so an analysis could silently run on another teacher."""
    add_teacher_run(shared_app.home, digits_teacher.path, "teacher picked here")
    add_teacher_run(shared_app.home, digits_teacher.path, "the newest teacher")
    page = open_page()
    page.goto(shared_app.url + "/distill")
    page.locator(FINISHED).wait_for(timeout=60_000)
    box = page.get_by_role("combobox", name="Teacher", exact=True)
    assert "the newest teacher" in box.input_value()
    box.click()
    page.get_by_role("option", name="teacher picked here").click()
    page.locator(FINISHED).wait_for(timeout=60_000)
    assert "teacher picked here" in box.input_value()
    for title, label in [("Boundaries", "Teacher"), ("Teacher", "Stored teacher"), ("Synthesize", "Teacher")]:
        page.locator('[data-testid="stTopNavLink"]').filter(has_text=title).click()
        page.get_by_role("heading", name=title, exact=True).wait_for(timeout=60_000)
        page.locator(FINISHED).wait_for(timeout=60_000)
        shown = page.get_by_role("combobox", name=label, exact=True).input_value()
        assert "teacher picked here" in shown, (title, shown)
