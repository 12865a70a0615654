"""Teacher: pick a dataset and a stored teacher, train one, or upload a checkpoint; see what the teacher is."""
import streamlit as st

from pages.views.navigation import hand_over_to_app

# Before the imports below, which load PyTorch: a deep link on a fresh server runs this file bare (navigation.py).
hand_over_to_app()

import torch  # noqa: E402

from dfkd_core.distill.estimate import planned_teacher_time  # noqa: E402
from dfkd_core.data import DatasetMissingError  # noqa: E402
from dfkd_core.data.datasets import DATA_ROOT_ENV, DEFAULT_DATA_ROOT  # noqa: E402
from dfkd_core.hooks import batchnorm_layers  # noqa: E402
from dfkd_core.models import CheckpointError, describe_model, list_models  # noqa: E402
from dfkd_core.plots import image_grid_figure, loss_curves_figure  # noqa: E402
from dfkd_core.runs import UnknownRunError  # noqa: E402
from dfkd_core.stats import accuracy_interval  # noqa: E402
from dfkd_core.synthesis.diagnosis import weak_teacher_note  # noqa: E402
from dfkd_core.training import DEFAULT_EPOCHS, DEFAULT_TEACHER, TeacherConfig, TeacherTraining, evaluate  # noqa: E402
from pages.views.common import (  # noqa: E402
    CURRENT_TEACHER, MAX_CHECKPOINT_MB, attached_job, checkpoint_picker, data_root_key, data_root_setting, eta_text,
    get_store, import_checkpoint, keep_widget_state, live, make_current_teacher, open_checkpoint, real_test_split,
    require_job_slot, start_stop_buttons, submit)
from pages.views.import_view import holds_weights, weights_form  # noqa: E402
from pages.views.labels import PARTIAL_STATUSES, as_sentence  # noqa: E402


DATASETS = {"digits": "digits 8×8 (embedded, no download)", "fashion-mnist": "Fashion-MNIST 28×28",
            "cifar10": "CIFAR-10 32×32 (folder)", "imagefolder": "ImageFolder (folder of class folders)"}


@st.cache_data(show_spinner="Evaluating on the real test set…", max_entries=32)
def test_report(run_id: str, dataset: str, root: str | None) -> dict:
    """Accuracy on the real test split and a labelled sample of two images per class."""
    model, split = open_checkpoint(run_id).model, real_test_split(dataset, root)
    result = evaluate(model, split)
    accuracy, interval = result["accuracy"], accuracy_interval(result["correct"])
    per_class = [torch.nonzero(split.labels == k).flatten()[:2] for k in range(split.info.num_classes)]
    index = torch.stack(per_class, 1).flatten() if all(len(p) == 2 for p in per_class) else torch.arange(20)
    with torch.no_grad():
        probs = model(split.normalized(index)).softmax(1)
    names = split.info.class_names or [str(k) for k in range(split.info.num_classes)]
    labels = [f"{names[t]} → {names[p]} {c:.2f}" for t, p, c in
              zip(split.labels[index].tolist(), probs.argmax(1).tolist(), probs.max(1).values.tolist())]
    return {"accuracy": accuracy, "interval": interval, "images": split.images[index].float() / 255, "labels": labels, "names": names}


def render_training(job: TeacherTraining) -> None:
    accuracy = next((h["test_accuracy"] for h in reversed(job.history) if "test_accuracy" in h), None)
    st.progress(job.step_index / max(job.total_steps, 1), text=f"**{job.status}** · step {len(job.history)}/"
                f"{job.total_steps}" + (f" · test accuracy {accuracy:.1%}" if accuracy is not None else "")
                + eta_text(job))
    if job.status == "cancelled":
        st.info("Stopped: the teacher so far is saved and listed as partial; its test accuracy is measured below.")
    if job.status == "failed":
        st.error(job.error)
    st.plotly_chart(loss_curves_figure(job.history, keys=("loss",), accuracy_keys=("batch_accuracy",
                                       "test_accuracy"), height=300), key="train_curves")


st.title("Teacher")
keep_widget_state("teacher_dataset", *(f"teacher_pick_{d}" for d in DATASETS),
                  *(data_root_key(d) for d in DATASETS))
training = attached_job("teacher")
if (training is not None and training.status in ("done", *PARTIAL_STATUSES)
        and st.session_state.get("picked_after") != training.id):   # a stopped teacher is shown like a finished one
    make_current_teacher(training.run_record.id)
    st.session_state["picked_after"] = training.id
# A teacher chosen on another page since this one was drawn: show it, on its dataset. A dataset changed here instead
# shows that dataset's teachers, and the one shown becomes the current teacher.
current = st.session_state.get(CURRENT_TEACHER)
if current is not None and current != st.session_state.get("teacher_page_current"):
    try:
        shown_on = get_store().get_record(current).dataset
    except UnknownRunError:   # deleted meanwhile
        shown_on = None
    if shown_on in DATASETS:
        st.session_state["teacher_dataset"] = shown_on
dataset = st.selectbox("Dataset", list(DATASETS), format_func=DATASETS.get, key="teacher_dataset")
if dataset != "digits":
    env = DATA_ROOT_ENV[dataset]
    st.text_input("Data folder", key=data_root_key(dataset),
                  placeholder=f"${env} or {DEFAULT_DATA_ROOT[dataset]}" if dataset in DEFAULT_DATA_ROOT
                  else f"${env}, else required",
                  help="Where this dataset's files are, for every page of this tab (as the CLI's --data-root). "
                       "Empty: the environment variable, then the default location.")
root = data_root_setting(dataset)

picked = checkpoint_picker("Stored teacher", dataset=dataset, key=f"teacher_pick_{dataset}", current_teacher=True)
st.session_state["teacher_page_current"] = st.session_state.get(CURRENT_TEACHER)  # picked; unchanged if none here
if training is not None and training.status == "done" and picked == training.run_record.id:
    st.success(f"Trained and stored: **{training.run_record.record().name}** is the teacher selected above, "
               "measured below; its training curves stay under \"Add a teacher\".")
adding = st.expander("Add a teacher: train one, or upload a checkpoint or your own network's weights",
                     expanded=picked is None or (training is not None and training.status != "done"))
train_tab, upload_tab = adding.tabs(["Train a new teacher", "Upload a checkpoint or weights"])
with train_tab:
    cols = st.columns(3)
    models = list_models(from_scratch=True)
    model = cols[0].selectbox("Architecture", models, index=models.index(DEFAULT_TEACHER[dataset]),
                              format_func=lambda m: f"{m} · {describe_model(m)}")
    epochs = cols[1].number_input("Epochs", 1, 200, DEFAULT_EPOCHS[dataset])
    augment = cols[2].selectbox("Augmentation", ["none", "crop", "crop_flip"])

    def train() -> TeacherTraining:
        require_job_slot()
        config = TeacherConfig(dataset=dataset, model=model, epochs=int(epochs), augment=augment,
                               data_root=root).resolved()
        config.validate()
        real_test_split(dataset, root)  # a bad setting or a missing dataset is the user's fix, not a failed run
        run = get_store().create("teacher", config.to_dict(), method=model, dataset=dataset,
                                 name=config.run_name())
        return submit(lambda: TeacherTraining(config, run), run, label=f"teacher {model} on {dataset}")

    start_stop_buttons(training, train, label="Train")
    if training is None or not training.running:
        planned = TeacherConfig(dataset=dataset, model=model, epochs=int(epochs), augment=augment).resolved()
        st.caption(f"**Time**: {planned_teacher_time(get_store(), planned)}.")
    live(training, render_training)
with upload_tab:
    def added(record, notes=()) -> None:
        # Show the new teacher at once, on its own dataset.
        st.session_state["teacher_dataset"] = record.dataset
        make_current_teacher(record.id)
        doubtful = any("import it again" in n or "near chance" in n for n in notes)   # added, but likely wrong
        st.session_state["upload_message"] = ("warning" if doubtful else "success",
                                              f"Added {record.name} to the run store as {record.id}."
                                              + "".join(f"\n- {note}" for note in notes))

    def add_upload() -> None:
        st.session_state.pop("upload_is_weights", None)
        upload = st.session_state.get("teacher_upload")
        if upload is None:
            return
        try:
            added(import_checkpoint(upload.getvalue(), upload.name))
        except CheckpointError as e:
            if holds_weights(upload.getvalue()):   # weights without their architecture: ask for it below
                st.session_state["upload_is_weights"] = True
            else:
                st.session_state["upload_message"] = ("error", f"Not usable as a teacher: {e}")

    st.file_uploader(f"A dfkd checkpoint (.pt, up to {MAX_CHECKPOINT_MB} MB), saved by `dfkd train-teacher` or "
                     "`dfkd_core.models.save_checkpoint`, or **your own network's** `torch.save(model.state_dict())` "
                     "(then say what it is)", type=["pt", "pth"], key="teacher_upload", on_change=add_upload)
    if st.session_state.get("teacher_upload") is not None and st.session_state.get("upload_is_weights"):
        weights_form(dataset, root, on_added=added)
    if "upload_message" in st.session_state:
        kind, message = st.session_state.pop("upload_message")
        getattr(st, kind)(message)

if picked is None:
    st.info(f"No {dataset} teacher in the run store yet: train or upload one above.")
    st.stop()
checkpoint = open_checkpoint(picked)
bn_layers = batchnorm_layers(checkpoint.model)
try:
    report = test_report(picked, dataset, root)
except DatasetMissingError as e:
    report = None
    st.warning(f"The real {dataset} test set is not available, so accuracy and examples cannot be shown: {e}")
cols = st.columns(4)
cols[0].metric("test accuracy (real data)", f"{report['accuracy']:.2%}" if report else "–",
               help="95% bootstrap interval over the test images in the caption below" if report else None)
cols[1].metric("parameters", f"{sum(p.numel() for p in checkpoint.model.parameters()):,}")
cols[2].metric("BatchNorm layers", len(bn_layers))
cols[3].metric("input", f"{checkpoint.dataset.in_channels}×{checkpoint.dataset.image_size}²")
if report and (note := weak_teacher_note(report["accuracy"], checkpoint.dataset.num_classes)):
    st.warning(as_sentence(note))
if report:
    ci = report["interval"]
    st.caption(f"Test accuracy {ci.format('.2%')}: the 95% bootstrap interval over the {ci.units:,} real test "
               "images: intervals made this way contain the teacher's true accuracy (on endless data of this "
               "kind) about 95 times in 100.")
record = get_store().get_record(picked)
summary = record.summary
if report and record.status in PARTIAL_STATUSES and "test_accuracy" not in summary:
    # A stopped teacher is saved unmeasured (a Stop must not wait for the test set); measured here, it is kept, so
    # pickers and `dfkd runs` show its accuracy too.
    summary = {**summary, "test_accuracy": report["accuracy"], "test_accuracy_ci": report["interval"].to_dict()}
    get_store().get(picked).set_status(record.status, summary=summary, error=record.error)
if checkpoint.name == "imported":
    origin = checkpoint.model_cfg.get("origin", checkpoint.model_cfg["arch"])
    st.markdown(f"**{origin}**, imported from `{summary.get('imported', '?')}`: your network with your weights, "
                "behind the normalization given at its import" + (
                    " (your code traced into standard layers: stored and loaded without it)"
                    if "graph" in checkpoint.model_cfg else ""))
else:
    st.markdown(f"**{checkpoint.name}**: {describe_model(checkpoint.name)}")
notes = [summary["data_note"]] if summary.get("data_note") else []
notes += summary.get("import_notes", [])
if notes:
    st.info("\n".join(f"- {note}" for note in notes))
if not bn_layers:
    st.warning("No BatchNorm layers: DeepInversion's feature loss has no statistics to match; only DeepDream "
               "(image priors) can invert this teacher.")
left, right = st.columns([1.3, 1])
with left:
    if report:
        st.markdown("**Real test images**: column = true class; under each the teacher's prediction")
        st.plotly_chart(image_grid_figure(report["images"], report["labels"], ncols=len(report["names"]),
                                          column_titles=report["names"]), config={"displayModeBar": False},
                        width="content")
with right:
    st.markdown("**BN layers** (what DeepInversion matches)")
    st.dataframe([{"layer": n, "channels": m.num_features, "mean of running μ": float(m.running_mean.mean()),
                   "mean of running σ²": float(m.running_var.mean())} for n, m in bn_layers], hide_index=True)
    with st.expander("Architecture"):
        graph = checkpoint.model_cfg.get("graph")
        st.json({**checkpoint.model_cfg, "graph": f"{len(graph['layers'])} layers, {len(graph['nodes'])} steps"}
                if graph else checkpoint.model_cfg)
        st.code(str(checkpoint.model), language=None)


st.page_link("pages/synthesize.py", label="Synthesize from this teacher", icon=":material/auto_awesome:",
             query_params={"teacher": picked})
