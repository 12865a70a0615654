"""docs/methods.md, split into its sections for the Methods page and for links from the knobs' help texts."""
from __future__ import annotations

import inspect
import re
from functools import lru_cache
from pathlib import Path

import streamlit as st

METHODS_DOC = Path(__file__).resolve().parents[2] / "docs" / "methods.md"
_ANCHOR = re.compile(r'^<a id="([\w-]+)"></a>\s*$', re.MULTILINE)


@lru_cache(maxsize=1)
def sections() -> list[tuple[str, str, str]]:
    """(anchor, heading, markdown) per section, in order; the text before the first anchor comes first as
    ("", title, text)."""
    text = METHODS_DOC.read_text()
    starts = [(m.start(), m.group(1)) for m in _ANCHOR.finditer(text)]
    bounds = [0, *(s for s, _ in starts), len(text)]
    anchors = ["", *(a for _, a in starts)]
    out = []
    for anchor, begin, end in zip(anchors, bounds, bounds[1:]):
        body = text[begin:end]
        heading = re.search(r"^#+ (.+)$", body, re.MULTILINE)
        out.append((anchor, heading.group(1) if heading else "", body))
    return out


def section_link(anchor: str) -> str:
    """A markdown link to one section of the Methods page, for help texts."""
    titles = {a: t for a, t, _ in sections()}
    if anchor not in titles:
        raise KeyError(f"docs/methods.md has no section '{anchor}'; sections: {sorted(titles)}")
    return f"[Methods: {titles[anchor]}](/methods#{anchor})"


# Runs in the page itself (or, on a Streamlit without `st.html(unsafe_allow_javascript=)`, in a same-origin
# component iframe, hence `window.parent`, the page's own window at the top): waits up to 10 s for the element the
# URL's #anchor names.
_SCROLL_JS = """<script>
const target = window.parent.location.hash.slice(1);
if (target) {
  let tries = 0;
  const timer = setInterval(() => {
    const element = window.parent.document.getElementById(decodeURIComponent(target));
    if (element) { element.scrollIntoView(); }
    if (element || ++tries > 100) { clearInterval(timer); }
  }, 100);
}
</script>"""


def scroll_to_url_anchor() -> None:
    """Scroll the page to the element named by the URL's #anchor, once the app has drawn it."""
    if "unsafe_allow_javascript" in inspect.signature(st.html).parameters:
        st.html(_SCROLL_JS, unsafe_allow_javascript=True)
    else:   # `components.v1.html` is deprecated where st.html runs scripts (removal announced for after 2026-06-01)
        import streamlit.components.v1 as components
        components.html(_SCROLL_JS, height=0)
