"""dfkd studio: `streamlit run app.py`. The page list below is the whole app; adding a page is one line.

Page scripts live in `app_pages/` (one file a page, named like its URL), their shared view code in
`app_pages/views/`. The folder is deliberately not called `pages/`: with a `pages/` folder beside the entry script,
Streamlit (1.67) treats the first script run after a server start as a legacy multipage app of pages/*.py,
which knows no /distill, and pops "Page not found" over the right page on a first visit to a deep link.
tests/test_app.py checks the layout, tests/test_browser.py the first visit to every URL below on a fresh server.
"""
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `app_pages.views` importable however the app starts

st.set_page_config(page_title="dfkd studio", page_icon=":material/science:", layout="wide")

PAGES = [
    st.Page("app_pages/teacher.py", title="Teacher", icon=":material/school:", url_path="teacher"),
    st.Page("app_pages/synthesize.py", title="Synthesize", icon=":material/auto_awesome:", url_path="synthesize",
            default=True),
    st.Page("app_pages/distill.py", title="Distill", icon=":material/compress:", url_path="distill"),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:", url_path="runs"),
    st.Page("app_pages/boundaries.py", title="Boundaries", icon=":material/compare_arrows:", url_path="boundaries"),
    st.Page("app_pages/representations.py", title="Representations", icon=":material/grid_on:",
            url_path="representations"),
    st.Page("app_pages/attention.py", title="Attention", icon=":material/visibility:", url_path="attention"),
]

st.navigation(PAGES, position="top").run()
