"""The app's page list and the hand-over that keeps deep links clean on a fresh server.

Why the hand-over: with a `pages/` folder beside app.py (the project's fixed layout), Streamlit 1.67 runs the first
script run after a server start as a legacy multipage app of `pages/*.py` instead of app.py, until any session calls
`st.navigation`. Each page file is therefore named like its URL, so a first visit to /distill finds pages/distill.py
there and no "Page not found" notice is raised. That page then calls `hand_over_to_app()`: it declares the app's
navigation through the public `st.navigation` (which ends the legacy mode for the whole server) and runs the page
that navigation resolves, as app.py would, then stops the bare run. tests/test_browser.py checks a first visit to
every URL.
"""
from __future__ import annotations

import sys
import threading

import streamlit as st

# (file under pages/ and URL, title, icon) in navigation order; DEFAULT_PAGE is the one served at "/".
PAGES = [
    ("teacher", "Teacher", ":material/school:"),
    ("synthesize", "Synthesize", ":material/auto_awesome:"),
    ("distill", "Distill", ":material/compress:"),
    ("runs", "Runs", ":material/folder_open:"),
    ("boundaries", "Boundaries", ":material/compare_arrows:"),
    ("representations", "Representations", ":material/grid_on:"),
    ("attention", "Attention", ":material/visibility:"),
    ("applications", "Applications", ":material/apps:"),
    ("methods", "Methods", ":material/menu_book:"),
]
DEFAULT_PAGE = "synthesize"

_inside_app = threading.local()   # set while app.py runs a page (each session's script runs on its own thread)


def app_navigation():
    """Declare the app's pages (top navigation) and return the one this URL asks for.

    Every page has its own URL, the default one included: Streamlit serves a default page only at "/" while it still
    reserves its name, so a link or bookmark to /synthesize would raise "Page not found" once any session has
    declared the navigation. The root is therefore a hidden page that hands over to DEFAULT_PAGE."""
    pages = {name: st.Page(f"pages/{name}.py", title=title, icon=icon, url_path=name) for name, title, icon in PAGES}
    root = st.Page(lambda: st.switch_page(pages[DEFAULT_PAGE], query_params=st.query_params.to_dict()),
                   title="dfkd studio", url_path="start", default=True, visibility="hidden")
    return st.navigation([root, *pages.values()], position="top")


# Streamlit fades an element that a rerun has not redrawn within 0.5 s. A live view redraws every 0.25-2 s, and on 2
# busy cores a redraw often takes longer, so the charts a user steers by spent much of a run faded (sampled every
# 0.6 s in chromium). Fading after 3 s instead keeps a live view steady and still greys out a page that is slow to
# recompute. (Marking only the live views took a keyed container, which now and then left a chart blank.) Screenshots
# of the live loss chart every 0.3 s: blank or faded in 17 of 40 before, 9 of 40 with this; the rest is plotly
# redrawing the chart, which a bare fragment with one plotly chart also shows (2 of 40).
STALE_CSS = '[data-stale="true"] {transition: opacity 1s ease-in 3s !important;}'
# Streamlit leaves 128 px above a page's title under the 60-px top navigation: on a 1280x720 projector the live grid
# started below the fold.
COMPACT_TOP_CSS = ".stMainBlockContainer {padding-top: 4.5rem !important;}"
# A section a link scrolls to (/methods#uncertainty) lands below the top navigation, not half under it.
ANCHOR_CSS = "[id] {scroll-margin-top: 4.5rem;}"
APP_CSS = f"<style>{STALE_CSS}\n{COMPACT_TOP_CSS}\n{ANCHOR_CSS}</style>"


def run_app() -> None:
    """app.py's whole body: resolve the URL to a page and run it."""
    # An emoji, not a :material/…: icon: Streamlit draws an emoji favicon inline, a material one it fetches from
    # fonts.gstatic.com, which an offline machine cannot reach.
    st.set_page_config(page_title="dfkd studio", page_icon="🧪", layout="wide")
    page = app_navigation()
    st.html(APP_CSS)   # (a style alone takes no room on the page)
    if "torch" not in sys.modules:
        # The first script run after a server start imports PyTorch (3-4 s on 2 cores); say so instead of a blank page.
        with st.spinner("Starting up: loading PyTorch, once per server start…"):
            import torch  # noqa: F401
    _inside_app.active = True
    try:
        page.run()
    finally:
        _inside_app.active = False


def hand_over_to_app() -> None:
    """First line of every page: when Streamlit's legacy pages/ lookup runs this file bare, run the app instead
    (within this same script run, so a widget event such as a button click is not lost), then end the bare run."""
    if getattr(_inside_app, "active", False):
        return
    run_app()
    st.stop()
