"""dfkd studio: `streamlit run app.py`. The page list below is the whole app; adding a page is one line.

Page scripts live in `pages/` as `<name>_page.py`, their shared view code in `pages/views/`. Streamlit treats a
`pages/` folder next to the entry script as an old-style multipage app until st.navigation has run once, so the
first script run after a server start registers every `pages/*.py` under its file name. The URL each page gets here
(`url_path`) therefore differs from its file name: a first visit to /runs names no old-style page, falls through to
this script and its navigation. A first visit to a file's own name (/runs_page) is caught by `require_navigation()`
at the top of every page. tests/test_app.py checks the layout, tests/test_browser.py the first visits.
"""
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `pages.views` importable however the app starts

st.set_page_config(page_title="dfkd studio", page_icon=":material/science:", layout="wide")

PAGES = [
    st.Page("pages/teacher_page.py", title="Teacher", icon=":material/school:", url_path="teacher"),
    st.Page("pages/synthesize_page.py", title="Synthesize", icon=":material/auto_awesome:", url_path="synthesize",
            default=True),
    st.Page("pages/distill_page.py", title="Distill", icon=":material/compress:", url_path="distill"),
    st.Page("pages/runs_page.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
    st.Page("pages/boundaries_page.py", title="Boundaries", icon=":material/compare_arrows:", url_path="boundaries"),
    st.Page("pages/representations_page.py", title="Representations", icon=":material/grid_on:",
            url_path="representations"),
    st.Page("pages/attention_page.py", title="Attention", icon=":material/visibility:", url_path="attention"),
]

st.navigation(PAGES, position="top").run()
