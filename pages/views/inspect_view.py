"""Click one synthesized image to see why the teacher sees it as it does: its class probabilities, its share of the
batch's BN-statistics mismatch, and the real training images nearest to it in the teacher's feature space. Used by
the Synthesize page (a finished or stopped run) and the Runs page (a stored synthesis). Computations are in
`dfkd_core.analysis.image_debug`."""
from __future__ import annotations

import streamlit as st
import torch

from dfkd_core.analysis.image_debug import (bn_leave_one_out, class_probabilities, embed, feature_layer,
                                            nearest_real_images)
from dfkd_core.data import DatasetInfo, DatasetMissingError, load_split
from dfkd_core.plots import image_grid_figure
from dfkd_core.plots.inspect import bn_contribution_figure, class_probability_figure
from pages.views.common import data_root_setting, fresh_model
from pages.views.methods_doc import section_link

NEIGHBOURS = 6
SEARCH_LIMIT = 10_000   # real training images searched at most (a seeded random subset beyond; said on the page)
SHOWN = 50              # images offered for a click


@st.cache_resource(show_spinner="Embedding the real training images in the teacher's feature space…",
                   max_entries=4)
def real_features(teacher_run: str, dataset: str, root: str | None) -> dict:
    """Features of (at most SEARCH_LIMIT) real training images, once per teacher and data folder per server."""
    teacher = fresh_model(teacher_run)
    split = load_split(dataset, "train", root)
    available = len(split)
    if available > SEARCH_LIMIT:
        split = split.subset(SEARCH_LIMIT, seed=0)
    layer = feature_layer(teacher, split.normalized(slice(0, 2)))
    return {"features": embed(teacher, split, layer), "split": split, "layer": layer, "available": available}


def _clicked(event) -> int | None:
    """The image a click on the grid chose: the point index on the grid's invisible hover markers."""
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", [])
    return int(points[0]["point_index"]) if points else None


def inspect_batch(images: torch.Tensor, targets: list[int], teacher_run: str, dataset: DatasetInfo, key: str,
                  note: str = "") -> None:
    """The grid of a batch (normalized images) to click on, and the chosen image's diagnosis below it."""
    names = dataset.class_names or [str(k) for k in range(dataset.num_classes)]
    teacher = fresh_model(teacher_run).eval()   # hooks go on this tab's copy, never on the shared cached model
    shown = images[:SHOWN]
    with torch.no_grad():
        probabilities = teacher(shown).softmax(1)
    labels = [f"{names[t]} → {names[p]} {c:.2f}" for t, p, c in
              zip(targets[:SHOWN], probabilities.argmax(1).tolist(), probabilities.max(1).values.tolist())]
    st.caption(f"Click an image (first {len(shown)} of {len(images)}) or pick its number below to see the teacher's "
               f"probabilities, its share of the BN mismatch and its nearest real images "
               f"({section_link('model-inversion')}).{note}")
    event = st.plotly_chart(image_grid_figure(dataset.denormalize(shown), labels, ncols=10),
                            on_select="rerun", selection_mode="points", key=f"{key}_grid",
                            config={"displayModeBar": False}, width="content")
    clicked = _clicked(event)
    if clicked is not None:
        st.session_state[f"{key}_index"] = clicked
    index = st.number_input("image #", 0, len(shown) - 1, key=f"{key}_index")
    image, target = images[index], targets[index]
    left, middle, right = st.columns(3)
    # No toolbar on these third-width bar charts: shown on hover, it covered their titles.
    left.plotly_chart(class_probability_figure(class_probabilities(teacher, image), names, target),
                      key=f"{key}_probabilities", config={"displayModeBar": False})
    try:
        middle.plotly_chart(bn_contribution_figure(bn_leave_one_out(teacher, images, index)),
                            key=f"{key}_bn", config={"displayModeBar": False})
        middle.caption("Δ = the batch's BN distance with this image minus without it, per layer.")
    except ValueError as e:   # no BN layers, or a batch of one
        middle.info(str(e))
    with right:
        show_neighbours(teacher, image, teacher_run, dataset, names, key)


def show_neighbours(teacher, image: torch.Tensor, teacher_run: str, dataset: DatasetInfo, names: list[str],
                    key: str) -> None:
    try:
        real = real_features(teacher_run, dataset.name, data_root_setting(dataset.name))
    except DatasetMissingError as e:
        st.info(f"No real training images to compare with: {e}")
        return
    query = embed(teacher, image[None], real["layer"])[0]
    found = nearest_real_images(query, real["features"], real["split"].labels, real["layer"], NEIGHBOURS,
                                real["available"])
    split = real["split"]
    pictures = split.images[found.indices].float() / 255
    # The number first: cut to fit a cell, "bag · cos 0…" lost the number; now a long class name loses its end
    # (whole on hover).
    captions = [f"cos {s:.2f} {names[int(y)]}" for y, s in zip(found.labels, found.similarity)]
    st.plotly_chart(image_grid_figure(pictures, captions, ncols=3), key=f"{key}_neighbours",
                    config={"displayModeBar": False}, width="content")
    searched = (f"all {found.searched:,}" if found.searched == found.available
                else f"{found.searched:,} of the {found.available:,} (a seeded random subset)")
    st.caption(f"Nearest real training images in the teacher's features at `{found.layer}`: under each, its "
               f"cosine similarity to this image and its true class, among {searched} training images.")


__all__ = ["inspect_batch"]
