"""Labelled image grids: as a plotly figure (zoom, hover; static views and notebooks) and as a PNG with the labels
drawn in (the app's live view: a plain <img> costs the browser almost nothing to refresh several times a second).

Both take (B, C, H, W) images in [0, 1] and optional labels in the form of ModelInversion snapshot labels,
'target → prediction confidence': each cell is then captioned with the prediction and its confidence, green when
it is the target class and red otherwise.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image, ImageDraw, ImageFont

RIGHT, WRONG, NEUTRAL = "#1a7f37", "#cf222e", "#444444"


WIDE_SPACE = "\u2002"   # an en space: between a caption's class name and its confidence


def parse_snapshot_label(label: str) -> tuple[str, str, float] | None:
    """'Ankle boot → Sneaker 0.55' (a ModelInversion snapshot label) -> (target, prediction, confidence)."""
    try:
        target, rest = label.split(" → ", 1)
        prediction, confidence = rest.rsplit(" ", 1)
        return target, prediction, float(confidence)
    except ValueError:
        return None


def _short(name: str, n: int) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def caption(label: str) -> tuple[str, str]:
    """(text, colour) under a cell: the prediction and confidence, coloured by correctness, or the label as is."""
    parsed = parse_snapshot_label(label)
    if parsed is None:
        return _short(label, 12), NEUTRAL
    target, prediction, confidence = parsed
    # A percentage after a wide space: '2 1.0' and '1 .90' read as the numbers 21.0 and 1.90 (the font's space is
    # narrow). Five characters of the name keep 'Ankl… 100%' within a 56-px cell.
    return f"{_short(prediction, 5)}{WIDE_SPACE}{confidence:.0%}", RIGHT if target == prediction else WRONG


def class_columns(targets: Sequence[int], class_names: Sequence[str], max_cols: int = 10
                  ) -> tuple[int, list[str] | None]:
    """(columns, column titles) that put one target class per column when the batch cycles through at most
    `max_cols` classes (as ModelInversion's targets do); otherwise `max_cols` untitled columns."""
    classes = list(dict.fromkeys(targets))
    k = len(classes)
    if not targets or k > max_cols or any(t != classes[i % k] for i, t in enumerate(targets)):
        return max_cols, None
    ncols = k * (max_cols // k)
    return ncols, [class_names[classes[c % k]] for c in range(ncols)]


@dataclass
class GridLayout:
    canvas: np.ndarray                    # (height, width, 3) uint8, images pasted, white elsewhere
    cells: list[tuple[int, int]]          # (top, left) of every image
    cell_h: int
    cell_w: int
    band: int                             # caption band under each image
    header: int                           # column-title band on top
    pad: int


def grid_layout(images01: torch.Tensor, ncols: int = 10, max_rows: int = 5, min_cell: int = 56,
                captions: bool = True, header: bool = False) -> GridLayout:
    """Paste up to `ncols * max_rows` images (upscaled, nearest, to at least `min_cell` px) onto a white canvas."""
    # numpy, not torch: for a few dozen small images torch's per-op overhead dominates, and this runs live.
    images = images01[:ncols * max_rows].detach().float().cpu().numpy()
    n, channels, h, w = images.shape
    ncols = max(1, min(ncols, n))
    rows = max(1, math.ceil(n / ncols))
    scale = max(1, math.ceil(min_cell / max(h, w)))
    ch, cw, pad = h * scale, w * scale, 4
    band, top_band = (16 if captions else 0), (18 if header else 0)
    canvas = np.full((top_band + rows * (ch + band + pad) + pad, ncols * (cw + pad) + pad, 3), 255, np.uint8)
    pixels = (np.clip(images, 0, 1) * 255 + 0.5).astype(np.uint8).repeat(scale, 2).repeat(scale, 3)
    pixels = (np.broadcast_to(pixels, (n, 3, ch, cw)) if channels == 1 else pixels[:, :3]).transpose(0, 2, 3, 1)
    cells = []
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = top_band + pad + r * (ch + band + pad), pad + c * (cw + pad)
        canvas[top:top + ch, left:left + cw] = pixels[i]
        cells.append((top, left))
    return GridLayout(canvas, cells, ch, cw, band, top_band, pad)


@lru_cache(maxsize=4096)
def _text_image(text: str, colour: str, size: int) -> Image.Image:
    """A caption rendered once (FreeType is the slow part of a live grid; captions repeat from frame to frame)."""
    font = ImageFont.load_default(size=size)
    # PIL's default font has no en space (WIDE_SPACE) and a narrow plain one: draw the parts with a gap of its width.
    parts, gap = text.split(WIDE_SPACE), size // 2
    boxes = [font.getbbox(part) for part in parts]
    top, bottom = min(b[1] for b in boxes), max(b[3] for b in boxes)
    width = sum(b[2] - b[0] for b in boxes) + gap * (len(parts) - 1)
    image = Image.new("RGBA", (max(1, width), max(1, bottom - top)), (255, 255, 255, 0))
    x = 0
    for part, (left, _, right, _) in zip(parts, boxes):
        ImageDraw.Draw(image).text((x - left, -top), part, fill=colour, font=font)
        x += right - left + gap
    return image


def _paste_centred(canvas: Image.Image, text_image: Image.Image, x: float, y: float) -> None:
    canvas.paste(text_image, (round(x - text_image.width / 2), round(y - text_image.height / 2)), text_image)


def image_grid_png(images01: torch.Tensor, labels: Sequence[str] | None = None, ncols: int = 10, max_rows: int = 5,
                   column_titles: Sequence[str] | None = None, min_cell: int = 56) -> bytes:
    """The labelled grid as PNG bytes, captions drawn into the image."""
    layout = grid_layout(images01, ncols, max_rows, min_cell, captions=bool(labels), header=bool(column_titles))
    image = Image.fromarray(layout.canvas)
    for (top, left), label in zip(layout.cells, labels or []):
        text, colour = caption(label)
        _paste_centred(image, _text_image(text, colour, 10), left + layout.cell_w / 2,
                       top + layout.cell_h + layout.band / 2)
    for c, name in enumerate((column_titles or [])[:len(layout.cells)]):
        x = layout.pad + c * (layout.cell_w + layout.pad) + layout.cell_w / 2
        _paste_centred(image, _text_image(_short(name, 10), "#222222", 11), x, layout.header / 2 + 2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over size: refreshed live
    return buffer.getvalue()


def image_grid_figure(images01: torch.Tensor, labels: Sequence[str] | None = None, ncols: int = 10,
                      max_rows: int = 5, column_titles: Sequence[str] | None = None, min_cell: int = 56,
                      title: str | None = None) -> go.Figure:
    """The labelled grid as a plotly figure; hovering a cell shows its full label."""
    layout = grid_layout(images01, ncols, max_rows, min_cell, captions=bool(labels), header=bool(column_titles))
    height, width = layout.canvas.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(layout.canvas).save(buffer, format="PNG", compress_level=1)
    source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    fig = go.Figure(go.Image(source=source, x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"))
    centres_x = [left + layout.cell_w / 2 for _, left in layout.cells]
    if labels:
        captions = [caption(label) for label in labels[:len(layout.cells)]]
        centres_y = [top + layout.cell_h + layout.band / 2 for top, _ in layout.cells]
        # One caption trace per colour, each keeping its colour when unselected: a click on a selectable grid
        # (the app's one-image view) selects a point, and plotly fades every unselected point, captions included.
        for colour in dict.fromkeys(c for _, c in captions):
            shown = [i for i, (_, c) in enumerate(captions) if c == colour]
            fig.add_trace(go.Scatter(x=[centres_x[i] for i in shown], y=[centres_y[i] for i in shown],
                                     mode="text", text=[captions[i][0] for i in shown],
                                     textfont=dict(size=9, color=colour), hoverinfo="skip", showlegend=False,
                                     selected=dict(textfont=dict(color=colour)),
                                     unselected=dict(textfont=dict(color=colour))))
        # Invisible hover and click targets, one per image; the clicked one is framed.
        fig.add_trace(go.Scatter(x=centres_x, y=[top + layout.cell_h / 2 for top, _ in layout.cells],
                                 mode="markers", marker=dict(opacity=0, size=layout.cell_w * 0.8, symbol="square-open",
                                                             color=WRONG, line=dict(width=3)),
                                 selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=0)),
                                 hovertext=list(labels[:len(layout.cells)]), hoverinfo="text", showlegend=False))
    if column_titles:
        titles = list(column_titles)[:min(len(column_titles), len(layout.cells))]
        fig.add_trace(go.Scatter(x=centres_x[:len(titles)], y=[layout.header / 2 + 1] * len(titles), mode="text",
                                 text=[f"<b>{_short(t, 10)}</b>" for t in titles], textfont=dict(size=11),
                                 hoverinfo="skip", showlegend=False))
    # The figure's own width is the canvas's: shown with width="content", a one-image pool stays a 64-px cell
    # instead of being stretched across the page.
    fig.update_layout(height=height + (40 if title else 10), width=max(width, 200), title=title,
                      plot_bgcolor="white", margin=dict(l=0, r=0, t=30 if title else 0, b=0))
    fig.update_xaxes(visible=False, range=[0, width], constrain="domain")
    fig.update_yaxes(visible=False, range=[height, 0], scaleanchor="x", constrain="domain")
    return fig
