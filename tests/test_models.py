import pickle

import pytest
import torch

from dfkd_core.data import dataset_info
from dfkd_core.models import CheckpointError, create_model, list_models, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_on_its_kind_of_input(name):
    size, channels = (32, 3) if ("resnet" in name or "mobilenet" in name) else ((8, 1) if "3_" in name else (28, 1))
    derived = {"pruned": {"base": "bncnn6_w16", "channels": {"features.0": 4}},   # a model made from another one
               "imported": {"arch": "bncnn6_w16", "dataset_mean": [0.5], "dataset_std": [0.5]}}
    model = create_model(name, num_classes=7, in_channels=channels, image_size=size, **derived.get(name, {})).eval()
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="bncnn3_w32"):
        create_model("nope")


def test_a_model_made_from_a_trained_one_is_never_offered_or_accepted_to_train_from_scratch():
    """`pruned` is rebuilt from a trained model's settings: offered on the Teacher page, it failed its run with
    "unknown model ''" at step 0."""
    from dfkd_core.models import check_from_scratch
    from dfkd_core.training import TeacherConfig
    assert "pruned" in list_models() and "pruned" not in list_models(from_scratch=True)
    assert set(list_models()) - set(list_models(from_scratch=True)) == {"pruned", "imported"}
    with pytest.raises(ValueError, match="'pruned' is made by `dfkd prune` from a trained model, not trained from "
                                         "scratch; choose one of .*bncnn3_w32"):
        TeacherConfig(dataset="digits", model="pruned").validate()
    with pytest.raises(ValueError, match="^unknown student model 'nope'; registered models: "):
        check_from_scratch("nope", "student model")
    check_from_scratch("bncnn3_w16")


def test_lenet_refuses_8x8_digits_clearly():
    with pytest.raises(ValueError, match="at least 16x16"):
        create_model("lenet5", 10, 1, 8)


def test_checkpoint_roundtrip_rebuilds_architecture(tmp_path):
    model = create_model("bncnn3_w16", 10, 1, 8).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, dataset_info("digits"), {"test_accuracy": 0.5})
    ck = load_checkpoint(path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(ck.model(x), model(x)) and ck.name == "bncnn3_w16"
    assert ck.dataset.name == "digits" and ck.metrics["test_accuracy"] == 0.5


def test_bare_state_dict_is_explained(tmp_path):
    torch.save(create_model("bncnn3_w8").state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="bare state_dict"):
        load_checkpoint(tmp_path / "sd.pt")


def test_corrupt_file_is_explained(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable|refused"):
        load_checkpoint(tmp_path / "bad.pt")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_payload_is_refused(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "dfkd-checkpoint/1", "x": Payload()}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save({"obj": Payload()}, tmp_path / "evil2.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "evil2.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.parametrize("payload, says", [
    (lambda: create_model("bncnn3_w8"), "needs the Python object dfkd_core.models.bn_cnn.ConvNet"),
    (lambda: {"obj": Payload()}, "needs the Python object print"),
])
def test_a_refused_pickle_gets_our_sentence_never_torchs_weights_only_advice(tmp_path, payload, says):
    torch.save(payload(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "model.pt")
    message = str(refused.value)
    assert says in message and "dfkd import-teacher" in message and message.endswith(".")
    assert "weights_only" not in message and "\x1b" not in message and "\n" not in message


def test_a_damaged_file_gets_torchs_first_sentence_only(tmp_path):
    torch.save({"w": torch.zeros(1000)}, tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "cut.pt")
    message = str(refused.value)
    assert "corrupt, truncated or not a PyTorch file (torch: PytorchStreamReader failed reading zip archive" in message
    assert "internal miniz error" not in message and "weights_only" not in message


def test_a_pruned_checkpoint_loads_without_importing_the_pruning_code(tmp_path):
    """The registered `pruned` model lives with the other models, so every page and command can load a pruned
    checkpoint (the Teacher and Distill pages never import dfkd_core.applications)."""
    import subprocess
    import sys

    from dfkd_core.data import dataset_info
    model = create_model("pruned", 10, 1, 8, base="bncnn3_w16", channels={"features.0": 8})
    save_checkpoint(tmp_path / "pruned.pt", model, dataset_info("digits"))
    code = ("import sys; from dfkd_core.models import load_checkpoint; "
            f"m = load_checkpoint({str(tmp_path / 'pruned.pt')!r}).model; "
            "assert 'dfkd_core.applications' not in sys.modules; print(sum(p.numel() for p in m.parameters()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == sum(p.numel() for p in model.parameters())


def test_the_library_imports_torchvision_only_for_a_model_or_grid_that_needs_it():
    """Importing torchvision loads torch._dynamo through torchvision.ops: seconds on every CLI call, app start and
    worker process. Only the tv_* models and image grids need it, and they still work."""
    import subprocess
    import sys
    code = ("import sys; import dfkd_core.cli, dfkd_core.distill, dfkd_core.synthesis, dfkd_core.analysis; "
            "assert 'torchvision' not in sys.modules, 'torchvision imported eagerly'; "
            "from dfkd_core.models import create_model; from dfkd_core.synthesis.images import grid_image; "
            "import torch; m = create_model('tv_resnet18', 10, 1, 16); "
            "print(m(torch.zeros(2, 1, 16, 16)).shape[1], grid_image(torch.zeros(4, 1, 8, 8)).shape[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["10", "3"]


def _edited_checkpoint(tmp_path, **changes) -> str:
    """A dfkd checkpoint whose entries were changed afterwards (by hand, another tool or another version)."""
    path = save_checkpoint(tmp_path / "m.pt", create_model("bncnn3_w32", 10, 1, 8), dataset_info("digits"))
    payload = torch.load(path, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value(payload[key]) if callable(value) else value
    torch.save(payload, tmp_path / "edited.pt")
    return str(tmp_path / "edited.pt")


@pytest.mark.parametrize("changes, says", [
    ({"model_cfg": lambda cfg: {**cfg, "name": "bncnn3_w16"}}, "weights do not fit 'bncnn3_w16'"),
    ({"model_cfg": lambda cfg: {**cfg, "num_classes": 5}}, "weights do not fit 'bncnn3_w32'"),
    ({"model_cfg": lambda cfg: {**cfg, "name": "lenet5"}}, "settings that model 'lenet5' does not take"),
    ({"dataset": "digits"}, "its 'dataset' entry"),
    ({"dataset": lambda d: {"name": d["name"]}}, "its 'dataset' entry"),
    ({"state_dict": None}, "its 'state_dict' entry"),
    ({"model_cfg": None}, "its 'model_cfg' entry"),
])
def test_a_checkpoint_whose_entries_disagree_gets_one_sentence_not_a_traceback(tmp_path, changes, says):
    """Issue 14 item 9: a foreign or edited checkpoint (weights of another width, a dataset entry in another form)
    raised torch's multi-line RuntimeError or a TypeError from deep inside instead of our sentence."""
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(_edited_checkpoint(tmp_path, **changes))
    message = str(refused.value)
    assert says in message and "\n" not in message and len(message) < 400, message
