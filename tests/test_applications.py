"""Data-free pruning, quantization calibration and continual learning (methods.md#applications) on digits: each
criterion against a hand computation, the surgery really shrinks tensors and rebuilds from a checkpoint, each job runs
end to end with its result rows and intervals in the run store, the orderings hold (synthetic > noise, replay > naive),
and bad input is one sentence with no run created. Sizes are tiny: seconds per test."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.ao.quantization.observer import ObserverBase

from dfkd_core.applications import (ContinualConfig, ContinualJob, PruningConfig, PruningJob, QuantizationConfig,
                                    QuantizationJob, recalibrate_bn_statistics)
from dfkd_core.applications.common import RESULTS_FILE, synthesize_into, trainable_copy
from dfkd_core.applications.continual import PenultimateFeatures, grow_head, replay_kd_loss
from dfkd_core.applications.report import format_results
from dfkd_core.applications.quantization import prepare_int8
from dfkd_core.applications.pruning import (bn_scale_importance, prune_to_flops, taylor_fo_bn_term,
                                            taylor_importance)
from dfkd_core.applications.surgery import channel_groups, count_macs, registered_copy
from dfkd_core.cli import main
from dfkd_core.data import dataset_info, load_split
from dfkd_core.distill.pool import SyntheticPool
from dfkd_core.models import Checkpoint, create_model, load_checkpoint, save_checkpoint
from dfkd_core.synthesis import SynthesisConfig
from test_app import app, button, elements, home, job_of, teacher_home  # noqa: F401 (fixtures)

DIGITS = dataset_info("digits")
EXAMPLE = torch.zeros(2, 1, 8, 8)


@pytest.fixture(scope="module")
def digits_pool(digits_teacher, tmp_path_factory) -> SyntheticPool:
    """200 DeepInversion images of the digits teacher (about a second), also saved as an images.pt."""
    pool = SyntheticPool(DIGITS)
    config = SynthesisConfig.preset("deepinversion", "digits", batch_size=100, iterations=60)
    for _ in synthesize_into(pool, copy.deepcopy(digits_teacher.model), DIGITS, config, 200, 0, torch.device("cpu")):
        pass
    pool.source = str(pool.save(tmp_path_factory.mktemp("pool") / "images.pt"))
    return pool


def teacher_copy(checkpoint: Checkpoint) -> Checkpoint:
    return Checkpoint(copy.deepcopy(checkpoint.model), dict(checkpoint.model_cfg), checkpoint.dataset,
                      dict(checkpoint.metrics), checkpoint.path)


def run_job(job, store, kind: str):
    job.run_record = store.create(kind, job.config.to_dict(), dataset=job.dataset.name)
    job.run()
    assert job.status == "done", job.error
    assert len(job.history) == job.total_steps
    return json.loads((job.run_record.dir / RESULTS_FILE).read_text())


def row(results: dict, **match) -> dict:
    return next(r for r in results["rows"] if all(r.get(k) == v for k, v in match.items()))


# ------------------------------------------------------------------ criteria and measurements by hand

def test_bn_scale_and_taylor_terms_match_a_hand_computation():
    model = create_model("bncnn3_w32", 10, 1, 8).eval()
    group = next(g for g in channel_groups(model, EXAMPLE, 10) if g.name == "features.0")
    bn = group.batchnorms[0]
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(-1, 1, 32))
        bn.bias.copy_(torch.linspace(0.5, -0.5, 32))
    assert torch.allclose(bn_scale_importance(group), torch.linspace(-1, 1, 32).abs())
    bn.weight.grad, bn.bias.grad = torch.full((32,), 2.0), torch.full((32,), -1.0)
    assert torch.allclose(taylor_fo_bn_term(group), 2 * bn.weight.detach() - bn.bias.detach())


def test_taylor_importance_is_the_mean_over_batches_of_the_squared_term():
    torch.manual_seed(0)
    model = create_model("bncnn3_w32", 10, 1, 8).eval()
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    groups = channel_groups(model, EXAMPLE, 10)
    steps = taylor_importance(model, groups, images, labels, batch_size=4)
    importance = None
    while importance is None:
        try:
            next(steps)
        except StopIteration as done:
            importance = done.value
    bn = dict(model.named_modules())["features.5"]   # the BN of conv features.4
    expected = torch.zeros(64)
    for half in (slice(0, 4), slice(4, 8)):
        g_gamma, g_beta = torch.autograd.grad(F.cross_entropy(model(images[half]), labels[half]),
                                              [bn.weight, bn.bias])
        expected += (bn.weight.detach() * g_gamma + bn.bias.detach() * g_beta) ** 2 / 2
    assert torch.allclose(importance["features.4"], expected, rtol=1e-4, atol=1e-12)


def test_bn_recalibration_is_the_average_of_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3)).eval()
    images = torch.randn(20, 1, 4, 4) * 3 + 1
    recalibrate_bn_statistics(model, images, batch_size=10)
    features = model[0](images).detach()
    batches = features.split(10)
    mean = torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0)
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    bn = model[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, atol=1e-4)
    assert not bn.training and bn.momentum == 0.1


def test_replay_target_gives_the_new_classes_no_mass():
    student = torch.tensor([[2.0, 1.0, 0.0, 3.0]])
    old = torch.tensor([[1.0, 0.0, -1e4, -1e4]])
    p_old = torch.softmax(torch.tensor([1.0, 0.0]) / 2, 0)
    log_q = torch.log_softmax(student[0] / 2, 0)
    expected = 4 * (p_old * (p_old.log() - log_q[:2])).sum()
    assert torch.isclose(replay_kd_loss(student, old, 2.0), expected)


# ------------------------------------------------------------------ surgery

def test_pruning_to_half_the_flops_shrinks_tensors_and_rebuilds_from_a_checkpoint(digits_teacher, tmp_path):
    teacher = digits_teacher.model
    importance = {g.name: bn_scale_importance(g) for g in channel_groups(trainable_copy(teacher), EXAMPLE, 10)}
    pruned, share, macs = prune_to_flops(teacher, EXAMPLE, 10, importance, 0.5)
    assert macs <= 0.5 * count_macs(trainable_copy(teacher), EXAMPLE) and 0 < share < 1
    assert pruned.features[0].weight.shape[0] < teacher.features[0].weight.shape[0]   # really smaller
    assert pruned.classifier.weight.shape[1] == pruned.features[8].weight.shape[0]
    stored = registered_copy(pruned, digits_teacher.model_cfg)
    path = save_checkpoint(tmp_path / "pruned.pt", stored, DIGITS)
    loaded = load_checkpoint(path).model
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(loaded(x), pruned.eval()(x), atol=1e-5)
    with pytest.raises(ValueError, match="frozen"):
        channel_groups(copy.deepcopy(teacher).requires_grad_(False), EXAMPLE, 10)


def test_grow_head_keeps_the_old_model_and_its_class_rows():
    old, new = create_model("bncnn3_w16", 5, 1, 8), create_model("bncnn3_w16", 10, 1, 8)
    grow_head(old, new, 5)
    assert torch.equal(new.classifier.weight[:5], old.classifier.weight)
    assert torch.equal(new.features[0].weight, old.features[0].weight)


# ------------------------------------------------------------------ the three jobs

def test_pruning_job_reports_every_variant_and_fine_tuning_recovers(digits_teacher, digits_pool, store):
    config = PruningConfig(keep_flops=[0.5], finetune_steps=40, batch_size=64, importance_images=128,
                           latency_rounds=3)
    results = run_job(PruningJob(teacher_copy(digits_teacher), config, pool=digits_pool), store, "prune")
    assert len(results["rows"]) == 1 + 2 * 4
    for criterion in ("taylor", "bn_scale"):
        none = row(results, criterion=criterion, variant="no fine-tune")
        tuned = row(results, criterion=criterion, variant="synthetic KD")
        assert none["kept_flops"] <= 0.5 and tuned["latency_ms"] > 0
        assert tuned["accuracy"] > none["accuracy"]
        ci = tuned["accuracy_ci"]
        assert ci["low"] <= tuned["accuracy"] <= ci["high"] and ci["units"] == 360
    assert {c["criterion"] for c in results["comparisons"]} == {"taylor", "bn_scale"}
    kept = load_checkpoint(store.get(store.list("prune")[0].id).path("pruned-taylor-keep50-synthetic-kd.pt"))
    assert kept.name == "pruned" and kept.model_cfg["base"] == "bncnn3_w32"


def test_every_float_model_is_timed_in_the_cpus_layout(digits_teacher):
    """The pruned copy comes out of the surgery in NCHW while the unpruned teacher ran in NHWC: timed as they were,
    a network with a quarter of the FLOPs timed slower than the full one (2.51 against 1.73 ms on digits)."""
    from dfkd_core.device import memory_layout, prepare_model
    job = PruningJob(teacher_copy(digits_teacher), PruningConfig(keep_flops=[0.5]))
    cpu_layout = memory_layout(prepare_model(create_model("bncnn3_w32", 10, 1, 8), torch.device("cpu")))
    nchw = create_model("bncnn3_w32", 10, 1, 8).to(memory_format=torch.contiguous_format)
    nhwc = create_model("bncnn3_w32", 10, 1, 8).to(memory_format=torch.channels_last)
    job.time_later("nchw", nchw)
    job.time_later("nhwc", nhwc)
    assert {memory_layout(m) for m in job.timed.values()} == {cpu_layout}
    assert memory_layout(nchw) == "NCHW"   # the caller's model is left as it was


def test_observer_choice_puts_torch_aos_observers_on_the_activations(digits_teacher):
    from torch.ao.quantization import HistogramObserver, MinMaxObserver
    images = torch.randn(20, 1, 8, 8) * 2
    for observer, kind, bits, levels in (("minmax", MinMaxObserver, 8, 127), ("histogram", HistogramObserver, 8, 127),
                                         ("minmax", MinMaxObserver, 4, 15)):
        prepared = prepare_int8(digits_teacher.model, EXAMPLE, "x86", bits, observer)
        observers = [m for m in prepared.modules() if isinstance(m, ObserverBase)]   # FX: activations only
        assert observers and all(type(m) is kind and m.quant_max == levels for m in observers)   # x86: reduce_range
    prepared(images)
    first = observers[0]   # the input's observer: min/max over every calibration image, nothing clipped
    assert first.min_val == images.min() and first.max_val == images.max()


@pytest.mark.parametrize("observer", ["minmax", "histogram"])
def test_quantization_synthetic_calibration_beats_noise(digits_teacher, digits_pool, store, observer):
    # 3-bit activation ranges: on 8x8 digits, int8 forgives any calibration; coarser levels show the ordering.
    config = QuantizationConfig(calibration_images=200, activation_bits=3, latency_rounds=3, observer=observer)
    results = run_job(QuantizationJob(teacher_copy(digits_teacher), config, pool=digits_pool), store, "quantize")
    model = "int8, 3-bit activations"
    synthetic = row(results, model=model, calibration="synthetic")
    noise = row(results, model=model, calibration="noise")
    assert synthetic["accuracy"] > noise["accuracy"]
    assert synthetic["size_bytes"] < row(results, model="fp32")["size_bytes"] / 2
    recalibrated = {r["calibration"]: r["accuracy"] for r in results["rows"] if r["model"] == "fp32, BN recalibrated"}
    assert recalibrated["synthetic"] > recalibrated["noise"]
    assert synthetic["observer"] == observer and results["config"]["observer"] == observer
    names = {c["comparison"] for c in results["comparisons"]}
    assert f"{model}: synthetic − noise" in names and f"{model} (synthetic) − fp32" in names
    # every recalibrated network also against fp32, paired: the table's "− fp32" cell is filled on its rows too
    assert {f"fp32, BN recalibrated ({source}) − fp32" for source in ("synthetic", "real", "noise")} <= names
    table = format_results(results)
    recalibrated_lines = [line for line in table.splitlines() if line.startswith("| fp32, BN recalibrated")]
    assert recalibrated_lines and all(" pt |" in line for line in recalibrated_lines)


def test_continual_replay_keeps_the_old_classes_naive_forgets(store):
    config = ContinualConfig(dataset="digits", images=100, synthesis={"batch_size": 100, "iterations": 60},
                             old_steps=150, new_steps=100, batch_size=64, replay_batch=64)
    results = run_job(ContinualJob(config), store, "continual")
    naive, replay = row(results, model="naive"), row(results, model="replay")
    assert replay["old"]["accuracy"] > naive["old"]["accuracy"]
    assert replay["old_retention"] > naive["old_retention"]
    assert len(replay["per_class"]) == 10 and row(results, model="old model")["per_class"][9] == 0
    comparison = next(c for c in results["comparisons"] if c["comparison"] == "replay − naive (old classes)")
    assert comparison["difference_ci"]["units"] == int((load_split("digits", "test").labels < 5).sum())
    assert (store.list("continual")[0].dir / "replay_images.pt").is_file()
    replay_steps = [m for m in store.get(store.list("continual")[0].id).metrics() if m.get("phase") == "replay"]
    assert replay_steps and all(m["loss_feature"] >= 0 for m in replay_steps)
    assert replay_steps[-1]["loss_feature"] > 0   # the student's features moved, and the term measures it


def test_penultimate_features_are_the_classifier_input():
    model = create_model("bncnn3_w16", 10, 1, 8).eval()
    caught = PenultimateFeatures(model)
    x = torch.randn(3, 1, 8, 8)
    logits = model(x)
    assert torch.allclose(model.classifier(caught.features), logits)
    caught.remove()
    model(torch.randn(1, 1, 8, 8))
    assert len(caught.features) == 3   # removed: later forwards leave it alone
    with pytest.raises(ValueError, match="no Linear classifier"):
        PenultimateFeatures(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_a_stopped_job_keeps_its_rows_and_says_so(digits_teacher, digits_pool, store):
    config = PruningConfig(criteria=["bn_scale"], keep_flops=[0.5, 0.25], finetune_steps=20, latency_rounds=3,
                           real_finetune=False)
    job = PruningJob(teacher_copy(digits_teacher), config, pool=digits_pool)
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.step == 25 else None)
    job.run_record = store.create("prune", config.to_dict(), dataset="digits")
    job.run()
    results = json.loads((job.run_record.dir / RESULTS_FILE).read_text())
    assert job.status == results["status"] == "cancelled" and 1 < len(results["rows"]) < 1 + 2 * 3
    assert any("only the rows listed" in note for note in results["notes"])
    assert "| – |" in format_results(results)   # stopped before the timing step: no latency, said as such


@pytest.mark.parametrize("config, says", [
    (PruningConfig(lr=math.nan), "lr must be a finite number"),
    (PruningConfig(keep_flops=[1.5]), "keep_flops are shares"),
    (PruningConfig(criteria=["l1"]), "criteria must be distinct names"),
    (QuantizationConfig(activation_bits=1), "activation_bits must be in 2..8"),
    (QuantizationConfig(sources=[]), "sources must be distinct names"),
    (QuantizationConfig(observer="l2"), "observer must be one of"),
    (ContinualConfig(new_steps=0), "new_steps"),
    (ContinualConfig(feature_weight=-1.0), "feature_weight must be >= 0"),
    (ContinualConfig(synthesis={"alpha_q": 1}), "unknown inversion setting"),
])
def test_bad_settings_get_one_sentence(config, says):
    with pytest.raises(ValueError, match=says):
        config.validate()


def test_models_that_cannot_be_pruned_or_quantized_are_refused_before_a_run(digits_teacher):
    plain = create_model("plaincnn3_w32", 10, 1, 8)
    with pytest.raises(ValueError, match="without BatchNorm"):
        PruningJob(Checkpoint(plain, dict(plain.default_cfg), DIGITS), PruningConfig())
    with pytest.raises(ValueError, match="with one filter per conv"):
        PruningJob(teacher_copy(digits_teacher), PruningConfig(keep_flops=[0.5, 0.001]))
    fashion = dataset_info("fashion-mnist")
    lenet = create_model("lenet5", 10, 1, 28)   # its forward branches on the input size: torch.fx cannot trace it
    with pytest.raises(ValueError, match="FX graph mode"):
        QuantizationJob(Checkpoint(lenet, dict(lenet.default_cfg), fashion), QuantizationConfig(pool=None))
    with pytest.raises(ValueError, match="old_classes must leave classes"):
        ContinualJob(ContinualConfig(old_classes=10))


# ------------------------------------------------------------------ command line

def test_cli_prune_quantize_continual_on_digits(digits_teacher, digits_pool, tmp_path, capsys):
    home_dir = str(tmp_path / "home")
    common = ["--home", home_dir, "--quiet"]
    assert main([*common, "prune", "--teacher", digits_teacher.path, "--pool", digits_pool.source, "--criteria",
                 "bn_scale", "--keep-flops", "0.5", "--finetune-steps", "5", "--no-real-finetune",
                 "--latency-rounds", "3"]) == 0
    assert "| bn_scale | " in capsys.readouterr().out
    # Two runs' images as one pool (here the same file twice: 2 × 200 images), as `dfkd distill --pool A B` takes.
    assert main([*common, "quantize", "--teacher", digits_teacher.path, "--pool", digits_pool.source,
                 digits_pool.source, "--calibration-images", "64", "--no-bn-recalibration", "--latency-rounds", "3", "--observer",
                 "histogram"]) == 0
    out = capsys.readouterr().out
    assert "int8: synthetic − noise" in out and "| int8 | synthetic | histogram | yes | 64 |" in out
    assert main([*common, "continual", "--old-steps", "20", "--new-steps", "10", "--images", "20",
                 "--inv-iterations", "5"]) == 0
    assert "| replay (λ_feat 1) | yes |" in capsys.readouterr().out
    assert main(["--home", home_dir, "runs", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert sorted(r["kind"] for r in runs) == ["continual", "prune", "quantize"]
    assert all(r["status"] == "done" for r in runs)
    quantize = next(r for r in runs if r["kind"] == "quantize")
    config = json.loads((Path(quantize["dir"]) / "config.json").read_text())
    assert config["pool"] == [digits_pool.source] * 2 and quantize["summary"]["pool_images"] == 2 * len(digits_pool)


@pytest.mark.parametrize("argv, says", [
    (["prune", "--keep-flops", "0.5,x"], "--keep-flops takes comma-separated numbers"),
    (["prune", "--criteria", "l1"], "criteria must be distinct names"),
    (["quantize", "--pool", "no-such-run"], "neither a checkpoint file nor a run id"),
    (["quantize", "--activation-bits", "9"], "activation_bits must be in 2..8"),
])
def test_cli_bad_input_is_one_sentence_and_creates_no_run(digits_teacher, tmp_path, argv, says):
    home_dir = tmp_path / "home"
    with pytest.raises(SystemExit, match=says):
        main(["--home", str(home_dir), argv[0], "--teacher", digits_teacher.path, *argv[1:]])
    with pytest.raises(SystemExit, match="old_classes must leave classes"):
        main(["--home", str(home_dir), "continual", "--old-classes", "12"])
    assert not list((home_dir / "runs").iterdir())


# ------------------------------------------------------------------ the app page

def test_applications_page_runs_a_quantization_and_shows_its_table_and_figure(teacher_home):
    at = app("pages/applications.py")
    assert at.title[0].value == "Applications"
    assert {"criteria", "FLOPs to keep"} <= {w.label for w in at.sidebar.multiselect}   # pruning first
    at.radio(key="apps_kind").set_value("continual").run()
    assert at.sidebar.selectbox(key="apps_dataset").value == "digits"
    assert at.sidebar.number_input(key="apps_feature_weight_digits_bncnn3_w32").value == \
        ContinualConfig().feature_weight == 1.0
    at.sidebar.selectbox(key="apps_dataset").set_value("fashion-mnist").run()
    assert at.sidebar.number_input(key="apps_feature_weight_fashion-mnist_bncnn6_w32").value == \
        ContinualConfig(dataset="fashion-mnist").feature_weight == 24.0
    assert ContinualConfig(dataset="fashion-mnist", model="bncnn6_w16").feature_weight == 12.0
    assert ContinualConfig(dataset="fashion-mnist", feature_weight=0.0).feature_weight == 0.0   # 0 is a choice
    at.radio(key="apps_kind").set_value("quantize").run()
    for name, value in (("images", 40), ("iterations", 10), ("calibration_images", 64)):
        at.sidebar.number_input(key=f"apps_{name}").set_value(value)
    at.sidebar.radio(key="apps_observer").set_value("histogram")
    at.run()
    button(at, "Start").click().run()
    assert not at.error, at.error[0].value
    job = job_of(at)
    assert job.kind == "quantize" and job.wait(120) == "done", job.error
    at.run()
    assert not at.exception
    record = teacher_home.list("quantize")[0]
    assert record.status == "done" and record.teacher == teacher_home.teacher_id
    assert "| int8 | synthetic | histogram | yes | 40 |" in " ".join(m.value for m in at.markdown)
    assert "used all 40 pool images" in at.warning[0].value   # fewer than asked: said where the result is shown
    assert len(elements(at, "plotly_chart")) == 1


def test_applications_page_explains_bad_settings_and_creates_no_run(teacher_home):
    at = app("pages/applications.py")
    at.sidebar.multiselect(key="apps_criteria").set_value([]).run()
    button(at, "Start").click().run()
    assert "criteria must be distinct names" in at.error[0].value
    assert not teacher_home.list("prune")


def test_every_applications_knob_links_its_methods_section(teacher_home):
    """Issue 17: each setting's help ends with a link to the Methods section it belongs to."""
    at = app("pages/applications.py")
    seen = []
    for kind in ("prune", "quantize", "continual"):
        at.radio(key="apps_kind").set_value(kind).run()
        knobs = [w for w in (*at.sidebar.number_input, *at.sidebar.multiselect, *at.sidebar.select_slider,
                             *at.sidebar.toggle, *at.sidebar.radio, *at.sidebar.selectbox)
                 if w.key and w.key.startswith("apps_") and w.key not in ("apps_pool", "apps_teacher")]   # inputs, not knobs
        missing = [w.label for w in knobs if "(/methods#" not in (w.help or "")]
        assert not missing, (kind, missing)
        seen += [w.label for w in knobs]
    assert {"criteria", "calibration images", "old model steps"} <= set(seen)


def test_application_figures_draw_each_interval_as_its_error_bar():
    from dfkd_core.plots.applications import pruning_accuracy_figure, quantization_figure
    from dfkd_core.stats import Interval

    ci = Interval(0.80, 0.75, 0.82, 1000).to_dict()
    pruning = pruning_accuracy_figure([
        {"variant": "unpruned", "criterion": "-", "kept_flops": 1.0, "accuracy": 0.9, "accuracy_ci": None},
        {"variant": "synthetic KD", "criterion": "taylor", "kept_flops": 0.5, "accuracy": 0.8, "accuracy_ci": ci},
        {"variant": "synthetic KD", "criterion": "taylor", "kept_flops": 0.25, "accuracy": 0.7, "accuracy_ci": None}])
    line = pruning.data[0]
    assert list(line.x) == [0.25, 0.5] and list(line.error_y.array) == [None, pytest.approx(0.02)]
    assert list(line.error_y.arrayminus) == [None, pytest.approx(0.05)]   # no interval stored: no bar, not zero
    # More pruning to the right, from 100% to just past the smallest share measured, never into negative shares
    # (plotly's own range for one point ran to −50%).
    assert tuple(pruning.layout.xaxis.range) == (1.03, pytest.approx(0.20))
    one = pruning_accuracy_figure([{"variant": "synthetic KD", "criterion": "taylor", "kept_flops": 0.5,
                                    "accuracy": 0.8, "accuracy_ci": ci}])
    assert min(one.layout.xaxis.range) >= 0
    quant = quantization_figure([{"model": "fp32", "calibration": "-", "accuracy": 0.9, "accuracy_ci": None},
                                 {"model": "int8", "calibration": "synthetic", "accuracy": 0.8, "accuracy_ci": ci}])
    assert quant.data[0].error_y.array[0] == pytest.approx(0.02) and quant.data[0].y[0] == 0.8


def test_a_job_stopped_during_synthesis_says_no_network_was_measured_and_keeps_its_images(digits_teacher, store):
    """Stopped while it synthesized: the note said "only the rows listed were measured" above an empty table."""
    config = PruningConfig(criteria=["bn_scale"], keep_flops=[0.5], finetune_steps=5, latency_rounds=3,
                           real_finetune=False, images=40, synthesis={"batch_size": 20, "iterations": 6})
    job = PruningJob(teacher_copy(digits_teacher), config)
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.step == 8 else None)   # in the second round
    job.run_record = store.create("prune", config.to_dict(), dataset="digits")
    job.run()
    results = json.loads((job.run_record.dir / RESULTS_FILE).read_text())
    assert job.status == "cancelled" and results["rows"] == []
    (note,) = [n for n in results["notes"] if "ended 'cancelled'" in n]
    assert "before any network was measured (during synthesis)" in note
    assert "its 20 synthesized images are kept in this run" in note
    assert (job.run_record.dir / "images.pt").is_file()
