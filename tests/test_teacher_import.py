"""Bring your own teacher: a network trained by other code, its weights in a state_dict, imported as a teacher run
(`dfkd import-teacher`, the Teacher page's upload)."""
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dfkd_core.data import dataset_info, load_split
from dfkd_core.distill.config import default_student_of
from dfkd_core.models import CheckpointError, create_model, load_checkpoint, save_checkpoint
from dfkd_core.models.imported import ImportedClassifier, build_architecture
from dfkd_core.teacher_import import ImportConfig, import_teacher, read_weights
from dfkd_core.teacher_import.weights import fit_weights


@pytest.fixture(scope="module")
def user_network():
    """A digits classifier trained the way a user's own script does it: its own loop, images as ToTensor() gives
    them (pixels in [0, 1], no normalization); (state_dict, the accuracy the user's script measured)."""
    torch.manual_seed(0)
    train, test = load_split("digits", "train"), load_split("digits", "test")
    net = create_model("bncnn3_w16", 10, 1, 8)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = train.images.float() / 255, train.labels
    for step in range(150):
        batch = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(net(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    return net.state_dict(), accuracy


def save(tmp_path, payload, name="weights.pt"):
    path = tmp_path / name
    torch.save(payload, path)
    return str(path)


def test_renormalization_maps_the_tools_inputs_to_the_networks():
    # Dataset normalization (0.3, 0.4), network trained on raw pixels (0, 1): x_net = x·0.4 + 0.3.
    wrapper = ImportedClassifier(nn.Identity(), [0.3], [0.4], [0.0], [1.0])
    x = torch.tensor([[[[-0.75, 0.0, 1.75]]]])
    assert torch.allclose(wrapper(x), torch.tensor([[[[0.0, 0.3, 1.0]]]]))
    assert wrapper.renormalizes
    same = ImportedClassifier(nn.Identity(), [0.3], [0.4], [0.3], [0.4])
    assert not same.renormalizes and torch.equal(same(x), x)


def test_user_network_keeps_the_accuracy_its_own_script_measured(user_network, tmp_path, store):
    state_dict, accuracy = user_network
    assert accuracy > 0.8   # it learned: a near-chance network would not tell normalizations apart
    path = save(tmp_path, {"epoch": 5, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}})
    imported = import_teacher(ImportConfig(weights=path, arch="bncnn3_w16", dataset="digits", normalization="none"),
                              store)
    assert abs(imported.summary["test_accuracy"] - accuracy) <= 1 / 360   # one image may flip on rounding
    ci = imported.summary["test_accuracy_ci"]
    assert ci["low"] <= imported.summary["test_accuracy"] <= ci["high"] and ci["units"] == 360
    assert any("'state_dict' entry" in n and "'epoch'" in n for n in imported.notes)
    assert any("'module.' prefix" in n for n in imported.notes)
    # Stored: a teacher run whose checkpoint reloads to the same predictions, with the file's digest.
    record = imported.run.record()
    assert record.kind == "teacher" and record.status == "done" and record.dataset == "digits"
    assert "imported weights.pt" in record.name
    config = json.loads((record.dir / "config.json").read_text())
    assert len(config["sha256"]) == 64 and config["normalization"] == "none"
    reloaded = load_checkpoint(record.dir / "model.pt")
    x = load_split("digits", "test").normalized(slice(0, 50))
    assert torch.allclose(reloaded.model(x), imported.checkpoint.model(x), atol=1e-5)
    assert default_student_of(reloaded) == "bncnn3_w8"   # the half-width student of its architecture


def test_wrong_normalization_reads_near_chance_and_says_why(user_network, tmp_path):
    state_dict, _ = user_network
    path = save(tmp_path, state_dict)
    right = import_teacher(ImportConfig(weights=path, arch="bncnn3_w16", dataset="digits", normalization="none"))
    assert "better_normalization" not in right.summary
    assert not any("normalization" in n and "likely" in n for n in right.notes)
    # Read as if trained on the tool's normalization: still well above chance, so only the paired probe finds it.
    wrong = import_teacher(ImportConfig(weights=path, arch="bncnn3_w16", dataset="digits"))
    assert wrong.summary["test_accuracy"] < right.summary["test_accuracy"] - 0.1
    assert wrong.summary["better_normalization"] == "none"
    assert any(f"with --normalization none the same network scores {right.summary['test_accuracy']:.1%}" in n
               and "paired difference +" in n for n in wrong.notes)
    # Far off: near chance, said as such.
    far = import_teacher(ImportConfig(weights=path, arch="bncnn3_w16", dataset="digits", normalization="custom",
                                      input_mean=[-2.0], input_std=[0.2]))
    assert far.summary["test_accuracy_ci"]["high"] < 0.2
    assert any("near chance (10%)" in n for n in far.notes)


def test_imagenet_normalization_needs_three_channels(tmp_path):
    path = save(tmp_path, create_model("bncnn3_w16", 10, 1, 8).state_dict())
    with pytest.raises(ValueError, match="3 values per statistic and the digits images have 1 channel"):
        import_teacher(ImportConfig(weights=path, arch="bncnn3_w16", dataset="digits", normalization="imagenet"))


def test_stock_torchvision_network_with_grayscale_stem_round_trips(tmp_path, store):
    torch.manual_seed(0)
    import torchvision
    net = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    net.conv1[0] = nn.Conv2d(1, 24, 3, 2, 1, bias=False)   # how users make it read grayscale
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 1, 28, 28))   # running statistics move off their initial values
    path = save(tmp_path, {"_orig_mod." + k: v for k, v in net.state_dict().items()})   # saved after torch.compile
    imported = import_teacher(ImportConfig(weights=path, arch="torchvision:shufflenet_v2_x0_5",
                                           dataset="fashion-mnist", evaluate=False), store)
    assert any("'_orig_mod.' prefix" in n for n in imported.notes)
    assert any("not evaluated" in n for n in imported.notes)
    reloaded = load_checkpoint(imported.run.record().dir / "model.pt")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(reloaded.model(x), net.eval()(x), atol=1e-5)   # the tool's normalization: no map
    assert default_student_of(reloaded) == "bncnn6_w16"   # the dataset's default teacher's half-width student


def test_read_weights_finds_them_or_says_what_the_file_is(tmp_path, digits_teacher):
    weights = {"w": torch.ones(2)}
    found, notes = read_weights(save(tmp_path, weights))
    assert found.keys() == weights.keys() and torch.equal(found["w"], weights["w"]) and notes == []
    found, notes = read_weights(save(tmp_path, {"model": weights, "optimizer": {"state": {}, "param_groups": []}}))
    assert found.keys() == weights.keys() and "'model' entry" in notes[0]
    with pytest.raises(CheckpointError, match="already a dfkd checkpoint"):
        read_weights(digits_teacher.path)
    with pytest.raises(CheckpointError, match="several entries hold weights"):
        read_weights(save(tmp_path, {"a": weights, "b": weights}))
    with pytest.raises(CheckpointError, match="none of its entries is a mapping of names to tensors"):
        read_weights(save(tmp_path, {"epoch": 3, "lr": 0.1}))
    with pytest.raises(CheckpointError, match="holds a list"):
        read_weights(save(tmp_path, [torch.ones(1)]))


def test_weights_that_do_not_fit_say_why():
    import torchvision
    imagenet = torchvision.models.resnet18(num_classes=1000).state_dict()
    net = build_architecture("torchvision:resnet18", 10, 1, 32)
    with pytest.raises(CheckpointError) as error:
        fit_weights(net, imagenet, "torchvision:resnet18", 10, "fashion-mnist")
    message = str(error.value)
    assert "3 tensor(s) of another shape" in message and "last layer has 1000 outputs" in message
    assert "reads 3 channel(s) in the file and 1" in message
    stock = torchvision.models.resnet18(num_classes=10).state_dict()
    with pytest.raises(CheckpointError, match="use --arch torchvision:resnet18"):
        fit_weights(build_architecture("tv_resnet18", 10, 3, 32), stock, "tv_resnet18", 10, "cifar10")
    with pytest.raises(CheckpointError, match="another architecture"):
        fit_weights(build_architecture("bncnn3_w16", 10, 1, 8), stock, "bncnn3_w16", 10, "digits")
    # Files from old PyTorch versions lack BatchNorm's step counter: accepted.
    small = create_model("bncnn3_w16", 10, 1, 8).state_dict()
    assert fit_weights(build_architecture("bncnn3_w16", 10, 1, 8),
                       {k: v for k, v in small.items() if "num_batches_tracked" not in k}, "bncnn3_w16", 10,
                       "digits") == []


def test_a_network_that_cannot_teach_is_refused_or_flagged(tmp_path, store):
    broken = create_model("bncnn3_w16", 10, 1, 8).state_dict()
    broken[next(k for k in broken if k.endswith("weight"))][0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        import_teacher(ImportConfig(weights=save(tmp_path, broken), arch="bncnn3_w16", dataset="digits"), store)
    assert store.list() == []   # nothing stored for a refused file
    fresh = import_teacher(ImportConfig(weights=save(tmp_path, create_model("bncnn3_w16", 10, 1, 8).state_dict()),
                                        arch="bncnn3_w16", dataset="digits", evaluate=False))
    assert any("3 of 3 BatchNorm layers hold their initial running statistics" in n for n in fresh.notes)
    plain = import_teacher(ImportConfig(weights=save(tmp_path, create_model("plaincnn3_w32", 10, 1, 8).state_dict()),
                                        arch="plaincnn3_w32", dataset="digits", evaluate=False))
    assert any("no BatchNorm layers" in n for n in plain.notes)


def test_settings_are_checked_before_the_file_is_read(tmp_path):
    with pytest.raises(ValueError, match="torchvision has no classification model 'resnet19'"):
        import_teacher(ImportConfig(weights="missing.pt", arch="torchvision:resnet19", dataset="digits"))
    with pytest.raises(ValueError, match="unknown architecture 'pruned'"):
        import_teacher(ImportConfig(weights="missing.pt", arch="pruned", dataset="digits"))
    with pytest.raises(ValueError, match="input_std must be > 0"):
        import_teacher(ImportConfig(weights="missing.pt", arch="bncnn3_w16", dataset="digits",
                                    normalization="custom", input_mean=[0.5], input_std=[0.0]))
    with pytest.raises(CheckpointError, match="weights file not found: missing.pt"):
        import_teacher(ImportConfig(weights="missing.pt", arch="bncnn3_w16", dataset="digits"))


def test_cli_imports_and_distills_from_the_imported_teacher(user_network, tmp_path, capsys):
    from dfkd_core.cli import main
    state_dict, accuracy = user_network
    path = save(tmp_path, state_dict)
    home = str(tmp_path / "home")
    assert main(["--home", home, "import-teacher", "--weights", path, "--arch", "bncnn3_w16", "--dataset", "digits",
                 "--input-mean", "0", "--input-std", "1"]) == 0
    out, err = capsys.readouterr()
    run_id = out.split()[1]
    assert json.loads(out[out.index("{"):])["test_accuracy"] == pytest.approx(accuracy, abs=1 / 360)
    assert "note: inputs are mapped to the network's normalization (mean [0.0], std [1.0])" in err
    with pytest.raises(SystemExit, match="cannot import .*does not fit|cannot import .*do not fit"):
        main(["--home", home, "import-teacher", "--weights", path, "--arch", "bncnn3_w32", "--dataset", "digits"])
    assert main(["--home", home, "--quiet", "distill", "--teacher", run_id, "--method", "deepinversion",
                 "--images", "32", "--steps", "10", "--inv-iterations", "3", "--inv-batch-size", "32"]) == 0
    out, _ = capsys.readouterr()
    assert "bncnn3_w8" in out   # the imported architecture's half-width student


def test_saved_imported_checkpoint_rebuilds_without_the_users_file(tmp_path):
    info = dataset_info("digits")
    model = create_model("imported", 10, 1, 8, arch="bncnn3_w16", dataset_mean=info.mean, dataset_std=info.std,
                         input_mean=[0.0], input_std=[1.0])
    path = save_checkpoint(tmp_path / "model.pt", model, info)
    reloaded = load_checkpoint(path)
    assert reloaded.model.renormalizes and reloaded.model_cfg["arch"] == "bncnn3_w16"


def test_pruned_imported_teacher_rebuilds_from_its_checkpoint(user_network, tmp_path):
    from dfkd_core.applications.common import trainable_copy
    from dfkd_core.applications.pruning import bn_scale_importance, prune_to_flops
    from dfkd_core.applications.surgery import channel_groups, registered_copy
    state_dict, _ = user_network
    teacher = import_teacher(ImportConfig(weights=save(tmp_path, state_dict), arch="bncnn3_w16", dataset="digits",
                                          normalization="none", evaluate=False)).checkpoint
    example = torch.zeros(2, 1, 8, 8)
    importance = {g.name: bn_scale_importance(g) for g in channel_groups(trainable_copy(teacher.model), example, 10)}
    pruned, _, _ = prune_to_flops(teacher.model, example, 10, importance, 0.5)
    path = save_checkpoint(tmp_path / "pruned.pt", registered_copy(pruned, teacher.model_cfg), teacher.dataset)
    loaded = load_checkpoint(path)
    assert loaded.model_cfg["base"] == "imported" and loaded.model_cfg["base_kwargs"]["arch"] == "bncnn3_w16"
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(loaded.model(x), pruned.eval()(x), atol=1e-5)   # the normalization map kept


def test_teacher_page_imports_an_uploaded_state_dict(user_network, tmp_path, monkeypatch):
    import io
    from app_pages import open_app
    from dfkd_core.runs import RunStore
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "home"))
    state_dict, accuracy = user_network
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict, "epoch": 4}, buffer)
    at = open_app("pages/teacher.py")
    at.file_uploader(key="teacher_upload").upload("digits_net.pth", buffer.getvalue()).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="import_arch").value == "torchvision:resnet18"
    at.selectbox(key="import_arch").set_value("bncnn3_w16")
    at.selectbox(key="import_normalization").set_value("none")
    at.button(key="import_weights").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    record = next(r for r in RunStore(tmp_path / "home").list(kind="teacher") if "imported" in r.name)
    assert at.selectbox(key="teacher_pick_digits").value == record.id   # the imported teacher is the one shown
    shown = {m.label: m.value for m in at.metric}["test accuracy (real data)"]
    assert abs(float(shown.rstrip("%")) / 100 - accuracy) <= 1 / 360 + 1e-4
    assert any("imported from `digits_net.pth`" in m.value for m in at.markdown)
    assert any("'state_dict' entry" in i.value for i in at.info)
    # A file that holds no weights at all is refused as before, with no form.
    at.file_uploader(key="teacher_upload").clear().upload("notes.pt", b"hello").run()
    assert any("Not usable as a teacher" in e.value for e in at.error)
    assert not [s for s in at.selectbox if s.key == "import_arch"]


@pytest.mark.parametrize("page", ["synthesize", "distill", "representations", "attention", "boundaries",
                                  "applications", "runs", "teacher"])
def test_every_page_opens_on_an_imported_torchvision_teacher(page, tmp_path, monkeypatch):
    from app_pages import open_app
    from dfkd_core.runs import RunStore
    monkeypatch.setenv("DFKD_HOME", str(tmp_path / "home"))
    torch.manual_seed(0)
    import torchvision
    net = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    net.conv1[0] = nn.Conv2d(1, 24, 3, 2, 1, bias=False)
    imported = import_teacher(ImportConfig(weights=save(tmp_path, net.state_dict()), dataset="digits",
                                           arch="torchvision:shufflenet_v2_x0_5", normalization="none"),
                              RunStore(tmp_path / "home"))
    at = open_app(f"pages/{page}.py", teacher=imported.run.id)   # fails on any exception the page shows
    assert not at.error, [e.value for e in at.error]


USER_CODE = '''
import torch.nn as nn
import torch.nn.functional as F
from helpers import WIDTH   # a sibling module, imported as in the user's own scripts


class SmallNet(nn.Module):
    def __init__(self, classes=10, width=WIDTH):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 16, classes)
        self.unused_aux = nn.Linear(4, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.head(x.view(x.size(0), -1))


class Branchy(SmallNet):
    def forward(self, x):
        if x.mean() > 0:
            return super().forward(x)
        return -super().forward(x)
'''


def test_users_own_class_is_stored_as_a_traced_graph_without_its_code(tmp_path, store):
    import subprocess
    import sys
    code = tmp_path / "code"
    code.mkdir()
    (code / "my_models.py").write_text(USER_CODE)
    (code / "helpers.py").write_text("WIDTH = 8\n")
    sys.path.insert(0, str(code))
    try:
        from my_models import SmallNet
    finally:
        sys.path.remove(str(code))
    torch.manual_seed(0)
    train = load_split("digits", "train")
    net = SmallNet(width=12)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(100):
        batch = torch.randint(0, len(train), (64,))
        loss = F.cross_entropy(net(train.normalized(batch).clone(memory_format=torch.contiguous_format)), train.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = save(tmp_path, net.state_dict())
    arch = f"code:{code / 'my_models.py'}:SmallNet"
    imported = import_teacher(ImportConfig(weights=weights, arch=arch, arch_kwargs={"width": 12}, dataset="digits"),
                              store)
    assert imported.summary["test_accuracy"] > 0.7
    assert any("without the code" in n and "unused_aux.weight" in n
               for n in imported.notes)
    # Its activations are functions (F.relu): the analyses take its BatchNorm outputs as its layers.
    from dfkd_core.analysis.features import default_attention_layer, layer_names
    assert layer_names(imported.checkpoint.model) == ["net.bn", "net.head"]
    assert default_attention_layer(imported.checkpoint.model) == "net.bn"
    model_path = imported.run.record().dir / "model.pt"
    # Another process, without the user's files: the teacher loads and predicts as their network does.
    x = load_split("digits", "test").normalized(slice(0, 20)).clone(memory_format=torch.contiguous_format)
    torch.save(x, tmp_path / "x.pt")
    net.eval()
    with torch.no_grad():
        expected = net(x)
    torch.save(expected, tmp_path / "expected.pt")
    import shutil
    shutil.rmtree(code)
    check = (f"import torch; from dfkd_core.models import load_checkpoint; t = load_checkpoint({str(model_path)!r}); "
             f"x = torch.load({str(tmp_path / 'x.pt')!r}); e = torch.load({str(tmp_path / 'expected.pt')!r}); "
             "assert t.model_cfg['origin'].endswith(':SmallNet'); "
             "assert torch.allclose(t.model(x), e, atol=1e-5), 'other outputs'; print('same')")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout.strip() == "same", done.stderr[-2000:]


def test_user_code_that_cannot_be_traced_or_built_says_why(tmp_path):
    code = tmp_path / "my_models.py"
    code.write_text(USER_CODE.replace("from helpers import WIDTH", "WIDTH = 8"))
    weights = save(tmp_path, {"conv.weight": torch.zeros(8, 1, 3, 3)})
    from dfkd_core.models.graph import GraphError
    with pytest.raises(CheckpointError, match="do not fit"):
        import_teacher(ImportConfig(weights=weights, arch=f"code:{code}:SmallNet", dataset="digits"))
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        from my_models import Branchy
    finally:
        sys.path.remove(str(tmp_path))
    weights = save(tmp_path, Branchy().state_dict())
    with pytest.raises(GraphError, match="cannot trace the network's forward .*depend on tensor values"):
        import_teacher(ImportConfig(weights=weights, arch=f"code:{code}:Branchy", dataset="digits"))
    with pytest.raises(ValueError, match="defines no class or function 'Nope'"):
        import_teacher(ImportConfig(weights=weights, arch=f"code:{code}:Nope", dataset="digits"))
    with pytest.raises(ValueError, match="got an unexpected keyword argument 'depth'"):
        import_teacher(ImportConfig(weights=weights, arch=f"code:{code}:SmallNet", arch_kwargs={"depth": 3},
                                    dataset="digits"))
    with pytest.raises(ValueError, match="no file"):
        import_teacher(ImportConfig(weights=weights, arch="code:nowhere.py:Net", dataset="digits"))


def test_a_recorded_graph_builds_only_allowlisted_steps():
    from dfkd_core.models.graph import GraphError, build_graph, describe_graph
    spec = describe_graph(create_model("bncnn3_w16", 10, 1, 8))
    evil = json.loads(json.dumps(spec))
    evil["nodes"][1] = {**evil["nodes"][1], "op": "call_function", "target": "builtins.eval"}
    with pytest.raises(GraphError, match="builtins.eval, which this format does not build"):
        build_graph(evil)
    evil = json.loads(json.dumps(spec))
    evil["layers"][next(iter(evil["layers"]))]["type"] = "Sequential"
    with pytest.raises(GraphError, match="is a Sequential, which this format does not build"):
        build_graph(evil)
    evil = json.loads(json.dumps(spec))
    evil["nodes"][1] = {**evil["nodes"][1], "op": "call_method", "target": "__reduce_ex__"}
    with pytest.raises(GraphError, match="tensor method .__reduce_ex__"):
        build_graph(evil)
    # torch.fx writes input names, paths and keyword names into the Python it generates: code there is refused.
    injected = "x=__import__('os').system('touch /tmp/pwned')"
    evil = json.loads(json.dumps(spec))
    evil["nodes"][0] = {**evil["nodes"][0], "target": injected}
    with pytest.raises(GraphError, match="input name .* is not a plain name"):
        build_graph(evil)
    evil = json.loads(json.dumps(spec))
    call = next(i for i, n in enumerate(evil["nodes"]) if n["op"] == "call_module")
    evil["nodes"][call] = {**evil["nodes"][call], "kwargs": {"$dict": {"a=1); import os; (b": 1}}}
    with pytest.raises(GraphError, match="keyword .* is not a plain name"):
        build_graph(evil)
    evil = json.loads(json.dumps(spec))
    evil["nodes"][call] = {**evil["nodes"][call], "target": 'features")+print("hi'}
    with pytest.raises(GraphError, match="layer path .* is not a plain name"):
        build_graph(evil)
