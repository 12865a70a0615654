"""The Teacher page's "bring your own network": an uploaded state_dict, the architecture and normalization it was
trained with, and `dfkd_core.teacher_import.import_teacher` to check, measure and store it."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import streamlit as st

from dfkd_core.data import dataset_info
from dfkd_core.models import CheckpointError
from dfkd_core.models.imported import torchvision_architectures
from dfkd_core.models.registry import list_models
from dfkd_core.runs import RunRecord
from dfkd_core.teacher_import import NORMALIZATIONS, ImportConfig, import_teacher, read_weights
from pages.views.common import get_store, upload_name

DEFAULT_ARCH = "torchvision:resnet18"


def holds_weights(data: bytes) -> bool:
    """Whether uploaded bytes are weights this page can import (a state_dict, or a training checkpoint holding one)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        path.write_bytes(data)
        try:
            read_weights(path)
        except CheckpointError:
            return False
    return True


def import_uploaded_weights(data: bytes, filename: str, config: ImportConfig) -> tuple[RunRecord, list[str]]:
    """`import_teacher` on uploaded bytes; the run records the file's name, not the temporary path."""
    filename = upload_name(filename)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        path.write_bytes(data)
        try:
            imported = import_teacher(config.replace(weights=str(path)), get_store(), source_name=filename)
        except CheckpointError as e:
            raise CheckpointError(str(e).replace(str(path), filename).replace("weights.pt", filename)) from None
    return imported.run.record(), imported.notes


def _normalization_label(dataset: str):
    info = dataset_info(dataset) if dataset != "imagefolder" else None
    own = (f"the tool's for {dataset} (mean {', '.join(f'{m:g}' for m in info.mean)}, std "
           f"{', '.join(f'{s:g}' for s in info.std)})") if info else "the tool's for this dataset"
    labels = {"dataset": own, "none": "none: ToTensor() only, pixels in [0, 1]",
              "half": "Normalize(0.5, 0.5): pixels in [-1, 1]", "imagenet": "ImageNet's mean and std",
              "custom": "another mean and std"}
    return labels.get


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"mean and std are numbers separated by commas, like 0.5, 0.5, 0.5; got '{text}'") from None


def _import_clicked(dataset: str, root: str | None, on_added: Callable[..., None]) -> None:
    """Import the uploaded file as the form describes it (a callback: it may set the page's widgets' state)."""
    upload, state = st.session_state.get("teacher_upload"), st.session_state
    try:
        mean = _numbers(state.get("import_mean", "")) if state["import_normalization"] == "custom" else []
        std = _numbers(state.get("import_std", "")) if state["import_normalization"] == "custom" else []
        config = ImportConfig(weights="", arch=state["import_arch"], dataset=dataset, data_root=root,
                              normalization=state["import_normalization"], input_mean=mean, input_std=std)
        on_added(*import_uploaded_weights(upload.getvalue(), upload.name, config))
        state.pop("upload_is_weights", None)
    except (CheckpointError, ValueError) as e:
        state["upload_message"] = ("error", f"Not usable as a teacher: {e}")


def weights_form(dataset: str, root: str | None, on_added: Callable[..., None]) -> None:
    """The architecture and normalization of an uploaded state_dict, and the button that imports it."""
    st.markdown("**What is this network?** A state_dict holds weights, not the architecture they belong to.")
    architectures = torchvision_architectures() + list_models(from_scratch=True)
    cols = st.columns(2)
    cols[0].selectbox("Architecture it was trained as", architectures, index=architectures.index(DEFAULT_ARCH),
                      key="import_arch", help="torchvision:<name> is torchvision's stock network (its first "
                      "convolution takes the dataset's channels); the others are this tool's registered models.")
    normalization = cols[1].selectbox("Images were normalized with", [*NORMALIZATIONS, "custom"],
                                      format_func=_normalization_label(dataset), key="import_normalization",
                                      help="As its training's transforms did. Import measures the others too and "
                                           "says if one scores higher.")
    if normalization == "custom":
        cols = st.columns(2)
        cols[0].text_input("Mean per channel", "0.4914, 0.4822, 0.4465", key="import_mean")
        cols[1].text_input("Std per channel", "0.2023, 0.1994, 0.2010", key="import_std")
    st.caption(f"Trained on **{dataset}** (the Dataset above sets its classes, channels and image size). Import "
               "checks the network and measures it on the real test images where they are here, with each common "
               "normalization, and says if another fits better (seconds; a minute for a large network).")
    st.button("Import as a teacher", type="primary", key="import_weights", on_click=_import_clicked,
              args=(dataset, root, on_added))
