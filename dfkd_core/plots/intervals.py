"""Paired differences between students with their 95% intervals, shared by the Boundaries page (MagSim, AngSim)
and the Attention page (Grad-CAM r, IoU). Inputs are the stored difference dicts: {"student_a", "student_b",
<metric>: Interval dict of student_a − student_b}."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go

from dfkd_core.stats import Interval


def error_bars(intervals: Sequence[Interval | Mapping | None]) -> dict:
    """plotly asymmetric error bars (estimate − low, high − estimate) from Intervals or their stored dicts; none
    where undefined."""
    parsed = [i if isinstance(i, Interval) else Interval.from_dict(dict(i)) if i else None for i in intervals]
    up = [i.high - i.estimate if i is not None and i.defined else None for i in parsed]
    down = [i.estimate - i.low if i is not None and i.defined else None for i in parsed]
    return dict(type="data", symmetric=False, array=up, arrayminus=down, thickness=1.5, width=4)


def paired_difference_figure(differences: Sequence[Mapping], metrics: Sequence[tuple[str, str, str]], title: str,
                             units: str = "units", faded: Sequence[bool] = (), faded_note: str = "") -> go.Figure:
    """One row per (student a, student b), one marker per metric (key, label, colour): metric(a) − metric(b) with
    its paired interval; an interval that does not cross the dotted zero line is a resolved difference. Rows
    flagged in `faded` (resting on too little) are drawn faded and marked ⚠, with `faded_note` under the title."""
    faded = list(faded) or [False] * len(differences)
    labels = [f"{'⚠ ' if f else ''}{d['student_a']} − {d['student_b']}" for d, f in zip(differences, faded)]
    if any(faded) and faded_note:
        title = f"{title}<br><sup>{faded_note}</sup>"
    fig = go.Figure()
    for key, label, color in metrics:
        intervals = [d[key] for d in differences]
        parsed = [Interval.from_dict(i) for i in intervals]
        fig.add_scatter(x=[None if math.isnan(i.estimate) else i.estimate for i in parsed], y=labels,
                        mode="markers", name=label,
                        marker=dict(color=color, size=10, opacity=[0.3 if f else 1.0 for f in faded]),
                        error_x=error_bars(intervals), customdata=[[i.units] for i in parsed],
                        hovertemplate=f"%{{y}}<br>{label} difference %{{x:+.3f}} over %{{customdata[0]}} {units}"
                                      "<extra></extra>")
    fig.add_vline(x=0, line_dash="dot")
    fig.update_layout(title=title, xaxis_title="difference (a − b)", height=120 + 60 * len(labels),
                      legend=dict(orientation="h", x=1, xanchor="right", y=1.0, yanchor="bottom"),
                      margin=dict(l=10, r=10, t=50, b=10))   # legend above: below, it covered the axis ticks
    return fig


__all__ = ["error_bars", "paired_difference_figure"]
