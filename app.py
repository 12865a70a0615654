"""dfkd studio: `streamlit run app.py`. The page list below is the whole app; adding a page is one line."""
import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `pages.common` importable however the app is started

st.set_page_config(page_title="dfkd studio", page_icon="🧪", layout="wide")

PAGES = [
    st.Page("pages/teacher.py", title="Teacher", icon=":material/school:"),
    st.Page("pages/synthesize.py", title="Synthesize", icon=":material/auto_awesome:", default=True),
    st.Page("pages/runs.py", title="Runs", icon=":material/folder_open:"),
]

st.navigation(PAGES, position="top").run()
