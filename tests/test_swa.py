"""Weight averaging of the student (`swa_from`): the average is the mean of the weights of the steps it covers, it
does not change the training it watches, and a run reports the average as its student with the last iterate
beside it."""
import copy
import math

import pytest
import torch

from dfkd_core.data import dataset_info
from dfkd_core.distill import DistillConfig
from dfkd_core.distill.results import load_test_hits
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.models import create_model, load_checkpoint
from hand_models import run_distill


def test_the_average_is_the_mean_of_each_step_weights_from_its_start(digits_teacher):
    info = dataset_info("digits")
    torch.manual_seed(0)
    student = create_model("bncnn3_w16", 10, 1, 8)
    config = DistillConfig(method="noise", swa_from=0.5, batch_size=16)
    trainer = StudentTrainer(student, copy.deepcopy(digits_teacher.model).eval(), config, info,
                             torch.device("cpu"), total_steps=7)
    assert trainer.average_from == math.ceil(0.5 * 7) == 4
    seen = []
    generator = torch.Generator().manual_seed(0)
    for step in range(7):
        trainer.train_step(torch.randn(16, 1, 8, 8, generator=generator))
        assert (trainer.averaged_student() is None) == (step + 1 <= 4)
        if step + 1 > 4:   # steps 5, 6 and 7 join the average
            seen.append({k: v.detach().clone() for k, v in student.state_dict().items()})
    averaged = trainer.averaged_student().state_dict()
    for name, value in averaged.items():
        if value.is_floating_point():   # weights and BN running statistics alike
            expected = torch.stack([s[name] for s in seen]).mean(0)
            assert torch.allclose(value, expected, atol=1e-6), name
    assert int(trainer.average.n_averaged) == 3


def test_a_run_reports_the_average_as_its_student_and_the_plain_run_as_its_last_iterate(digits_teacher, store):
    settings = dict(steps=60, eval_every=30, batch_size=32)
    plain = run_distill(digits_teacher, "noise", **settings)
    averaged = run_distill(digits_teacher, "noise", store=store, swa_from=0.5, **settings)
    result = averaged.result
    # The average only watches: the last iterate is the plain run's student, image for image.
    assert result["student_last_accuracy"] == plain.result["student_accuracy"]
    hits = load_test_hits(averaged.run_record)["hits"]
    assert set(hits) >= {"student", "student_last", "teacher"}
    assert result["student_accuracy"] == pytest.approx(hits["student"].float().mean().item())
    gain = result["swa"]["gain_over_last_ci"]
    assert gain["estimate"] == pytest.approx(result["student_accuracy"] - result["student_last_accuracy"])
    assert gain["low"] <= gain["estimate"] <= gain["high"]
    assert result["swa"]["from_step"] == 30 and result["swa"]["models"] == 30
    # The saved student is the average.
    saved = load_checkpoint(averaged.run_record.dir / "model.pt")
    assert saved.metrics["test_accuracy"] == result["student_accuracy"]
    assert "student_last_accuracy" not in plain.result and "swa" not in plain.result


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_swa_from_outside_zero_one_is_refused(value):
    with pytest.raises(ValueError, match="swa_from"):
        DistillConfig(swa_from=value).validate()
