"""Methods: the project's methods reference (docs/methods.md) inside the app, one section a tab of the sidebar's
table of contents. Every knob's help links here (`/methods#<section>`)."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

from pages.views.methods_doc import METHODS_DOC, scroll_to_url_anchor, sections  # noqa: E402

st.title("Methods")
st.caption("Every method as the equations the code computes, what each setting does, where the code departs from "
           f"the papers, and where the intervals come from. The same text is `{METHODS_DOC.name}` in the repository.")
parts = sections()
with st.sidebar:
    st.subheader("Contents")
    for anchor, title, _ in parts[1:]:
        st.markdown(f"[{title}](#{anchor})")
for anchor, _, body in parts:
    if not anchor:   # the preamble: the page's title, caption and sidebar already give its title, intro and contents
        body = "\n\n".join(part for part in body.split("\n\n")
                           if not part.lstrip().startswith(("# ", "Every method", "- [")))
    st.markdown(body, unsafe_allow_html=True)   # the doc's own <a id> anchors: links from knobs land on them
# A link from a knob's help opens /methods#<section> in a new tab, where the browser looks for the anchor before
# the app has drawn the sections: scroll there once it exists.
scroll_to_url_anchor()
