"""dfkd studio: `streamlit run app.py`. The page list below is the whole app; adding a page is one line.

Pages live in `app_pages/`, not `pages/`: Streamlit treats a `pages/` folder next to the entry script as an old-style
multipage app until the first st.navigation call, so the first visit to e.g. /runs after a server start would
run that page bare (no navigation, no layout). tests/test_app.py guards against the folder coming back.
"""
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `app_pages.common` importable however the app starts

st.set_page_config(page_title="dfkd studio", page_icon=":material/science:", layout="wide")

PAGES = [
    st.Page("app_pages/teacher.py", title="Teacher", icon=":material/school:"),
    st.Page("app_pages/synthesize.py", title="Synthesize", icon=":material/auto_awesome:", default=True),
    st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:"),
    st.Page("app_pages/boundaries.py", title="Boundaries", icon=":material/compare_arrows:"),
    st.Page("app_pages/representations.py", title="Representations", icon=":material/grid_on:"),
    st.Page("app_pages/attention.py", title="Attention", icon=":material/visibility:"),
]

st.navigation(PAGES, position="top").run()
