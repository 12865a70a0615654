"""The fast synthesis engine computes what a plain DeepInversion loop computes (issue 18). Speed itself is measured
by benchmarks/synthesis_speed.py, never asserted here."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load_benchmark

from dfkd_core.synthesis import ModelInversion, SynthesisConfig
from dfkd_core.synthesis.engine import InversionObjective, shift_and_flip

ROOT = Path(__file__).resolve().parents[1]


def _reference_loop():
    return load_benchmark("deepinversion_reference").reference_deepinversion


def _config(**kw):
    return SynthesisConfig.preset("deepinversion", "digits", **{"batch_size": 40, "iterations": 12,
                                                                 "snapshot_every": 0, "flip": True, **kw})


def _job(teacher, config, **kw):
    return ModelInversion(copy.deepcopy(teacher.model), teacher.dataset, config, **kw)


@pytest.mark.parametrize("flip", [0, 1])
def test_shift_and_flip_is_roll_then_flip(flip):
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            expected = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            if flip:
                expected = torch.flip(expected, dims=(3,))
            assert torch.equal(shift_and_flip(x, torch.tensor([dy, dx, flip])), expected)


def test_engine_follows_the_reference_loop(digits_teacher):
    """Same noise, same augmentation draws, same objective: after 12 Adam steps the engine's images are the
    reference loop's up to float rounding (the fused statistics sum in another order). Over hundreds of steps
    rounding differences grow as large as a 1e-6 change of the initial noise makes them (docs: issue 18). In float32
    as the reference computes, also where $DFKD_CPU_BF16=1 would make the engine bf16 (test_cpu_bf16.py)."""
    config = _config().replace(amp=False)
    job = _job(digits_teacher, config)
    job.run()
    teacher = copy.deepcopy(digits_teacher.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    init = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(config.seed))
    low, high = digits_teacher.dataset.pixel_bounds()
    reference = _reference_loop()(teacher, init, job.targets, low, high, iterations=12, lr=config.lr,
                                  jitter=config.jitter, flip=config.flip, seed=config.seed)
    assert (job.images() - reference).abs().max() < 1e-3
    assert "fused into all 3 BatchNorm layers" in job.result["engine"]


def test_the_speed_benchmark_measures_each_variant_against_the_floor_in_its_own_layout(digits_teacher):
    """The engine runs its teacher in NHWC, the reference loop in NCHW: an overhead against the NCHW floor read 0.85
    for the engine on Fashion-MNIST, below what the issue calls the floor of any step. On the CPU the floor pass
    follows every step of the run it is compared with (a wandering machine speed moves both alike)."""
    from argparse import Namespace

    from dfkd_core.device import memory_layout, prepare_model
    speed = load_benchmark("synthesis_speed")
    args = Namespace(iterations=3, seed=0, snapshot_every=0, repeats=1, variants=["reference", "engine"], profile=False,
                     paired_floor=True)
    rows = {r["variant"]: r for r in speed.benchmark_batch(digits_teacher, 20, args, torch.device("cpu"))}
    engine_layout = memory_layout(prepare_model(copy.deepcopy(digits_teacher.model), torch.device("cpu")))
    assert (rows["reference"]["layout"], rows["engine"]["layout"]) == ("NCHW", engine_layout)
    for row in rows.values():
        assert row["overhead"] == pytest.approx(row["step_ms"] / row["pass_ms"])
        assert row["floor_passes"] == 3   # one after each of the run's steps
        assert row["bn_distance"] > 0 and 0 <= row["accuracy"] <= 1


def test_metrics_read_in_batches_are_the_metrics_read_every_step(digits_teacher):
    """A GPU job reads its metrics every 0.1 s instead of every step: the history and the step
    events must be the same, in order, as when every step is read."""
    every_step = _job(digits_teacher, _config())
    every_step.run()
    batched = _job(digits_teacher, _config())
    batched.metrics_every_s = 3600.0   # read only at the end
    steps_seen = []
    batched.subscribe(lambda e: steps_seen.append(e.step) if e.kind == "step" else None)
    batched.run()
    assert batched.status == "done" and steps_seen == list(range(12))
    def without_times(history):
        return [{k: v for k, v in m.items() if k != "elapsed_s"} for m in history]
    assert without_times(batched.history) == without_times(every_step.history)
    assert torch.equal(batched.images(), every_step.images())


def test_a_nan_found_in_a_batched_read_keeps_the_last_finite_images(digits_teacher, store):
    run = store.create("synthesis", {})
    job = _job(digits_teacher, _config(iterations=30), run=run)
    job.metrics_every_s = 3600.0
    job.snapshot_every = 5    # a snapshot reads what is pending first
    job.subscribe(lambda e: job.update(alpha_tv=1e308) if e.kind == "step" and e.step == 7 else None)
    job.run()
    assert job.status == "failed" and "at step 10" in job.error
    assert len(job.history) == 10 and torch.isfinite(job.images()).all()
    saved = torch.load(run.path("images.pt"), weights_only=True)["images"]
    assert torch.isfinite(saved).all()


def test_compiled_objective_computes_the_eager_objective(digits_teacher):
    eager = _job(digits_teacher, _config(iterations=6, snapshot_every=3))
    eager.run()
    compiled = _job(digits_teacher, _config(iterations=6, snapshot_every=3, compile=True))
    compiled.run()
    assert compiled.status == "done", compiled.error
    assert "torch.compile" in compiled.result["engine"], compiled.result["engine"]
    assert [h["loss_total"] for h in compiled.history] == pytest.approx([h["loss_total"] for h in eager.history],
                                                                       rel=1e-3)
    # The compiled step hands back its BN statistics too: the last snapshot's per-layer chart is the eager one.
    assert len(compiled.latest_bn_statistics) == len(eager.latest_bn_statistics) == 3
    for c, e in zip(compiled.latest_bn_statistics, eager.latest_bn_statistics):
        assert torch.allclose(c["batch_var"], e["batch_var"], rtol=1e-3, atol=1e-5)


def _teacher_passes(job) -> list[int]:
    """A counter of the job's teacher forwards (the job prepares the teacher it was given in place)."""
    calls = [0]
    job.teacher.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_snapshot_makes_no_teacher_pass_of_its_own(digits_teacher):
    """The live view used to pay a teacher pass per snapshot: a third of a step, every step in the app on
    Fashion-MNIST. A snapshot now shows the step's own pass, so snapshots every step cost no forward."""
    counts = {}
    for every in (0, 1):
        job = _job(digits_teacher, _config(iterations=8, snapshot_every=every))
        calls = _teacher_passes(job)
        shots = []
        job.subscribe(lambda e: shots.append(e) if e.kind == "snapshot" else None)
        job.run()
        assert job.status == "done" and len(shots) == (8 if every else 0)
        counts[every] = calls[0]
    assert counts[1] == counts[0], counts


def test_a_snapshot_shows_the_batch_its_step_saw_with_that_pass_s_predictions_and_statistics(digits_teacher):
    """Without jitter or flip the step's view is the batch itself: each snapshot's images are the batch as its step
    began, and its labels and BN statistics are what a fresh teacher pass on those images gives."""
    config = _config(iterations=5, snapshot_every=1, jitter=0, flip=False, amp=False)
    job = _job(digits_teacher, config)
    before, shots = [], []
    original_step = job.step
    job.step = lambda i: (before.append(job.x.detach().clone()), original_step(i))[1]
    job.subscribe(lambda e: shots.append((e, job.latest_bn_statistics)) if e.kind == "snapshot" else None)
    job.run()
    assert job.status == "done" and len(shots) == 5
    teacher = copy.deepcopy(digits_teacher.model).eval()
    names = digits_teacher.dataset.class_names or [str(k) for k in range(10)]
    from dfkd_core.hooks import BNStatisticsRecorder
    for (event, statistics), x in zip(shots, before):
        assert torch.allclose(event.images, digits_teacher.dataset.denormalize(x), atol=1e-6)
        with torch.no_grad(), BNStatisticsRecorder(teacher) as recorder:
            probs = teacher(x).softmax(1)
            fresh = recorder.statistics()
        conf, pred = probs.max(1)
        assert event.labels == [f"{names[t]} → {names[p]} {c:.2f}" for t, p, c in
                                zip(job.targets.tolist(), pred.tolist(), conf.tolist())]
        assert [s["layer"] for s in statistics] == [s.name for s in fresh]
        for shown, truth in zip(statistics, fresh):
            assert torch.allclose(shown["batch_mean"], truth.batch_mean, atol=1e-4)
            assert torch.allclose(shown["batch_var"], truth.batch_var, rtol=1e-3, atol=1e-4)
            assert torch.equal(shown["running_var"], truth.running_var.float())


def test_a_pool_of_rounds_shares_one_objective(digits_teacher):
    """One objective serves several jobs on the same teacher (a pool's rounds), and with it one compilation."""
    teacher = copy.deepcopy(digits_teacher.model)
    objective = InversionObjective(teacher)
    first = ModelInversion(teacher, digits_teacher.dataset, _config(seed=1), objective=objective)
    second = ModelInversion(teacher, digits_teacher.dataset, _config(seed=2), objective=objective)
    first.run(), second.run()
    alone = _job(digits_teacher, _config(seed=2))
    alone.run()
    assert torch.equal(second.images(), alone.images())


def test_a_failed_compilation_runs_eagerly_and_says_so(digits_teacher, monkeypatch):
    def no_compiler(fn, **kw):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return fails
    monkeypatch.setattr(torch, "compile", no_compiler)
    job = _job(digits_teacher, _config(iterations=3, compile=True))
    with pytest.warns(RuntimeWarning, match="runs eagerly"):
        job.run()
    assert job.status == "done" and "torch.compile failed (RuntimeError: no C++ compiler found)" in \
        job.result["engine"]


@pytest.mark.parametrize("named, spin_count", [(None, "300000"), ("PASSIVE", "0"), ("ACTIVE", "30000000000")])
def test_openmp_waits_as_the_environment_says_and_the_process_says_which(named, spin_count):
    """dfkd sets no OpenMP wait policy (jobs share the cores through CPUShare, and passive waiting slowed a job
    alone by 16-27%); one the environment names reaches OpenMP, and thread_policy() reports what is in effect."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=str(ROOT), **({"OMP_WAIT_POLICY": named} if named else {}))
    code = ("import os, dfkd_core, torch; from dfkd_core.device import thread_policy; print(thread_policy()); "
            "print('passed on:', os.environ.get('OMP_WAIT_POLICY'))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"GOMP_SPINCOUNT = '{spin_count}'" in done.stderr
    expected = f"OMP_WAIT_POLICY={named}" if named else "OpenMP's default wait policy"
    assert expected in done.stdout, done.stdout
    assert f"passed on: {named}" in done.stdout, "the processes a job starts wait as this one does"


def test_describe_machine_names_the_vector_isa_and_torch():
    from dfkd_core.device import describe_machine
    line = describe_machine(torch.device("cpu"))
    assert torch.backends.cpu.get_cpu_capability() in line and torch.__version__ in line
    assert f"{os.cpu_count()} cores" in line
