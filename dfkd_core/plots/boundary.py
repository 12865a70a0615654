"""Figures for decision-boundary similarity (methods.md#bss): MagSim/AngSim bars with their 95% intervals as error bars
and the accepted-pair counts beside every number (a bar resting on fewer than MIN_PAIRS pairs is faded and
carries a warning), the paired differences between students, the per-class breakdown, and image panels of one
attack pair (base sample, teacher and student BSS, and the two perturbations on one shared diverging colour scale).
Inputs are plain data (the rows of `BoundaryAnalysis.table()` or of a saved boundary.json), so the app and
notebooks share them.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from dfkd_core.analysis.boundary import MIN_PAIRS
from dfkd_core.plots.intervals import error_bars as _error_bars
from dfkd_core.plots.intervals import paired_difference_figure
from dfkd_core.stats import Interval
from dfkd_core.synthesis.bss import OUTCOMES, BoundaryAttackResult

MAGSIM_COLOR, ANGSIM_COLOR, WARNING_COLOR = "#1f77b4", "#ff7f0e", "#c44e52"
FADED = 0.3   # opacity of a bar that rests on too few pairs
OUTCOME_TEXT = {"accepted": "crossed at step {step}", "rejected_third_class": "rejected: entered a third class",
                "rejected_max_steps": "rejected: no crossing in {steps} steps"}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not math.isnan(v)


def outcome_text(outcome: int, crossed_step: int, steps: int) -> str:
    """'crossed at step 3' / 'rejected: entered a third class' / 'rejected: no crossing in 20 steps'."""
    return OUTCOME_TEXT[OUTCOMES[outcome]].format(step=crossed_step, steps=steps)


def _interval_text(interval: Mapping | None, spec: str) -> str:
    if not interval:
        return ""
    i = Interval.from_dict(interval)
    return f" [{format(i.low, spec)}, {format(i.high, spec)}]" if i.defined else " [no interval]"


def similarity_bar_figure(rows: Sequence[Mapping], title: str = "Decision-boundary similarity to the teacher"
                          ) -> go.Figure:
    """Grouped MagSim / AngSim bars per student with 95% error bars; each group is labelled with the pairs accepted
    by both models (and the student's accuracy with its interval when the row has one). A group resting on fewer
    than MIN_PAIRS pairs is faded and labelled with a warning; an undefined metric (no pair) is written, not drawn."""
    names = [str(r["student"]) for r in rows]
    too_few = [r.get("too_few_pairs", r["both_accepted"] < MIN_PAIRS) for r in rows]
    fig = go.Figure()
    for key, label, color in (("magsim", "MagSim", MAGSIM_COLOR), ("angsim", "AngSim", ANGSIM_COLOR)):
        values = [r[key] if _finite(r[key]) else None for r in rows]
        intervals = [r.get(f"{key}_interval") for r in rows]
        fig.add_bar(name=label, x=names, y=values, marker=dict(color=color, opacity=[FADED if f else 1.0
                                                                                    for f in too_few]),
                    error_y=_error_bars(intervals),
                    # Inside, at the bar's foot: above the bar the number would sit on its error bar. Named there
                    # too: the legend under the students' names fell below the fold at 1400×900.
                    text=[f"{label} {v:.3f}" if v is not None else "" for v in values], textposition="inside",
                    insidetextanchor="start", textangle=0, insidetextfont=dict(color="white"),
                    customdata=[[r["both_accepted"], r.get("pairs", float("nan")), _interval_text(i, ".3f")]
                                for r, i in zip(rows, intervals)],
                    hovertemplate=f"%{{x}}<br>{label} %{{y:.4f}}%{{customdata[2]}} (95%)<br>pairs accepted by "
                                  "both: %{customdata[0]} of %{customdata[1]}<extra></extra>")
    for name, r, few in zip(names, rows, too_few):
        accuracy = (f"<br>acc {r['accuracy']:.1%}{_interval_text(r.get('accuracy_interval'), '.1%')}"
                    if _finite(r.get("accuracy")) else "")
        undefined = "" if _finite(r["magsim"]) else "<br>undefined"
        warning = f"<br>⚠ only {r['both_accepted']} pairs: too few to compare" if few and _finite(r["magsim"]) \
            else ""
        fig.add_annotation(x=name, y=1.12, text=f"n = {r['both_accepted']} pairs{accuracy}{undefined}{warning}",
                           showarrow=False, font=dict(size=11, color=WARNING_COLOR if few else None),
                           yanchor="bottom")
    fig.update_layout(title=title, barmode="group", yaxis=dict(range=[0, 1.3], title="similarity (1 = same)",
                      tickvals=[0, 0.25, 0.5, 0.75, 1.0]), legend=dict(orientation="h", y=-0.15),
                      margin=dict(t=100))
    return fig


def difference_figure(differences: Sequence[Mapping], title: str = "Paired differences between students "
                      "(same base samples, 95% interval)", too_few: Sequence[str] = ()) -> go.Figure:
    """One row per (student a, student b): MagSim(a) − MagSim(b) and AngSim(a) − AngSim(b) as points with their
    paired intervals; an interval that does not cross the dotted zero line is a resolved difference. A pair with a
    student in `too_few` (fewer than MIN_PAIRS pairs accepted by both models) is faded and marked ⚠."""
    faded = [d["student_a"] in too_few or d["student_b"] in too_few for d in differences]
    return paired_difference_figure(differences, (("magsim", "MagSim", MAGSIM_COLOR),
                                                  ("angsim", "AngSim", ANGSIM_COLOR)), title, "base samples",
                                    faded, f"⚠ faded: a student rests on fewer than {MIN_PAIRS} pairs accepted by "
                                           "both models, too few to compare")


def per_class_figure(per_class: Mapping[str, Mapping], class_names: Sequence[str] | None = None,
                     title: str = "MagSim / AngSim by base class") -> go.Figure:
    """One row per metric, one bar per (class, student); `per_class` maps student → {class: {magsim, angsim,
    both_accepted, pairs}} (JSON keys may be strings). Hover shows how many pairs each bar rests on; a bar resting
    on fewer than MIN_PAIRS is faded, as in `similarity_bar_figure`."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("MagSim", "AngSim"),
                        vertical_spacing=0.1)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    for i, (student, classes) in enumerate(per_class.items()):
        keys = sorted(classes, key=lambda c: int(c))
        labels = [class_names[int(c)] if class_names else str(c) for c in keys]
        for row, metric in ((1, "magsim"), (2, "angsim")):
            values = [classes[c][metric] if _finite(classes[c][metric]) else None for c in keys]
            fig.add_bar(x=labels, y=values, name=student, legendgroup=student, showlegend=row == 1,
                        marker=dict(color=palette[i % len(palette)],
                                    opacity=[FADED if classes[c]["both_accepted"] < MIN_PAIRS else 1.0
                                             for c in keys]), row=row, col=1,
                        customdata=[[classes[c]["both_accepted"], classes[c]["pairs"]] for c in keys],
                        hovertemplate=f"{student}<br>%{{x}}: %{{y:.3f}}<br>accepted by both: "
                                      "%{customdata[0]} of %{customdata[1]} pairs<extra></extra>")
    fig.update_yaxes(range=[0, 1.05])
    fig.update_xaxes(type="category")   # every class named, digits' '0'…'9' too
    fig.update_layout(title=f"{title}<br><sup>faded: fewer than {MIN_PAIRS} pairs accepted by both models, too "
                            "few to compare</sup>", barmode="group", legend=dict(orientation="h", y=-0.12))
    return fig


def _display(x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Normalized (C, H, W) → [0, 1] for display (min-max when the normalization is unknown)."""
    x = x.detach().float().cpu()
    if mean is not None and std is not None:
        return (x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)).clamp(0, 1)
    return (x - x.min()) / (x.max() - x.min()).clamp_min(1e-12)


def _image_trace(img01: torch.Tensor) -> go.BaseTraceType:
    if img01.shape[0] == 3:
        return go.Image(z=(img01.permute(1, 2, 0) * 255).round().byte().numpy(), hoverinfo="skip")
    return go.Heatmap(z=img01[0].flip(0).numpy(), colorscale="gray", zmin=0, zmax=1, showscale=False,
                      hoverinfo="skip")


def attack_panels_figure(base: torch.Tensor, teacher_adversarial: torch.Tensor, student_adversarial: torch.Tensor,
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                         row_titles: Sequence[str] | None = None, teacher_status: Sequence[str] | None = None,
                         student_status: Sequence[str] | None = None) -> go.Figure:
    """Rows of [base x_n | teacher BSS | student BSS | x̄^t | x̄^s] for (R, C, H, W) normalized tensors.

    Perturbations are in the normalized input space the metric measures, summed over channels, on ONE symmetric
    red-blue scale shared by every panel, so their lengths compare by eye. `mean`/`std` (DatasetInfo's) give
    true pixel colours for the images."""
    rows = base.shape[0]
    t_pert = (teacher_adversarial - base).detach().float().cpu().sum(1)
    s_pert = (student_adversarial - base).detach().float().cpu().sum(1)
    limit = max(float(t_pert.abs().max()), float(s_pert.abs().max()), 1e-6)
    titles = []
    for r in range(rows):
        t_note = f"<br>{teacher_status[r]}" if teacher_status else ""
        s_note = f"<br>{student_status[r]}" if student_status else ""
        t_norm, s_norm = float(t_pert[r].norm()), float(s_pert[r].norm())
        titles += [row_titles[r] if row_titles else "base x", f"teacher BSS{t_note}", f"student BSS{s_note}",
                   f"x̄ teacher ‖·‖={t_norm:.2f}", f"x̄ student ‖·‖={s_norm:.2f}"]
    fig = make_subplots(rows=rows, cols=5, subplot_titles=titles, horizontal_spacing=0.03,
                        vertical_spacing=0.12 / max(rows, 1))
    for r in range(rows):
        for c, img in enumerate((base[r], teacher_adversarial[r], student_adversarial[r])):
            fig.add_trace(_image_trace(_display(img, mean, std)), row=r + 1, col=c + 1)
        for c, pert in ((4, t_pert[r]), (5, s_pert[r])):
            fig.add_trace(go.Heatmap(z=pert.flip(0).numpy(), colorscale="RdBu_r", zmid=0, zmin=-limit, zmax=limit,
                                     showscale=(r == 0 and c == 5), colorbar=dict(title="x̄", len=0.6),
                                     hovertemplate="%{z:.3f}<extra></extra>"), row=r + 1, col=c)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, scaleanchor="x", constrain="domain")
    fig.update_annotations(font_size=11)
    fig.update_layout(height=230 * rows + 60, margin=dict(t=70, l=10, r=10, b=10))
    return fig


def attack_loss_figure(teacher: BoundaryAttackResult, student: BoundaryAttackResult, index: int = 0) -> go.Figure:
    """L_a = f_b − f_k along both attacks of sample `index` (results made with record_trajectory=True), drawn up to
    the step where each stopped: a star where it crossed, a cross where it was rejected (both in the legend)."""
    fig = go.Figure()
    symbols, last_step = set(), 0   # the end markers drawn, for the legend; the longest attack
    for name, result, color in (("teacher", teacher, MAGSIM_COLOR), ("student", student, ANGSIM_COLOR)):
        if result.loss_trajectory is None:
            raise ValueError("attack_loss_figure needs attacks run with record_trajectory=True")
        end = int(result.steps[index])
        last_step = max(last_step, end)
        loss = result.loss_trajectory[:end + 1, index].detach().float().cpu()
        outcome = int(result.outcome[index])
        symbols.add("star" if outcome == 0 else "x")
        fig.add_scatter(x=list(range(end + 1)), y=loss.tolist(), mode="lines+markers", name=name,
                        line=dict(color=color))
        fig.add_scatter(x=[end], y=[float(loss[-1])], mode="markers", showlegend=False,
                        marker=dict(symbol="star" if outcome == 0 else "x", size=14, color=color),
                        hovertemplate=f"{name}: {outcome_text(outcome, end, end)}<extra></extra>")
    for symbol, meaning in (("star", "crossed into class k"), ("x", "rejected (see its panel)")):
        if symbol in symbols:
            fig.add_scatter(x=[None], y=[None], mode="markers", name=meaning, hoverinfo="skip",
                            marker=dict(symbol=symbol, size=12, color="gray"))
    fig.add_hline(y=0, line_dash="dot", annotation_text="boundary (L_a = 0)",
                  annotation_position="top left")   # the attacks end at the right, on the line
    fig.update_layout(title="Attack loss L_a = f_b − f_k per step", xaxis_title="step", yaxis_title="L_a")
    fig.update_xaxes(tick0=0, dtick=1 if last_step <= 20 else None)   # whole steps, never 0.2
    return fig


__all__ = ["attack_loss_figure", "attack_panels_figure", "difference_figure", "outcome_text", "per_class_figure",
           "similarity_bar_figure"]
