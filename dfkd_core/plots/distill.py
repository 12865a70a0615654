"""Figures for distillation (methods.md#knowledge-distillation and the report every method shares, issue 5): student
accuracy on held-out real images against images synthesized or student steps (one line per run, the teacher's accuracy
dashed), and the KD loss over student steps. Inputs are plain data: `DistillJob.curve` / a run summary's "curve", and
`job.history` / a run's metrics.jsonl, so the app, the Runs page and a notebook draw the same figures.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go

from dfkd_core.plots.intervals import error_bars
from dfkd_core.plots.synthesis import _thin
from dfkd_core.stats import Interval

# A generator's samples and the noise baseline's inputs count as made too: one per image a student step saw.
AXIS_TITLES = {"images_synthesized": "images made (inverted, generated or drawn as noise)",
               "student_steps": "student steps"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def accuracy_curves_figure(curves: Mapping[str, Sequence[Mapping]], x: str = "images_synthesized",
                           teacher_accuracy: Mapping[str, float] | None = None, height: int = 320,
                           title: str | None = None) -> go.Figure:
    """Student accuracy on held-out real images against `x` ("images_synthesized" or "student_steps"), one line
    per entry of `curves` (label -> rows with `x` and "student_accuracy"); each run's teacher accuracy as a
    dashed line of the same colour (drawn once when all runs share one teacher value)."""
    if x not in AXIS_TITLES:
        raise ValueError(f"x must be one of {list(AXIS_TITLES)}, got '{x}'")
    figure = go.Figure()
    teacher_accuracy = dict(teacher_accuracy or {})
    shared_teacher = len({round(v, 6) for v in teacher_accuracy.values() if _finite(v)}) == 1
    for i, (label, rows) in enumerate(curves.items()):
        colour = PALETTE[i % len(PALETTE)]
        points = [(r[x], r["student_accuracy"]) for r in rows
                  if _finite(r.get(x)) and _finite(r.get("student_accuracy"))]
        reached = ""
        if x == "images_synthesized":
            # The student learns between rounds, so every evaluation at one count drew a column of dots; what the
            # chart asks is how far that many images took it: the last evaluation before the next ones arrived.
            points = [p for p, after in zip(points, points[1:] + [None]) if after is None or after[0] != p[0]]
            reached = " (last evaluation at this count)"
        figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=label,
                                    mode="lines+markers", marker={"size": 5}, line={"color": colour},
                                    hovertemplate=f"{label}<br>{AXIS_TITLES[x]} %{{x}}<br>student %{{y:.1%}}"
                                                  f"{reached}<extra></extra>"))
        teacher = teacher_accuracy.get(label)
        if _finite(teacher) and (not shared_teacher or i == 0):
            figure.add_hline(y=teacher, line={"dash": "dash", "color": "#555" if shared_teacher else colour,
                                              "width": 1},
                             # at the left, where a student starts low: at the right its curve ends under it
                             annotation_text=f"teacher {teacher:.1%}", annotation_position="bottom left")
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
                         title=title, legend={"orientation": "h", "y": -0.25}, showlegend=len(curves) > 1)
    figure.update_xaxes(title=AXIS_TITLES[x], rangemode="tozero")
    figure.update_yaxes(title="accuracy (real test)", tickformat=".0%", range=[0, 1.02])   # fits a half-width chart
    return figure


def kd_loss_figure(history: Sequence[Mapping], height: int = 320, max_points: int = 600) -> go.Figure:
    """The student's KD loss (methods.md#knowledge-distillation, T² KL(p_T ‖ p_S) at temperature T) against student
    steps; with a label term (real-data methods) its CE too. Log scale: the loss falls by orders of magnitude."""
    rows = [r for r in history if r.get("phase") == "kd" and _finite(r.get("student_steps"))]
    figure = go.Figure()
    for key, name in (("loss_kd", "KD loss"), ("loss_ce", "CE on labels")):
        points = [(r["student_steps"], r[key]) for r in _thin(rows, max_points) if _finite(r.get(key))]
        if points:
            figure.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], name=name, mode="lines"))
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10},
                         legend={"orientation": "h", "y": -0.25})
    figure.update_xaxes(title="student steps", rangemode="tozero")
    if not figure.data:   # before the first KD step: say so, rather than an empty log axis crowded with ticks
        figure.add_annotation(text="no KD step yet: the student starts once the first images exist",
                              showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font={"color": "#777"})
        figure.update_xaxes(showticklabels=False)
        figure.update_yaxes(title="loss", showticklabels=False)
        return figure
    # Ticks at 1, 2 and 5 per decade, written out: plotly's default labels the in-between ticks with a bare digit
    # ("5 4 3 2 0.1 9 8"), where 9 reads as larger than 0.1. (Within one decade 2 and 5 still give two ticks.)
    figure.update_yaxes(title="loss", type="log", dtick="D2", tickformat=".2~g")
    return figure


def student_accuracy_figure(summaries: Mapping[str, Mapping], height: int = 320) -> go.Figure:
    """Final student accuracy per run with its 95% interval over the test images as an error bar, and the
    teacher's accuracy as a grey tick (summaries: label -> a distill run's summary with `*_accuracy_ci`)."""
    from dfkd_core.stats import Interval

    labels, values, low, high, teachers = [], [], [], [], []
    for label, summary in summaries.items():
        if not _finite(summary.get("student_accuracy")):
            continue
        stored = summary.get("student_accuracy_ci")
        ci = Interval.from_dict(stored) if isinstance(stored, Mapping) else None
        labels.append(label)
        values.append(summary["student_accuracy"])
        low.append(values[-1] - ci.low if ci is not None and ci.defined else 0.0)
        high.append(ci.high - values[-1] if ci is not None and ci.defined else 0.0)
        teachers.append(summary.get("teacher_accuracy") if _finite(summary.get("teacher_accuracy")) else None)
    figure = go.Figure(go.Bar(x=labels, y=values, name="student", marker_color=PALETTE[0],
                              error_y={"type": "data", "symmetric": False, "array": high, "arrayminus": low},
                              hovertemplate="%{x}<br>student %{y:.2%}<extra></extra>"))
    figure.add_trace(go.Scatter(x=labels, y=teachers, mode="markers", name="teacher",
                                marker={"symbol": "line-ew-open", "size": 40, "color": "#555",
                                        "line": {"width": 2}},
                                hovertemplate="%{x}<br>teacher %{y:.2%}<extra></extra>"))
    figure.update_layout(height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10}, bargap=0.5,
                         title="final accuracy on the real test set, 95% interval over its images",
                         legend={"orientation": "h", "y": -0.3})
    figure.update_yaxes(tickformat=".0%", range=[0, 1.02])
    return figure


def per_class_accuracy_figure(per_class: Mapping[str, Sequence[Interval]], class_names: Sequence[str],
                              height: int = 280) -> go.Figure:
    """Accuracy per class on the held-out real images with Wilson 95% error bars, teacher beside student
    (`DistillJob.per_class`)."""
    figure = go.Figure()
    for name, colour in (("teacher", "#888888"), ("student", PALETTE[0])):
        if name in per_class:
            values = list(per_class[name])
            figure.add_trace(go.Bar(
                x=list(class_names), y=[i.estimate for i in values], name=name, marker_color=colour,
                error_y={**error_bars(values), "thickness": 1, "width": 3},
                customdata=[[i.low, i.high, i.units] for i in values],
                hovertemplate=f"{name}<br>%{{x}}: %{{y:.1%}} [%{{customdata[0]:.1%}}, %{{customdata[1]:.1%}}] of "
                              "%{customdata[2]} images<extra></extra>"))
    units = min((i.units for values in per_class.values() for i in values), default=0)
    figure.update_layout(barmode="group", height=height, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                         title=f"accuracy per class, held-out real test images (≥ {units} a class; bars: Wilson 95%)",
                         legend={"orientation": "h", "y": -0.3})
    figure.update_yaxes(tickformat=".0%", range=[0, 1.02])
    figure.update_xaxes(type="category")   # digits' class names '0'…'9' read as numbers labelled only 0, 2, 4…
    return figure
