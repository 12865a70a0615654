"""Figures for the data-free applications (methods.md#applications): accuracy against kept FLOPs for pruning (one line
per variant, one dash per criterion, the unpruned teacher dashed) and its CPU latency; int8 accuracy per calibration
source beside the fp32 teacher; per-class accuracy of the continual-learning models. Every accuracy carries its 95%
bootstrap interval as an error bar. Inputs are the rows of a run's results.json, so the app and a notebook draw the same
figures.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from dfkd_core.plots.intervals import error_bars

VARIANT_COLORS = {"no fine-tune": "#7f7f7f", "BN recalibrated": "#9467bd", "synthetic KD": "#1f77b4",
                  "real KD": "#d62728"}
CRITERION_DASH = {"taylor": "solid", "bn_scale": "dot"}
SOURCE_COLORS = {"synthetic": "#1f77b4", "real": "#d62728", "noise": "#7f7f7f"}
CONTINUAL_COLORS = {"old model": "#7f7f7f", "naive": "#ff7f0e", "replay": "#1f77b4", "joint": "#2ca02c"}


def _layout(figure: go.Figure, height: int, y_title: str) -> go.Figure:
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         legend={"orientation": "h", "y": -0.25})
    figure.update_yaxes(title=y_title, tickformat=".0%")
    return figure


def pruning_accuracy_figure(rows: Sequence[Mapping], height: int = 380) -> go.Figure:
    """Test accuracy against the share of FLOPs kept: a line per (variant, criterion), the unpruned model dashed."""
    figure = go.Figure()
    pruned = [r for r in rows if r["variant"] != "unpruned"]
    for variant in dict.fromkeys(r["variant"] for r in pruned):
        for criterion in dict.fromkeys(r["criterion"] for r in pruned):
            line = sorted((r for r in pruned if r["variant"] == variant and r["criterion"] == criterion),
                          key=lambda r: r["kept_flops"])
            if not line:
                continue
            figure.add_trace(go.Scatter(
                x=[r["kept_flops"] for r in line], y=[r["accuracy"] for r in line], name=f"{variant} ({criterion})",
                mode="lines+markers", error_y=error_bars([r["accuracy_ci"] for r in line]),
                line={"color": VARIANT_COLORS.get(variant), "dash": CRITERION_DASH.get(criterion, "dash")},
                hovertemplate=f"{variant}, {criterion}<br>kept FLOPs %{{x:.1%}}<br>accuracy %{{y:.2%}}<extra></extra>"))
    for r in rows:
        if r["variant"] == "unpruned":
            figure.add_hline(y=r["accuracy"], line={"dash": "dash", "color": "#555", "width": 1},
                             annotation_text=f"unpruned {r['accuracy']:.1%}", annotation_position="bottom right")
    # Reversed (more pruning to the right) over the shares measured: plotly's own range for a line or two of
    # points ran past 0% into negative shares.
    lowest = min((r["kept_flops"] for r in pruned), default=0.5)
    figure.update_xaxes(title="share of the FLOPs kept", tickformat=".0%", range=[1.03, max(0.0, lowest - 0.05)])
    return _layout(figure, height, "accuracy (real test images)")


def pruning_latency_figure(rows: Sequence[Mapping], height: int = 300) -> go.Figure:
    """Measured CPU time of one forward pass of a batch against the share of FLOPs kept, per criterion."""
    figure = go.Figure()
    # Variants share a network; a run stopped before its timing step has no latencies.
    architectures = {(r["criterion"], r["keep_target"]): r for r in rows if r.get("latency_ms") is not None}.values()
    for criterion in dict.fromkeys(r["criterion"] for r in architectures):
        points = sorted((r for r in architectures if r["criterion"] == criterion), key=lambda r: r["kept_flops"])
        medians = [r["latency_ms"] for r in points]
        low, high = zip(*(r.get("latency_range_ms") or [r["latency_ms"]] * 2 for r in points))
        figure.add_trace(go.Scatter(x=[r["kept_flops"] for r in points], y=medians,
                                    error_y={"type": "data", "symmetric": False,   # the range over timing rounds
                                             "array": [h - m for h, m in zip(high, medians)],
                                             "arrayminus": [m - lo for lo, m in zip(low, medians)]},
                                    name="unpruned" if criterion == "-" else criterion, mode="markers+lines",
                                    line={"dash": CRITERION_DASH.get(criterion, "dash")}))
    figure.update_xaxes(title="share of the FLOPs kept", tickformat=".0%", autorange="reversed")
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         legend={"orientation": "h", "y": -0.3})
    figure.update_yaxes(title="CPU ms per batch (median, bar: range)", rangemode="tozero")
    return figure


def quantization_figure(rows: Sequence[Mapping], height: int = 360) -> go.Figure:
    """Accuracy per calibration source, one bar group per model kind (int8, BN recalibrated), fp32 dashed."""
    figure = go.Figure()
    calibrated = [r for r in rows if r["calibration"] != "-"]
    models = list(dict.fromkeys(r["model"] for r in calibrated))
    for source in dict.fromkeys(r["calibration"] for r in calibrated):
        bars = [next((r for r in calibrated if r["model"] == m and r["calibration"] == source), None) for m in models]
        figure.add_trace(go.Bar(x=models, y=[b["accuracy"] if b else None for b in bars], name=source,
                                marker_color=SOURCE_COLORS.get(source),
                                error_y=error_bars([b["accuracy_ci"] if b else None for b in bars]),
                                hovertemplate=f"{source}<br>%{{x}}<br>accuracy %{{y:.2%}}<extra></extra>"))
    for r in rows:
        if r["model"] == "fp32":
            figure.add_hline(y=r["accuracy"], line={"dash": "dash", "color": "#555", "width": 1},
                             annotation_text=f"fp32 {r['accuracy']:.1%}", annotation_position="bottom right")
    figure.update_layout(barmode="group")
    return _layout(figure, height, "accuracy (real test images)")


def continual_per_class_figure(rows: Sequence[Mapping], class_names: Sequence[str] = (), height: int = 380
                               ) -> go.Figure:
    """Per-class test accuracy of every model (grouped bars); the old classes are shaded."""
    figure = go.Figure()
    classes = len(rows[0]["per_class"]) if rows else 0
    names = [class_names[c] if c < len(class_names) else str(c) for c in range(classes)]
    for r in rows:
        figure.add_trace(go.Bar(x=names, y=r["per_class"], name=r["model"],
                                marker_color=CONTINUAL_COLORS.get(r["model"]),
                                hovertemplate=f"{r['model']}<br>%{{x}}: %{{y:.1%}}<extra></extra>"))
    if rows:
        old = rows[0]["old_classes"]
        figure.add_vrect(x0=-0.5, x1=old - 0.5, fillcolor="#999", opacity=0.12, line_width=0,
                         annotation_text="old classes", annotation_position="top left")
    figure.update_layout(barmode="group")
    figure.update_xaxes(type="category")   # every class named, digits' '0'…'9' too
    return _layout(figure, height, "accuracy per class")
