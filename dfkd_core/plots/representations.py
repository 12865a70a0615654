"""Figures for representation analysis: CKA heatmap and its 95% intervals as error bars (methods.md#cka), Grad-CAM
overlays and overlap scores with their intervals (methods.md#grad-cam).

Builders take plain tensors / dicts (or a `CKAResult` / `AttentionComparison`) and return plotly figures; the
overlay colouring is shared with the PNG the CLI writes, so app and files look the same.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import sample_colorscale, unlabel_rgb
from plotly.subplots import make_subplots

from dfkd_core.plots.intervals import error_bars, paired_difference_figure
from dfkd_core.stats import Interval


def cka_heatmap_figure(matrix, layers_teacher: Sequence[str] | None = None,
                       layers_student: Sequence[str] | None = None, title: str | None = None,
                       teacher_label: str = "teacher", student_label: str = "student") -> go.Figure:
    """Heatmap of CKA(teacher layer i, student layer j) in [0, 1], values written in the cells.

    `matrix` may be a `CKAResult` (its layers and kernel are used) or a (Lt, Ls) tensor/array.
    """
    bounds = None
    if hasattr(matrix, "layers_teacher"):
        result = matrix
        layers_teacher, layers_student = result.layers_teacher, result.layers_student
        title = title or f"{result.quantity}<br><sup>{result.estimator} estimator, n = {result.samples:,}</sup>"
        matrix = result.matrix
        if result.low is not None:
            bounds = np.stack([np.asarray(result.low), np.asarray(result.high)], -1)
    z = np.asarray(torch.as_tensor(matrix, dtype=torch.float64))
    layers_teacher = list(layers_teacher or [f"layer {i}" for i in range(z.shape[0])])
    layers_student = list(layers_student or [f"layer {j}" for j in range(z.shape[1])])
    interval = "<br>95% interval [%{customdata[0]:.3f}, %{customdata[1]:.3f}]" if bounds is not None else ""
    fig = go.Figure(go.Heatmap(
        z=z, x=layers_student, y=layers_teacher, zmin=0, zmax=1, colorscale="Viridis", customdata=bounds,
        # Three decimals always ("0.600", not "0.6"): cells read as one scale, and 0.996 is not shown as 1.00 (an
        # untrained network scores 0.98 at a first layer: the third decimal is where students differ there).
        text=np.where(np.isnan(z), "", np.char.mod("%.3f", np.nan_to_num(z))), texttemplate="%{text}",
        hovertemplate=f"{teacher_label} %{{y}}<br>{student_label} %{{x}}<br>CKA %{{z:.4f}}{interval}<extra></extra>",
        colorbar={"title": "CKA"}))
    fig.update_layout(title=title or "CKA", xaxis_title=f"{student_label} layer", yaxis_title=f"{teacher_label} layer",
                      yaxis_autorange="reversed", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def cka_interval_figure(result, teacher_label: str = "teacher", student_label: str = "student") -> go.Figure:
    """Every cell of a `CKAResult` as a point with its 95% interval as an error bar: x = student layer, one line
    per teacher layer (where two lines' bars overlap, the data cannot tell those cells apart)."""
    fig = go.Figure()
    for i, t in enumerate(result.layers_teacher):
        values = [result.value(t, s) for s in result.layers_student]
        intervals = [result.interval(t, s) for s in result.layers_student]
        fig.add_scatter(x=result.layers_student, y=[v if not np.isnan(v) else None for v in values],
                        mode="markers+lines", name=f"{teacher_label} {t}",
                        error_y=error_bars(intervals),
                        hovertemplate=f"{teacher_label} {t}<br>{student_label} %{{x}}<br>CKA %{{y:.4f}}"
                                      "<extra></extra>")
    resamples = f", {result.resamples} resamples" if result.resamples else ""
    # The method on its own line: "jackknife over 4 minibatches, t with 3 df" cut the one-line title off.
    fig.update_layout(title=f"{result.quantity}: 95% intervals<br><sup>{result.interval_method}{resamples}</sup>",
                      xaxis_title=f"{student_label} layer", yaxis_title="CKA",
                      yaxis_range=[0, 1.05], legend=dict(orientation="h", y=-0.25),
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def overlap_interval_figure(summary: Mapping[str, Mapping]) -> go.Figure:
    """Mean Grad-CAM correlation and top-region IoU per student with 95% error bars over images; `summary` is
    `AttentionComparison.summary(intervals=True)` or a saved gradcam.json's "students"."""
    fig = go.Figure()
    names = list(summary)
    for key, label, color in (("correlation", "mean r", "#1f77b4"), ("iou", "mean IoU", "#ff7f0e")):
        intervals = [Interval.from_dict(summary[n][f"{key}_interval"]) for n in names]
        fig.add_bar(x=names, y=[iv.estimate for iv in intervals], name=label, marker_color=color,
                    error_y=error_bars(intervals),
                    customdata=[[iv.units] for iv in intervals],
                    hovertemplate=f"%{{x}}<br>{label} %{{y:.3f}} over %{{customdata[0]}} images<extra></extra>")
    fig.update_layout(barmode="group", yaxis_title="overlap with the teacher's map", yaxis_range=[-0.1, 1.05],
                      title="Mean overlap with 95% intervals (bootstrap over images)",
                      margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig


def overlap_difference_figure(differences: Sequence[Mapping]) -> go.Figure:
    """Paired differences of mean r and mean IoU between students on the same images, with their paired 95%
    intervals: `AttentionComparison.paired_differences()` or a saved gradcam.json's "differences"."""
    return paired_difference_figure(differences, (("correlation", "r", "#1f77b4"), ("iou", "IoU", "#ff7f0e")),
                                    "Paired differences between students (same images, 95% interval)", "images")


@lru_cache(maxsize=4)
def _lut(colorscale: str) -> np.ndarray:
    colors = sample_colorscale(colorscale, list(np.linspace(0, 1, 256)))
    return np.array([unlabel_rgb(c) for c in colors], dtype=np.float64)


def attention_overlay(image01: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5,
                      colorscale: str = "Jet") -> np.ndarray:
    """Blend one image (C, H, W) or (H, W) in [0, 1] with its Grad-CAM map (H, W): uint8 (H, W, 3).

    Each map is scaled by its own maximum, so the colours show where a model looks, not how strongly.
    """
    img = image01.detach().float().cpu()
    img = img[None] if img.dim() == 2 else img
    rgb = (img.repeat(3, 1, 1) if img.shape[0] == 1 else img[:3]).permute(1, 2, 0).numpy() * 255.0
    cam = cam.detach().double().cpu().numpy()
    peak = cam.max()
    level = np.clip(cam / peak, 0, 1) if peak > 0 else np.zeros_like(cam)
    heat = _lut(colorscale)[np.round(level * 255).astype(int)]
    return np.clip((1 - alpha) * rgb + alpha * heat, 0, 255).astype(np.uint8)


def overlay_grid(images01: torch.Tensor, maps: Mapping[str, torch.Tensor], alpha: float = 0.5,
                 min_cell: int = 96) -> np.ndarray:
    """One uint8 (rows·H', cols·W', 3) picture: a row per image, columns input | one overlay per model."""
    n, h = len(images01), images01.shape[-2]
    scale = max(1, -(-min_cell // h))
    rows = []
    for i in range(n):
        plain = attention_overlay(images01[i], torch.zeros(images01.shape[-2:]), alpha=0.0)
        cells = [plain] + [attention_overlay(images01[i], m[i], alpha) for m in maps.values()]
        cells = [np.pad(c.repeat(scale, 0).repeat(scale, 1), ((2, 2), (2, 2), (0, 0)), constant_values=255)
                 for c in cells]
        rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(rows, axis=0)


def save_overlay_png(images01: torch.Tensor, maps: Mapping[str, torch.Tensor], path: str | Path,
                     alpha: float = 0.5) -> Path:
    from PIL import Image

    from dfkd_core.runs import atomic_open

    with atomic_open(path) as f:
        Image.fromarray(overlay_grid(images01, maps, alpha)).save(f, format="PNG")
    return Path(path)


def gradcam_grid_figure(images01: torch.Tensor, maps: Mapping[str, torch.Tensor],
                        scores: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
                        captions: Sequence[str] | None = None, alpha: float = 0.5) -> go.Figure:
    """Grid: a row per image, columns input | teacher | student… (Grad-CAM overlays).

    `scores`: {student: {"correlation": (N,), "iou": (N,)}} written above the student cells; `captions`: one per
    image (e.g. "label 3 · teacher 3 · student 5"), shown on the input column.
    """
    names = list(maps)
    n, cols = len(images01), 1 + len(names)
    titles = []
    for i in range(n):
        titles.append(captions[i] if captions else "input")
        for name in names:
            s = (scores or {}).get(name)
            # The scores on a line of their own: on one line, five columns' titles ran into each other.
            titles.append(name if s is None else
                          f"{name}<br>r={float(s['correlation'][i]):.2f} · IoU={float(s['iou'][i]):.2f}")
    fig = make_subplots(rows=n, cols=cols, subplot_titles=titles, horizontal_spacing=0.01,
                        vertical_spacing=0.06 if scores else 0.03)
    for i in range(n):
        plain = attention_overlay(images01[i], torch.zeros(images01.shape[-2:]), alpha=0.0)
        fig.add_trace(go.Image(z=plain), row=i + 1, col=1)
        for c, name in enumerate(names):
            fig.add_trace(go.Image(z=attention_overlay(images01[i], maps[name][i], alpha)), row=i + 1, col=c + 2)
    # The colour scale of the overlays: each map is scaled by its own maximum (see `attention_overlay`).
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                             marker={"colorscale": "Jet", "cmin": 0, "cmax": 1, "color": [0],
                                     "colorbar": {"title": {"text": "Grad-CAM<br>÷ map max", "side": "right"},
                                                  "thickness": 12, "len": min(1.0, 300 / max(220, 170 * n)),
                                                  "y": 1, "yanchor": "top", "tickvals": [0, 0.5, 1]}}))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=11)
    # Room above the first row: plotly's toolbar sits at the top right and would cover the first titles.
    fig.update_layout(height=max(220, (190 if scores else 170) * n) + 40, margin={"l": 5, "r": 5, "t": 80, "b": 5})
    return fig


def overlap_histogram_figure(scores: Mapping[str, torch.Tensor], metric: str = "correlation",
                             bins: int = 20) -> go.Figure:
    """Overlaid histograms of one overlap score per student (NaN images left out), means as dashed lines."""
    fig = go.Figure()
    lo = -1.0 if metric == "correlation" else 0.0
    for name, values in scores.items():
        v = torch.as_tensor(values, dtype=torch.float64)
        v = v[~torch.isnan(v)].numpy()
        fig.add_trace(go.Histogram(x=v, name=f"{name} (n={len(v)})", opacity=0.6,
                                   xbins={"start": lo, "end": 1.0, "size": (1.0 - lo) / bins}))
        if len(v):
            fig.add_vline(x=float(v.mean()), line_dash="dash", annotation_text=f"{name} mean {v.mean():.2f}")
    label = "Pearson correlation with teacher map" if metric == "correlation" else "top-region IoU with teacher map"
    fig.update_layout(barmode="overlay", xaxis_title=label, yaxis_title="images",
                      margin={"l": 10, "r": 10, "t": 30, "b": 10})
    return fig


__all__ = ["attention_overlay", "cka_heatmap_figure", "cka_interval_figure", "gradcam_grid_figure",
           "overlap_difference_figure", "overlap_histogram_figure", "overlap_interval_figure", "overlay_grid",
           "save_overlay_png"]
