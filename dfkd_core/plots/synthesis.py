"""Figures for model inversion (methods.md#model-inversion): per-term loss curves with the steps where a live change
took effect, BN statistics of the synthesized batch against the teacher's running statistics, and a comparison of runs
(image grids: `grids.py`). Inputs are plain data so a notebook can call these on `job.history` or on a run's
`metrics.jsonl`.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from dfkd_core.synthesis.engine import TERM_WEIGHTS

# Legend names in methods.md#model-inversion notation (unweighted terms; "total" is the weighted sum that is optimized).
TERM_NAMES = {"loss_total": "total", "loss_ce": "CE", "loss_tv": "R_TV", "loss_l2": "||x̂||₂",
              "loss_bn_feature": "R_feature", "loss_compete": "R_compete"}
# Each curve's colour is fixed by what it shows, so the same run's curves look the same on every page (by trace order,
# 'teacher accuracy' was green on Synthesize and orange on Runs, which lists one loss term fewer).
# Legend names of the terms times their weights (`TERM_WEIGHTS` says which weight each term has).
WEIGHTED_TERM_NAMES = {"loss_ce": "α_ce·CE", "loss_tv": "α_tv·R_TV", "loss_l2": "α_l2·||x̂||₂",
                       "loss_bn_feature": "α_f·R_feature", "loss_compete": "α_c·R_compete", "loss_contrast": "α_cr·R_cr"}
METRIC_NAMES = {"bn_distance": "BN distance to the teacher's statistics", "teacher_accuracy": "teacher accuracy",
                "mean_confidence": "mean confidence", "test_accuracy": "test accuracy"}   # titles, not keys
CURVE_COLOURS = {"loss_total": "#1f77b4", "loss_ce": "#ff7f0e", "loss_tv": "#2ca02c", "loss_l2": "#d62728",
                 "loss_bn_feature": "#9467bd", "loss_compete": "#8c564b", "loss_contrast": "#e377c2",
                 "teacher_accuracy": "#17becf", "mean_confidence": "#bcbd22", "batch_accuracy": "#7f7f7f",
                 "test_accuracy": "#17becf"}   # one legend for both panels: no colour of a loss term
_OTHER_COLOURS = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")


def curve_colour(key: str) -> str:
    return CURVE_COLOURS.get(key) or _OTHER_COLOURS[sum(map(ord, key)) % len(_OTHER_COLOURS)]


GREEK = {"alpha_ce": "α_ce", "alpha_tv": "α_tv", "alpha_l2": "α_l2", "alpha_f": "α_f", "alpha_c": "α_c",
         "first_bn_multiplier": "w₁", "lr": "lr", "jitter": "jitter", "flip": "flip"}


def _thin(history: Sequence[Mapping], max_points: int) -> list[Mapping]:
    """Every k-th row (plus the last) so a long run's curves stay cheap to redraw several times a second."""
    history = list(history)
    if len(history) <= max_points:
        return history
    k = math.ceil(len(history) / max_points)
    return history[::k] + ([history[-1]] if (len(history) - 1) % k else [])


def _series(rows: Sequence[Mapping], key: str, min_gap: float = 0.02) -> tuple[list, list]:
    """(steps, values) of `key`; a None breaks the line where rows of another phase without the key lie between two
    values more than `min_gap` of the step range apart (a continual run's losses of one phase were joined by a
    straight line across the next phase; trajectory KD's student steps, every other step, stay one line)."""
    steps = [row.get("step", i) for i, row in enumerate(rows)]
    span = (max(steps) - min(steps)) if steps else 0
    xs, ys = [], []
    other_phase_between, last_phase = False, None
    for i, row in enumerate(rows):
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            if other_phase_between and xs and steps[i] - xs[-1] > min_gap * span:
                xs.append(steps[i])
                ys.append(None)
            xs.append(steps[i])
            ys.append(value)
            other_phase_between, last_phase = False, row.get("phase")
        elif xs and row.get("phase") != last_phase:
            other_phase_between = True
    return xs, ys


CLOSE_CHANGES = 0.04      # of the step range: changes closer than this to the same setting are one marker
LABEL_ROW_PX = 16         # height of one row of change labels above the plot
LABEL_CHAR_PX = 6.6       # about a character of the labels' 11-px font, to tell which labels would overlap
ASSUMED_PLOT_PX = 620     # the loss chart's drawing width in the app's column; narrower only stacks more rows


def _label_anchor(fraction: float) -> str:
    """Labels near an end of the axis grow inwards: centred there, they ran past the figure's edge."""
    return "left" if fraction < 0.15 else "right" if fraction > 0.85 else "center"


def _label_rows(fractions: Sequence[float], texts: Sequence[str]) -> list[int]:
    """A row (0 = nearest the plot) per change label at `fractions` of the step axis, so labels that would overlap
    side by side sit one above the other: each takes the lowest row whose last label ends before it begins. Widths
    are estimated from the text, as the figure is built before the browser knows its width."""
    ends: list[float] = []    # per row: the right edge (in pixels) of its last label
    rows = []
    for fraction, text in zip(fractions, texts):
        at, width = fraction * ASSUMED_PLOT_PX, len(text) * LABEL_CHAR_PX + 8
        left = {"left": at, "right": at - width, "center": at - width / 2}[_label_anchor(fraction)]
        row = next((r for r, end in enumerate(ends) if end <= left), len(ends))
        if row == len(ends):
            ends.append(0.0)
        ends[row] = left + width
        rows.append(row)
    return rows


def _merge_slider_moves(updates: Sequence[Mapping], close: float) -> list[list[Mapping]]:
    """The changes grouped into the markers to draw: a run of changes to the same settings, each closer than
    `close` steps to the one before (a slider stepped with the keyboard), is one marker; any other change is its
    own."""
    merged: list[list[Mapping]] = []
    for update in updates:
        last = merged[-1][-1] if merged else None
        if last is not None and set(update) == set(last) and update["step"] - last["step"] < close:
            merged[-1].append(update)
        else:
            merged.append([update])
    return merged


def describe_update(update: Mapping) -> str:
    """'α_tv=1, α_l2=3' for one live change (its 'step' left out): the symbols the sliders and docs use."""
    return ", ".join(f"{GREEK.get(k, k)}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool)
                     else f"{GREEK.get(k, k)}={v}" for k, v in update.items() if k != "step")


def loss_curves_figure(history: Sequence[Mapping], updates: Iterable[Mapping] = (),
                       keys: Sequence[str] | None = None,
                       accuracy_keys: Sequence[str] = ("teacher_accuracy", "mean_confidence"),
                       log_y: bool = True, max_points: int = 600, height: int = 420,
                       weighted: bool = False) -> go.Figure:
    """Per-term loss curves (top) and the teacher's accuracy/confidence on the batch (bottom) over steps.
    `weighted`: each term times its weight at that step (what it adds to the total), which shows which term drives
    the images: unweighted, R_TV sits at 10²–10³ even where α_tv = 0.001 makes it negligible.

    Each entry of `updates` ({"step": i, **changes}, as in `job.updates`) is drawn as a dashed vertical line at the
    step where the change took effect, labelled with what changed. `keys` default: every 'loss_*' in history.
    """
    rows = _thin(history, max_points)
    names = dict(TERM_NAMES)
    if weighted:
        weights = {f"loss_{term}": weight for term, weight in TERM_WEIGHTS.items()}
        rows = [{**r, **{k: r[k] * r[w] for k, w in weights.items()
                         if isinstance(r.get(k), (int, float)) and isinstance(r.get(w), (int, float))}} for r in rows]
        names.update(WEIGHTED_TERM_NAMES)
    present = set().union(*(r.keys() for r in rows)) if rows else set()
    keys = list(keys) if keys is not None else [k for k in TERM_NAMES if k in present]
    accuracy_keys = [k for k in accuracy_keys if k in present]
    # No loss to draw (a distillation stopped before its first evaluation logs only its inversion's accuracy): the
    # accuracy panel alone, not two thirds of the figure left blank above it.
    losses_drawn = bool(keys) or not accuracy_keys
    two = losses_drawn and bool(accuracy_keys)
    accuracy_row = 2 if losses_drawn else 1
    fig = make_subplots(rows=2 if two else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        row_heights=[0.68, 0.32] if two else [1.0])
    for key in keys:
        xs, ys = _series(rows, key)
        if log_y:  # log axes cannot show zeros; a term switched off simply leaves a gap
            kept = [(x, y) for x, y in zip(xs, ys) if y is None or y > 0]
            xs, ys = zip(*kept) if any(y is not None for _, y in kept) else ((), ())
        fig.add_trace(go.Scatter(x=list(xs), y=list(ys), mode="lines", name=names.get(key, key),
                                 line=dict(width=3 if key == "loss_total" else 1.6, color=curve_colour(key))),
                      row=1, col=1)
    for key in accuracy_keys:
        xs, ys = _series(rows, key)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=key.replace("_", " "),
                                 line=dict(dash="dot" if "confidence" in key else "solid", color=curve_colour(key))),
                      row=accuracy_row, col=1)
    steps = [r.get("step", i) for i, r in enumerate(rows)]
    updates = list(updates)
    span = max(1, (max(steps) - min(steps)) if steps else max((u["step"] for u in updates), default=1))
    marks = _merge_slider_moves(updates, CLOSE_CHANGES * span)
    # What changed, written level above the plot: inside it, rotated labels sat across the curves they explain.
    texts = [describe_update(moves[-1]) + (f" ({len(moves)} moves)" if len(moves) > 1 else "") for moves in marks]
    start = min(steps) if steps else 0
    fractions = [(m[0]["step"] - start) / span for m in marks]
    label_rows = _label_rows(fractions, texts)
    for moves, text, row, fraction in zip(marks, texts, label_rows, fractions):
        # At the first move's step, with the last move's values; the hover lists every move.
        step = moves[0]["step"]
        fig.add_vline(x=step, line=dict(color="#888", dash="dash", width=1))
        fig.add_annotation(x=step, y=1.0, xref="x", yref="paper", text=text, showarrow=False,
                           xanchor=_label_anchor(fraction), yanchor="bottom", yshift=2 + LABEL_ROW_PX * row,
                           font=dict(size=11, color="#444"),
                           bgcolor="rgba(255,255,255,0.85)", borderpad=1,
                           hovertext="<br>".join(f"step {m['step']}: {describe_update(m)}" for m in moves))
    positive = [y for trace in fig.data[:len(keys)] for y in (trace.y or ()) if y is not None and y > 0] if log_y \
        else []
    if positive and max(positive) / min(positive) >= 10:
        # One tick per decade, written as a power of ten: plotly's default labels the 2× and 5× minor ticks with
        # bare digits, which reads as "5, 2, 100, 5, 2, 10". Within one decade that leaves no tick at all (a teacher's
        # loss from 0.9 to 0.2), so there plotly's own ticks stay.
        fig.update_yaxes(dtick=1, exponentformat="power", row=1, col=1)
    if losses_drawn:
        fig.update_yaxes(type="log" if log_y else "linear", title_text="loss", row=1, col=1)
    if accuracy_keys:
        fig.update_yaxes(range=[0, 1.02], title_text="on batch", row=accuracy_row, col=1)
    fig.update_xaxes(title_text="step", row=2 if two else 1, col=1)
    top = 10 + (LABEL_ROW_PX * (max(label_rows) + 1) + 4 if label_rows else 0)
    fig.update_layout(height=height if losses_drawn else height // 2, margin=dict(l=10, r=10, t=top, b=10),
                      legend=dict(orientation="h", y=-0.18), uirevision="keep")  # keep the user's zoom across redraws
    return fig


def bn_statistics_figure(stats: Sequence[Mapping], height: int = 380) -> go.Figure:
    """Per-channel BN input statistics of the synthesized batch (blue) against the teacher's running statistics (grey),
    every BN layer side by side; each layer is titled with its R_feature term (methods.md#model-inversion, unweighted)
    ||μ − running_mean||₂ + ||σ² − running_var||₂. `stats`: dicts with 'layer', 'running_mean', 'running_var'
    and, once a batch exists, 'batch_mean', 'batch_var' (as `ModelInversion.latest_bn_statistics`).
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    with_batch = all("batch_mean" in s for s in stats)
    keys = ("batch_mean", "batch_var", "running_mean", "running_var") if with_batch else ("running_mean",
                                                                                           "running_var")
    xs: list = []
    series: dict[str, list] = {k: [] for k in keys}
    offset = 0
    for s in stats:
        values = {k: torch.as_tensor(s[k]).float().flatten() for k in keys}
        channels = len(values["running_mean"])
        title = s["layer"]
        if with_batch:
            distance = float(torch.linalg.vector_norm(values["batch_mean"] - values["running_mean"])
                             + torch.linalg.vector_norm(values["batch_var"] - values["running_var"]))
            title += f"<br>d={distance:.2f}"
        xs += list(range(offset, offset + channels)) + [None]  # None: a gap between layers
        for k in keys:
            series[k] += values[k].tolist() + [None]
        fig.add_annotation(x=offset + channels / 2, y=1.07, xref="x", yref="paper", showarrow=False, text=title,
                           font=dict(size=10))
        if offset:
            fig.add_vline(x=offset - 0.5, line=dict(color="#ccc", width=1))
        offset += channels
    for row, (batch, running) in enumerate((("batch_mean", "running_mean"), ("batch_var", "running_var")), 1):
        fig.add_trace(go.Scatter(x=xs, y=series[running], mode="lines", line=dict(color="#888"),
                                 name="teacher running statistics", legendgroup="run", showlegend=row == 1),
                      row=row, col=1)
        if with_batch:  # lines, not markers: hundreds of SVG markers make a browser slow to redraw this live
            fig.add_trace(go.Scatter(x=xs, y=series[batch], mode="lines", line=dict(color="#1f77b4", width=1.2),
                                     name="synthesized batch", legendgroup="batch", showlegend=row == 1),
                          row=row, col=1)
    fig.update_xaxes(title_text="channel (BN layers left to right)", row=2, col=1)
    fig.update_yaxes(title_text="mean μ", row=1, col=1)
    fig.update_yaxes(title_text="variance σ²", row=2, col=1)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.2),
                      uirevision="keep")
    return fig


# One colour per run, in the order given, for every figure that compares runs (the compare-live view draws its
# per-layer bars and its curves side by side: run A must be the same colour in both).
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def run_comparison_figure(histories: Mapping[str, Sequence[Mapping]], keys: Sequence[str],
                          updates: Mapping[str, Iterable[Mapping]] | None = None, log_y_for_losses: bool = True,
                          max_points: int = 600, height_per_row: int = 230) -> go.Figure:
    """One panel per metric in `keys`, one line per run (`histories`: run name -> metric rows); a run's live
    updates are marked with dashed lines in its colour."""
    keys = list(keys)
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=[TERM_NAMES.get(k, METRIC_NAMES.get(k, k)) for k in keys])
    palette = RUN_COLOURS
    for r, key in enumerate(keys, 1):
        for i, (name, history) in enumerate(histories.items()):
            xs, ys = _series(_thin(history, max_points), key)
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, legendgroup=name, showlegend=r == 1,
                                     line=dict(color=palette[i % len(palette)])), row=r, col=1)
        if log_y_for_losses and key.startswith("loss"):
            fig.update_yaxes(type="log", dtick=1, exponentformat="power", row=r, col=1)
    for i, (name, marks) in enumerate((updates or {}).items()):
        for update in marks:
            fig.add_vline(x=update["step"], line=dict(color=palette[i % len(palette)], dash="dash", width=1))
    fig.update_xaxes(title_text="step", row=len(keys), col=1)
    fig.update_layout(height=max(300, height_per_row * len(keys)), margin=dict(l=10, r=10, t=30, b=10),
                      legend=dict(orientation="h", y=-0.08 - 0.1 / max(1, len(keys))))
    return fig
