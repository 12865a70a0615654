"""IE-KD and IE-DML (methods.md#ie-kd): every loss term by hand, then the methods end to end on digits (fast)."""
import copy
import math

import pytest
import torch

from dfkd_core.cli import main
from dfkd_core.distill import DistillConfig, DistillJob, PoolError, SyntheticPool
from dfkd_core.distill.iekd import split_layer
from dfkd_core.distill.iekd_modules import (FactorAutoencoder, InheritanceExploration, exploration_distance,
                                            factor_distance, ie_loss, ie_term_weights, inheritance_distance,
                                            normalize_factor, reconstruction_loss, split_channels)
from dfkd_core.models import create_model, load_checkpoint

from hand_models import run_distill

CHANCE = 0.1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny digits models gain nothing from a second thread, and lose a lot to it on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ the equations, by hand

def test_reconstruction_loss_is_the_squared_norm_per_sample_averaged():
    f = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    # ‖(1, 2)‖² = 5, ‖(3, 4)‖² = 25 → mean 15; a perfect reconstruction costs 0
    assert reconstruction_loss(f, torch.zeros_like(f)).item() == pytest.approx(15.0)
    assert reconstruction_loss(f, f).item() == 0.0
    maps = torch.ones(2, 3, 2, 2)   # 12 units of error 1 per sample
    assert reconstruction_loss(maps, torch.zeros_like(maps)).item() == pytest.approx(12.0)


def test_factor_normalization_is_per_sample_unit_l2():
    out = normalize_factor(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))   # a zero factor stays zero, no NaN
    maps = normalize_factor(torch.full((2, 2, 1, 2), 2.0))                 # flattened: 4 values of 2 → 0.5 each
    assert maps.shape == (2, 4) and torch.allclose(maps, torch.full((2, 4), 0.5))


def test_inheritance_and_exploration_distances_by_hand():
    t = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    s = torch.tensor([[4.0, -3.0], [0.0, 2.0]])
    # t̂ = (0.6, 0.8), (1, 0); ŝ = (0.8, −0.6), (0, 1); differences (−0.2, 1.4) and (1, −1)
    # L1: 1.6 and 2 → mean 1.8;  L2: √2 and √2 → mean √2
    assert inheritance_distance(t, s, p=1).item() == pytest.approx(1.8)
    assert exploration_distance(t, s, p=1).item() == pytest.approx(1.8)
    assert inheritance_distance(t, s).item() == pytest.approx(math.sqrt(2))   # p = 2 by default
    assert exploration_distance(t, s, p=2).item() == pytest.approx(math.sqrt(2))
    assert factor_distance(t, 5 * s, p=1).item() == pytest.approx(1.8)     # the scale of a factor is irrelevant
    with pytest.raises(ValueError, match="shapes differ"):
        factor_distance(t, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="L1 or L2"):
        factor_distance(t, s, p=3)


def test_distances_are_bounded_so_exploration_cannot_diverge():
    t = torch.randn(8, 4, 3, 3) * 1e3
    d = 4 * 3 * 3
    assert exploration_distance(t, -t, p=2).item() == pytest.approx(2.0)   # antipodal: the L2 maximum
    assert exploration_distance(t, -t, p=1).item() <= 2 * math.sqrt(d) + 1e-4
    far = torch.randn(8, 4, 3, 3) * 1e6
    assert exploration_distance(t, far, p=1).item() <= 2 * math.sqrt(d) + 1e-4


def test_teacher_factor_is_a_fixed_target():
    t = torch.randn(2, 3, requires_grad=True)
    s = torch.randn(2, 3, requires_grad=True)
    (inheritance_distance(t, s) - exploration_distance(t, s)).backward()
    assert t.grad is None and s.grad is not None


def test_combined_ie_loss_and_its_weights_by_hand():
    goal, inh, exp = torch.tensor(0.5), torch.tensor(0.2), torch.tensor(0.3)
    # 0.5 + 2 · 0.2 − 0.5 · 0.3 = 0.75
    assert ie_loss(goal, inh, exp, lambda_inh=2.0, lambda_exp=0.5).item() == pytest.approx(0.75)
    weights = ie_term_weights(2.0, 0.5)
    terms = {"goal": goal, "inh": inh, "exp": exp}
    assert sum(weights[k] * v for k, v in terms.items()).item() == pytest.approx(0.75)


def test_split_channels_and_factor_shapes():
    f = torch.arange(2 * 6 * 4 * 4, dtype=torch.float).view(2, 6, 4, 4)
    inh, exp = split_channels(f, 2)
    assert inh.shape == (2, 2, 4, 4) and exp.shape == (2, 4, 4, 4) and torch.equal(inh, f[:, :2])
    with pytest.raises(ValueError, match="non-empty exploration part"):
        split_channels(f, 6)
    ae = FactorAutoencoder(channels=8, factor_channels=4)
    factor, reconstruction = ae(torch.randn(3, 8, 5, 5))
    assert factor.shape == (3, 4, 5, 5) and reconstruction.shape == (3, 8, 5, 5)
    student = InheritanceExploration(channels=6, inheritance_channels=3, factor_channels=4, factor_size=(5, 5))
    s_inh, s_exp = student(torch.randn(3, 6, 7, 7))          # another resolution: resized to the factor's
    assert s_inh.shape == s_exp.shape == factor.shape
    transfer = InheritanceExploration(channels=6, inheritance_channels=6, factor_channels=4, factor_size=(5, 5))
    assert transfer.exploration is None and transfer(torch.randn(3, 6, 5, 5))[1] is None   # Factor Transfer
    vector = InheritanceExploration(channels=10, inheritance_channels=5, factor_channels=4, factor_size=(1, 1))
    assert vector(torch.randn(3, 10))[0].shape == (3, 4, 1, 1)  # a fully-connected layer works too


# ------------------------------------------------------------------ the methods on digits

def _distill(teacher, method, store=None, pool=None, **settings):
    return run_distill(teacher, method, store, pool, **{"steps": 200, **settings})


@pytest.fixture(scope="module")
def iekd_job(digits_teacher, session_store):
    return _distill(digits_teacher, "iekd", session_store, options={"autoencoder_steps": 120})


@pytest.fixture(scope="module")
def iedml_job(digits_teacher, session_store):
    return _distill(digits_teacher, "iedml", session_store, options={"lambda_exp": 0.5})


def _mean(values):
    return sum(values) / len(values)


def test_teacher_autoencoder_learns_the_teacher_layer(iekd_job):
    rec = [m["ae_loss_rec"] for m in iekd_job.history if m["phase"] == "autoencoder"]
    assert len(rec) == 120
    assert _mean(rec[-10:]) < 0.3 * _mean(rec[:10])
    assert iekd_job.history[119]["ae_relative_error"] < 0.3


def test_iekd_student_learns_and_its_run_holds_it(iekd_job, digits_teacher):
    r = iekd_job.result
    assert r["student_accuracy"] > 6 * CHANCE and r["data_free"] is False
    assert r["layer_teacher"] == r["layer_student"] == "features.10"          # the last conv block (default)
    assert r["inheritance_channels"] == r["exploration_channels"] == 16 and r["factor_channels"] == 32
    run = iekd_job.run_record
    student = load_checkpoint(run.path("model.pt"))
    assert student.name == "bncnn3_w16" and student.metrics["test_accuracy"] == r["student_accuracy"]
    saved = torch.load(run.path("iekd.pt"), weights_only=True)
    assert {"autoencoder", "student_factors"} <= set(saved)
    phases = [m["phase"] for m in run.metrics()]
    assert phases == ["autoencoder"] * 120 + ["kd"] * 200


def test_iekd_step_minimizes_the_ie_loss_inheriting_and_exploring(iekd_job):
    kd = [m for m in iekd_job.history if m["phase"] == "kd"]
    for m in (kd[0], kd[-1]):   # the KD loop's weighted sum is exactly L = L_goal + λ_inh·d_inh − λ_exp·d_exp
        expected = ie_loss(torch.tensor(m["loss_goal"]), torch.tensor(m["loss_inh"]), torch.tensor(m["loss_exp"]))
        assert m["loss_total"] == pytest.approx(expected.item(), rel=1e-4, abs=1e-4)
    inh, exp = [m["loss_inh"] for m in kd], [m["loss_exp"] for m in kd]
    assert _mean(inh[-20:]) < _mean(inh[:20])           # the inheritance factor moves toward the teacher's
    assert _mean(exp[-20:]) > _mean(exp[:20])           # the exploration factor moves away
    assert max(exp) <= 2.0                              # and stays bounded (L2 distance of unit factors)


def test_iedml_trains_two_students_and_saves_both(iedml_job):
    r, run = iedml_job.result, iedml_job.run_record
    a, b = load_checkpoint(run.path("model.pt")), load_checkpoint(run.path("model_b.pt"))
    assert r["student_accuracy"] > 6 * CHANCE and r["student_b_accuracy"] > 6 * CHANCE
    assert b.metrics["test_accuracy"] == r["student_b_accuracy"] and r["student_b_checkpoint"] == str(b.path)
    ci = r["student_b_accuracy_ci"]   # the peer's accuracy carries its interval too, and its hits are stored
    assert ci["low"] <= ci["estimate"] == r["student_b_accuracy"] <= ci["high"] and ci["units"] == 360
    hits = torch.load(run.path("test_hits.pt"), weights_only=True)["hits"]
    assert set(hits) == {"student", "teacher", "student_b"} and hits["student_b"].float().mean() == ci["estimate"]
    assert not torch.equal(a.model.features[0].weight, b.model.features[0].weight)
    last = iedml_job.history[-1]
    assert {"loss_inh_b", "loss_exp_b", "loss_dml", "loss_dml_b", "loss_rec", "loss_rec_b"} <= set(last)
    assert "student_b_accuracy" in last and "student_accuracy" in last
    first = iedml_job.history[0]
    assert last["loss_rec"] < 0.5 * first["loss_rec"]   # each peer's online autoencoder learns its map


def test_inheritance_only_is_factor_transfer(digits_teacher):
    job = _distill(digits_teacher, "iekd", steps=20, options={"autoencoder_steps": 10, "inheritance_share": 1.0,
                                                              "lambda_exp": 0.0, "distance_norm": 1})
    last = job.history[-1]
    assert "loss_inh" in last and "loss_exp" not in last
    assert job.method.describe()["exploration_channels"] == 0
    with pytest.raises(ValueError, match="lambda_exp=0"):
        DistillJob(digits_teacher, DistillConfig(method="iekd", options={"inheritance_share": 1.0}))


def test_data_free_iekd_on_a_small_pool(digits_teacher, tmp_path):
    made = _distill(digits_teacher, "deepinversion", images=200, kd_steps_per_round=0, steps=1,
                    synthesis={"iterations": 60, "batch_size": 100})
    made.pool.save(tmp_path / "images.pt")
    pool = SyntheticPool.load(tmp_path / "images.pt", digits_teacher.dataset)
    config = DistillConfig(method="iekd", steps=150, pool=pool.source, options={"autoencoder_steps": 40})
    job = DistillJob(copy.deepcopy(digits_teacher), config)   # --pool path alone: the job loads it
    job.run()
    assert job.status == "done", job.error
    assert job.result["data_free"] is True and job.result["pool_size"] == 200
    assert "train" not in job._splits                       # the real training set was never read
    assert job.result["student_accuracy"] > 3 * CHANCE
    synthesized = DistillJob(copy.deepcopy(digits_teacher), config.replace(
        steps=10, options={"autoencoder_steps": 5, "pool_labels": "synthesized"}), pool=pool)
    synthesized.run()
    assert synthesized.status == "done", synthesized.error
    pool.targets[:] = -1
    with pytest.raises(PoolError, match="pool_labels=teacher"):
        DistillJob(digits_teacher, config.replace(options={"pool_labels": "synthesized"}), pool=pool)


def test_unknown_layer_or_option_is_refused_with_the_choices(digits_teacher, tmp_path):
    with pytest.raises(ValueError, match="no layer 'conv9'.*features.10"):
        DistillJob(digits_teacher, DistillConfig(method="iekd", options={"layer_student": "conv9"}))
    with pytest.raises(ValueError, match="no layer 'conv9'.*features.10"):
        DistillJob(digits_teacher, DistillConfig(method="iekd", options={"layer_teacher": "conv9"}))
    with pytest.raises(ValueError, match="inheritance_share"):
        DistillJob(digits_teacher, DistillConfig(method="iedml", options={"inheritance_share": 1.0}))
    with pytest.raises(ValueError, match="Its options: .*lambda_exp"):
        DistillJob(digits_teacher, DistillConfig(method="iekd", options={"lambda_explore": 1.0}))
    with pytest.raises(SystemExit, match="no layer 'conv9'"):
        main(["--home", str(tmp_path / "home"), "distill", "--teacher", str(digits_teacher.path), "--method",
              "iekd", "--option", "layer_student=conv9"])
    with pytest.raises(ValueError, match="at least 2 channels"):
        model = create_model("bncnn3_w16", 1, 1, 8)   # one class: the logits layer has a single channel
        split_layer(model, "classifier", torch.zeros(2, 1, 8, 8))


def test_cli_iedml(tmp_path, capsys, digits_teacher):
    home = str(tmp_path / "home")
    assert main(["--home", home, "--quiet", "distill", "--teacher", str(digits_teacher.path), "--method", "iedml",
                 "--steps", "30", "--option", "lambda_exp=0.5", "--option", "distance_norm=2"]) == 0
    out = capsys.readouterr().out
    run_id = out.split("run ")[1].split()[0]
    assert "iedml" in out and (tmp_path / "home" / "runs" / run_id / "model_b.pt").is_file()
