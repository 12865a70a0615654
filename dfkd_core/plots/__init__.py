"""Plotly figure builders over plain data (history lists, tensors), shared by the app and notebooks.

One module per subject: `synthesis` (image grids, loss curves with live-update markers, BN statistics, run
comparison). Builders return `plotly.graph_objects.Figure` and never import streamlit.
"""
from dfkd_core.plots.synthesis import (bn_statistics_figure, image_grid_figure, loss_curves_figure,
                                       parse_snapshot_label, run_comparison_figure)

__all__ = ["bn_statistics_figure", "image_grid_figure", "loss_curves_figure", "parse_snapshot_label",
           "run_comparison_figure"]
