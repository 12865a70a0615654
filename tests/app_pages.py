"""Opening the app under Streamlit's AppTest and reading what it drew, for the test_app*.py files."""
import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def open_app(page: str | None = None, **query) -> AppTest:
    """The app run once with `query` in its URL, then switched to `page`; fails on any exception it shows."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def plotly_figures(at: AppTest) -> list[dict]:
    """The plotly specs in the main area, in the order drawn."""
    return [json.loads(e.proto.spec) for e in at.main if e.type == "plotly_chart"]
