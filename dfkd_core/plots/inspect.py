"""Figures for looking closely: one synthesized image (class probabilities, its share of the BN-statistics mismatch)
and two syntheses side by side (each BN layer's distance to the teacher's statistics, for both runs)."""
from __future__ import annotations

from typing import Mapping, Sequence

import plotly.graph_objects as go

from dfkd_core.plots.synthesis import RUN_COLOURS

GOOD, BAD, NEUTRAL = "#1a7f37", "#cf222e", "#1f77b4"


def class_probability_figure(probabilities: Sequence[float], class_names: Sequence[str], target: int | None = None,
                             height: int = 260) -> go.Figure:
    """The teacher's softmax over the classes for one image; the class it was synthesized for in green."""
    colours = [GOOD if k == target else NEUTRAL for k in range(len(probabilities))]
    figure = go.Figure(go.Bar(x=list(class_names), y=[float(p) for p in probabilities], marker_color=colours,
                              hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
    # Two short title lines: the figure is drawn in a third of the page, where one long line was cut off.
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                         title="teacher's probabilities" + ("<br>(green: the target class)" if target is not None
                                                            else ""))
    if target is not None:   # named above its bar: at probability ~0 the green bar is invisible
        figure.add_annotation(x=str(class_names[target]), y=float(probabilities[target]), text="target",
                              showarrow=False, yanchor="bottom", font={"color": GOOD, "size": 11})
    figure.update_yaxes(range=[0, 1.12], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1.0])
    figure.update_xaxes(type="category")   # every class named, digits' '0'…'9' too
    return figure


def bn_contribution_figure(rows: Sequence[Mapping], height: int = 260) -> go.Figure:
    """Δ_l per BN layer (`bn_leave_one_out` rows): red bars pull the batch away from the teacher's statistics."""
    deltas = [float(r["delta"]) for r in rows]
    figure = go.Figure(go.Bar(x=[r["layer"] for r in rows], y=deltas,
                              marker_color=[BAD if d > 0 else GOOD for d in deltas],
                              customdata=[[r["with_image"], r["without_image"]] for r in rows],
                              hovertemplate="%{x}<br>Δ = %{y:.4f}<br>batch %{customdata[0]:.3f}, without it "
                                            "%{customdata[1]:.3f}<extra></extra>"))
    figure.add_hline(y=0, line={"color": "#888", "width": 1})
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                         title="its share of each BN layer's distance<br>(red: pulls away)")
    figure.update_yaxes(title="Δ distance")
    return figure


def bn_layer_comparison_figure(per_run: Mapping[str, Mapping[str, float]], height: int = 300) -> go.Figure:
    """Each BN layer's distance to the teacher's running statistics, one bar per run (label -> layer -> d_l)."""
    figure = go.Figure()
    for i, (label, layers) in enumerate(per_run.items()):
        figure.add_trace(go.Bar(x=list(layers), y=[float(v) for v in layers.values()], name=label,
                                marker_color=RUN_COLOURS[i % len(RUN_COLOURS)],
                                hovertemplate=f"{label}<br>%{{x}}: %{{y:.3f}}<extra></extra>"))
    figure.update_layout(barmode="group", height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         title="BN distance per layer: ||μ − running μ||₂ + ||σ² − running σ²||₂ (lower: closer to "
                               "the data the teacher saw)", legend={"orientation": "h", "y": -0.25})
    figure.update_yaxes(title="distance", rangemode="tozero")
    return figure


__all__ = ["bn_contribution_figure", "bn_layer_comparison_figure", "class_probability_figure"]
