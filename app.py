"""dfkd studio: `streamlit run app.py`. The page list is pages/views/navigation.py; adding a page is one line there.

Page scripts live in `pages/` (one file a page, named like its URL), their shared view code in `pages/views/`.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `pages.views` importable however the app starts

from pages.views.navigation import run_app  # noqa: E402

run_app()
