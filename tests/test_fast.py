"""`fast` (a meta-generator adapted per batch, dfkd_core/distill/fast.py) on digits: it runs end to end, every round's
batch joins the pool, the meta-generator learns, and its student beats KD on noise with the same student steps."""
import copy

import pytest
import torch

from dfkd_core.distill import DistillConfig, DistillJob

OPTIONS = {"synthesis_batch": 100, "g_steps": 4, "warmup_rounds": 1, "pretrain_steps": 100, "lr_g": 1e-3,
           "lr_z": 0.01}


def _config(**overrides) -> DistillConfig:
    values = dict(method="fast", images=400, kd_steps_per_round=30, steps=150, generator_width=64, generator_lr=3e-3, eval_every=50,
                  device="cpu", options=OPTIONS)
    return DistillConfig(**{**values, **overrides})


def test_fast_makes_its_pool_in_rounds_and_beats_noise(digits_teacher):
    job = DistillJob(copy.deepcopy(digits_teacher), _config())
    assert job.method.rounds == 4 and job.method.student_steps() == 3 * 30 + 150
    assert job.total_steps == 100 + 4 * 4 + 240
    job.run()
    assert job.status == "done", job.error
    assert len(job.pool) == 400 and job.result["images_synthesized"] == 400
    assert job.trainer.steps_done == 240
    phases = [h["phase"] for h in job.history]
    assert phases.count("generator") == 100 and phases.count("synthesis") == 16
    rounds = [h for h in job.history if h["phase"] == "synthesis"]
    assert "fast_loss_disagreement" not in rounds[0] and "fast_loss_disagreement" in rounds[-1]   # after warm-up
    pretrain = [h["fast_loss_ce"] for h in job.history if h["phase"] == "generator"]
    assert sum(pretrain[-10:]) < 0.7 * sum(pretrain[:10])   # the meta-generator learns the teacher's classes

    noise = DistillJob(copy.deepcopy(digits_teacher), DistillConfig(method="noise", steps=240, eval_every=80,
                                                                    device="cpu"))
    noise.run()
    assert job.result["student_accuracy"] > noise.result["student_accuracy"] + 0.1, \
        (job.result["student_accuracy"], noise.result["student_accuracy"])


@pytest.mark.parametrize("options, named", [({"g_steps": 0}, "g_steps"), ({"bn_momentum": 1.0}, "bn_momentum"),
                                            ({"lr_z": float("nan")}, "lr_z"), ({"warmup_rounds": 4}, "warmup_rounds")])
def test_fast_refuses_bad_options_before_a_run(digits_teacher, options, named):
    with pytest.raises(ValueError, match=named):
        DistillJob(digits_teacher, _config(options={**OPTIONS, **options}))


def test_a_fast_run_resumes_where_it_stopped(digits_teacher):
    short = dict(steps=40, options={**OPTIONS, "pretrain_steps": 20})   # 20 generator steps, then round 1: 20-53
    reference = DistillJob(copy.deepcopy(digits_teacher), _config(**short))
    reference.run()
    stopped = DistillJob(copy.deepcopy(digits_teacher), _config(**short))
    stopped.subscribe(lambda e: stopped.cancel() if e.kind == "step" and e.step == 50 else None)
    stopped.run()
    assert stopped.status == "cancelled"
    held = stopped._held   # the state at the start of the round it stopped in: a resume repeats that round
    assert held is not None
    resumed = DistillJob(copy.deepcopy(digits_teacher), _config(**short), resume=held)
    resumed.run()
    assert resumed.status == "done", resumed.error
    for a, b in zip(resumed.student.state_dict().values(), reference.student.state_dict().values()):
        assert torch.equal(a, b)
