"""Plotly figure builders over plain data (history lists, tensors), shared by the app and notebooks.

One module per subject: `grids` (labelled image grids, as a figure or a PNG), `synthesis` (loss curves with
live-update markers, BN statistics, run comparison), `distill` (student accuracy against images synthesized or
student steps, KD loss). Builders return plotly figures and never import streamlit.
"""
from dfkd_core.plots.distill import accuracy_curves_figure, kd_loss_figure, student_accuracy_figure
from dfkd_core.plots.grids import class_columns, image_grid_figure, image_grid_png, parse_snapshot_label
from dfkd_core.plots.synthesis import bn_statistics_figure, loss_curves_figure, run_comparison_figure

__all__ = ["accuracy_curves_figure", "bn_statistics_figure", "class_columns", "image_grid_figure", "image_grid_png",
           "kd_loss_figure", "loss_curves_figure", "parse_snapshot_label", "run_comparison_figure",
           "student_accuracy_figure"]
