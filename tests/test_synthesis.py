import copy

import pytest
import torch

from dfkd_core.models import create_model
from dfkd_core.synthesis import ModelInversion, SynthesisConfig


def _job(teacher, method="deepinversion", run=None, student=None, **kw):
    config = SynthesisConfig.preset(method, "digits", **{"batch_size": 50, "iterations": 200, **kw})
    return ModelInversion(copy.deepcopy(teacher.model), teacher.dataset, config, student=student, run=run)


def test_deepinversion_fools_teacher_and_lowers_bn_loss(digits_teacher, store):
    run = store.create("synthesis", {})
    job = _job(digits_teacher, run=run)
    job.run()
    r = job.result
    assert job.status == "done", job.error
    assert r["teacher_accuracy"] >= 0.90
    assert r["bn_distance_end"] < 0.5 * r["bn_distance_start"]
    saved = torch.load(run.path("images.pt"), weights_only=True)
    assert saved["images"].shape == (50, 1, 8, 8) and run.path("grid.png").stat().st_size > 0
    low, high = digits_teacher.dataset.pixel_bounds()
    assert saved["images"].min() >= low.min() - 1e-6 and saved["images"].max() <= high.max() + 1e-6
    assert len(run.metrics()) == 200 and {"loss_ce", "loss_tv", "loss_l2", "loss_bn_feature"} <= set(run.metrics()[0])


def test_feature_loss_matters_deepdream_vs_deepinversion(digits_teacher):
    dream, inversion = _job(digits_teacher, "deepdream"), _job(digits_teacher, "deepinversion")
    dream.run(), inversion.run()
    assert inversion.result["bn_distance_end"] < dream.result["bn_distance_end"]
    started = inversion.started_at   # the wall time splits into set-up and steps; the rate is the steps'
    assert inversion.result["setup_s"] >= 0 and inversion.result["elapsed_s"] > 0
    assert inversion.result["images_per_second"] == pytest.approx(50 / inversion.result["elapsed_s"])
    assert started + inversion.result["setup_s"] <= inversion.t0 + 1e-6


def test_weights_changed_mid_run_change_logged_loss(digits_teacher):
    job = _job(digits_teacher, iterations=20)
    job.subscribe(lambda e: job.update(alpha_f=0.0, alpha_tv=0.5) if e.kind == "step" and e.step == 9 else None)
    job.run()
    before, after = job.history[9], job.history[10]
    assert before["alpha_f"] == 1.0 and after["alpha_f"] == 0.0 and after["alpha_tv"] == 0.5
    # The total now omits the BN term and weighs TV at 0.5: recompute it from the logged terms.
    expected = after["loss_ce"] + 0.5 * after["loss_tv"] + after["alpha_l2"] * after["loss_l2"]
    assert after["loss_total"] == pytest.approx(expected, rel=1e-4)
    assert before["loss_total"] > before["loss_ce"] + before["loss_bn_feature"] * 0.99


def test_cancel_keeps_images_and_marks_run(digits_teacher, store):
    run = store.create("synthesis", {})
    job = _job(digits_teacher, run=run, iterations=500)
    job.subscribe(lambda e: job.cancel() if e.kind == "step" and e.step == 14 else None)
    job.run()
    assert job.status == "cancelled" and job.result["steps"] == 15
    assert store.get_record(run.id).status == "cancelled" and run.path("images.pt").exists()


def test_nan_stops_with_named_term_and_keeps_images(digits_teacher, store):
    run = store.create("synthesis", {})
    job = _job(digits_teacher, run=run, iterations=30)
    # A finite weight so large that the weighted total overflows: the loss check, not the settings check, stops it.
    job.subscribe(lambda e: job.update(alpha_tv=1e308) if e.kind == "step" and e.step == 4 else None)
    job.run()
    assert job.status == "failed" and "alpha_tv = 1e+308 times its term" in job.error   # the weight, named
    assert run.path("images.pt").exists() and torch.isfinite(job.images()).all()


def test_teacher_without_batchnorm_refuses_feature_loss_but_allows_deepdream(digits_teacher):
    plain = create_model("plaincnn3_w32", 10, 1, 8)
    with pytest.raises(ValueError, match="no BatchNorm"):
        ModelInversion(plain, digits_teacher.dataset, SynthesisConfig.preset("deepinversion", "digits"))
    job = ModelInversion(plain, digits_teacher.dataset, SynthesisConfig.preset("deepdream", "digits", iterations=3))
    job.run()
    assert job.status == "done" and "bn_distance" not in job.history[0]


def test_adi_needs_student_and_logs_competition(digits_teacher):
    with pytest.raises(ValueError, match="needs a student"):
        _job(digits_teacher, "adi")
    student = create_model("bncnn3_w16", 10, 1, 8)
    job = _job(digits_teacher, "adi", student=student, iterations=5)
    job.run()
    assert job.status == "done" and 0.0 <= job.history[-1]["loss_compete"] <= 1.0
    assert all(p.requires_grad for p in student.parameters())


def test_multi_resolution_switches_size(digits_teacher):
    job = _job(digits_teacher, iterations=20, multi_resolution_iterations=10)
    job.run()
    assert job.history[0]["resolution"] == 4 and job.history[-1]["resolution"] == 8
    assert job.images().shape[-1] == 8


def test_bad_targets_and_config_are_rejected(digits_teacher):
    with pytest.raises(ValueError, match="outside"):   # before the job exists, so before any run is created
        _job(digits_teacher, targets=[3, 12], iterations=2)
    with pytest.raises(ValueError, match="alpha_tv"):
        SynthesisConfig(alpha_tv=-1).validate()


def test_a_jitter_as_large_as_the_image_is_refused(digits_teacher):
    """SynthesisConfig cannot know the image size; the job refuses it before a run exists (and as a live change)."""
    for jitter in (8, 1000):   # digits are 8x8
        with pytest.raises(ValueError, match=f"jitter {jitter} .* 8x8 digits image .* below 8") as refused:
            _job(digits_teacher, jitter=jitter, iterations=2)
        assert "\n" not in str(refused.value)
    job = _job(digits_teacher, jitter=7, iterations=2)   # below the size: an augmentation, accepted
    with pytest.raises(ValueError, match="jitter 8 "):
        job.update(jitter=8)
    job.run()
    assert job.status == "done" and job.config.jitter == 7


@pytest.mark.parametrize("name", ["alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "alpha_c", "first_bn_multiplier",
                                  "lr", "compete_temperature"])
def test_a_nan_weight_is_refused_not_read_as_term_off(name):
    """NaN fails `weight > 0`, so before this check a NaN α_f silently made DeepInversion into DeepDream."""
    with pytest.raises(ValueError, match=f"{name} must be a finite number, got nan"):
        SynthesisConfig.preset("deepinversion", "digits", **{name: float("nan")}).validate()


def test_a_live_change_to_nan_is_refused_and_the_run_goes_on(digits_teacher):
    job = _job(digits_teacher, iterations=3)
    with pytest.raises(ValueError, match="alpha_f must be a finite number"):
        job.update(alpha_f=float("nan"))
    job.run()
    assert job.status == "done" and all(h["alpha_f"] == 1.0 for h in job.history)


def test_a_live_change_that_comes_after_the_last_step_is_reported_not_lost(digits_teacher):
    job = _job(digits_teacher, iterations=3)
    job.subscribe(lambda e: job.update(alpha_tv=1.0) if e.kind == "step" and e.step == 2 else None)
    job.run()
    assert job.status == "done" and all(h["alpha_tv"] != 1.0 for h in job.history)
    assert job.result["late_updates"] == {"alpha_tv": 1.0} and "live_updates" not in job.result


def test_snapshots_are_labelled(digits_teacher):
    job = _job(digits_teacher, iterations=10, snapshot_every=5)
    snaps = []
    job.subscribe(lambda e: snaps.append(e) if e.kind == "snapshot" else None)
    job.run()
    assert [s.step for s in snaps] == [0, 4, 9]
    assert snaps[-1].images.shape == (50, 1, 8, 8) and "→" in snaps[-1].labels[0]


def test_the_live_view_ends_on_the_run_s_last_step(digits_teacher):
    """The last step, or the one a Stop follows, always gets a snapshot: a finished run's grid said "step 196"
    beside "done · step 200/200"."""
    job = _job(digits_teacher, iterations=10, snapshot_every=4)
    steps = []
    job.subscribe(lambda e: steps.append(e.step) if e.kind == "snapshot" else None)
    job.run()
    assert steps == [0, 3, 7, 9] and job.latest_snapshot.step == 9
    stopped = _job(digits_teacher, iterations=10, snapshot_every=4)
    steps = []
    stopped.subscribe(lambda e: stopped.cancel() if e.kind == "step" and e.step == 5 else None)
    stopped.subscribe(lambda e: steps.append(e.step) if e.kind == "snapshot" else None)
    stopped.run()
    assert stopped.status == "cancelled" and steps == [0, 3, 5] and len(stopped.history) == 6


def test_strong_tv_prior_fades_deepdream_images(digits_teacher):
    """DeepDream has only its priors once the teacher is sure of the class, and Adam's normalized steps let even a
    small α_tv drive them: the images lose contrast (on Fashion-MNIST, std 0.26 at α_tv = 1e-3; README). The
    Fashion-MNIST DeepDream recipe uses 1e-4 for that reason."""
    stds = {}
    for alpha_tv in (1e-3, 1e-4):
        job = _job(digits_teacher, "deepdream", batch_size=100, iterations=100, lr=0.1, alpha_tv=alpha_tv)
        job.run()
        assert job.result["teacher_accuracy"] >= 0.9
        stds[alpha_tv] = float(job.images().std())
    assert stds[1e-4] > stds[1e-3] + 0.05


def test_run_titles_tell_runs_apart():
    a = SynthesisConfig.preset("deepinversion", "digits", alpha_f=0.3).title()
    b = SynthesisConfig.preset("deepinversion", "digits", alpha_f=1.0).title()
    assert a != b and a.startswith("DeepInversion α_f=0.3") and "B=100×200" in a
    assert "α_c=1" in SynthesisConfig.preset("adi", "digits").title()
    # the DeepInversion preset with α_f moved to 0 is no longer DeepInversion: its name must not say it is
    assert SynthesisConfig.preset("deepinversion", "digits", alpha_f=0.0).title().startswith(
        "DeepInversion without BN matching α_f=0 ")


@pytest.mark.parametrize("settings, says", [
    (dict(method="deepdream", alpha_tv=100.0, alpha_l2=100.0), "100% of the images are flat (one grey value), the "
                                                               "priors' doing: lower α_tv and α_l2"),
    (dict(method="deepinversion", lr=1e30), "of the pixels sit at the ends of the valid range, the sign of steps too "
                                            "large to settle: lower the learning rate"),
])
def test_a_failed_batch_names_its_cause(digits_teacher, settings, says):
    """Flat grey squares at confidence 0.13 got no word; a learning rate of 1e30 was blamed on α_f."""
    method = settings.pop("method")
    config = SynthesisConfig.preset(method, "digits", iterations=60, batch_size=30, **settings)
    job = ModelInversion(digits_teacher.model, digits_teacher.dataset, config)
    job.run()
    assert job.result["teacher_accuracy"] < 0.5 and says in job.result["diagnosis"]


def test_a_teacher_at_chance_is_named_first_and_all_zero_weights_are_refused(digits_teacher):
    config = SynthesisConfig.preset("deepinversion", "digits", iterations=5, batch_size=20)
    job = ModelInversion(digits_teacher.model, digits_teacher.dataset, config, teacher_test_accuracy=0.083)
    job.run()
    assert job.result["diagnosis"].startswith("The teacher itself scores 8.3% on real test images, near chance (10%")
    with pytest.raises(ValueError, match="every loss weight is 0"):
        SynthesisConfig.preset("deepdream", "digits", alpha_ce=0, alpha_tv=0, alpha_l2=0).validate()


def test_run_names_tell_apart_runs_that_differ_in_alpha_ce_or_alpha_l2():
    """Two runs, one with α_l2 100 and α_ce 0, were both named 'DeepInversion α_f=1 α_tv=100 lr=0.5 B=100×200'."""
    plain = SynthesisConfig.preset("deepinversion", "digits", alpha_tv=100.0, lr=0.5)
    other = plain.replace(alpha_l2=100.0, alpha_ce=0.0)
    assert plain.title() == "DeepInversion α_f=1 α_tv=100 lr=0.5 B=100×200"
    assert other.title() == "DeepInversion α_f=1 α_tv=100 α_ce=0 α_l2=100 lr=0.5 B=100×200"


def test_an_overflowing_weight_is_named_not_the_total(digits_teacher, store):
    """α_tv 1e38 was reported as "loss term 'total' is inf; lower the weight of 'total'" (there is none) and said
    the finished part was kept after no step had finished."""
    config = SynthesisConfig.preset("deepinversion", "digits", alpha_tv=1e38, iterations=5, batch_size=10)
    job = ModelInversion(digits_teacher.model, digits_teacher.dataset, config, run=store.create("synthesis", {}))
    job.run()
    assert job.status == "failed"
    assert "alpha_tv = 1e+38 times its term" in job.error and "lower alpha_tv" in job.error
    assert "no step had finished" in job.error
