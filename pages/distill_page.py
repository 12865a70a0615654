"""Distill (placeholder)."""
import streamlit as st

from pages.views.common import require_navigation

require_navigation()
st.title("Distill")
