"""The capped class term of model inversion: hand computations, the per-image caps, and what it does to a batch."""
import math

import pytest
import torch

from dfkd_core.losses import capped_cross_entropy_loss, cross_entropy_loss
from dfkd_core.synthesis import ModelInversion, SynthesisConfig
from dfkd_core.synthesis.inversion import confidence_caps


def test_capped_ce_against_a_hand_computation():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])   # p_0 = 0.75 for image 0, p_0 = 0.5 for image 1
    targets = torch.tensor([0, 0])
    # image 0: −log 0.75 + log 0.5 < 0 → 0 (the teacher is already past its cap); image 1: −log 0.5 + log 0.9
    caps = torch.tensor([0.5, 0.9])
    expected = (0.0 + (math.log(2.0) + math.log(0.9))) / 2
    assert capped_cross_entropy_loss(logits, targets, caps).item() == pytest.approx(expected, rel=1e-6)


def test_capped_ce_with_every_cap_at_one_is_the_plain_ce():
    torch.manual_seed(0)
    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    plain = cross_entropy_loss(logits, targets)
    assert capped_cross_entropy_loss(logits, targets, torch.ones(6)).item() == pytest.approx(plain.item(), rel=1e-6)


def test_an_image_past_its_cap_gets_no_gradient():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]], requires_grad=True)
    capped_cross_entropy_loss(logits, torch.tensor([0, 0]), torch.tensor([0.5, 0.9])).backward()
    assert logits.grad[0].abs().sum() == 0 and logits.grad[1].abs().sum() > 0


def test_caps_are_spread_evenly_over_each_class_images():
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    caps = confidence_caps(targets, 0.5)
    assert caps[[0, 3, 6]].tolist() == pytest.approx([0.5, 0.75, 1.0])   # class 0: three images
    assert caps[[1, 4]].tolist() == pytest.approx([0.5, 1.0])
    assert confidence_caps(torch.tensor([0, 1]), 0.4).tolist() == pytest.approx([0.7, 0.7])   # one each: the middle
    assert confidence_caps(targets, 1.0) is None   # plain CE


@pytest.mark.parametrize("cap", [0.0, -0.5, 1.5, float("nan")])
def test_a_cap_outside_zero_one_is_refused(cap):
    with pytest.raises(ValueError, match="confidence_cap"):
        SynthesisConfig(confidence_cap=cap).validate()


def _class_probabilities(job):
    with torch.no_grad(), job.recorder:
        p = job.teacher(job.x.detach()).softmax(1)
    return p.gather(1, job.targets[:, None]).flatten()


def test_low_caps_leave_the_teacher_less_sure_than_plain_ce(digits_teacher):
    """The same noise and augmentations: the images whose cap is low end with a lower teacher probability of their
    class than the same images inverted with the plain CE term."""
    def invert(cap):
        job = ModelInversion(digits_teacher.model, digits_teacher.dataset,
                             SynthesisConfig.preset("deepinversion", "digits", batch_size=60, iterations=60,
                                                    alpha_f=0.3, confidence_cap=cap, snapshot_every=0))
        job.run()
        assert job.status == "done", job.error
        return job, _class_probabilities(job)

    plain_job, plain = invert(1.0)
    capped_job, capped = invert(0.2)
    low = capped_job.confidence <= 0.45
    assert plain_job.confidence is None and low.sum() >= 10
    assert capped[low].mean() < plain[low].mean() - 0.1
    assert "cap=0.2" in capped_job.config.title()


def test_the_cap_can_change_while_the_job_runs(digits_teacher):
    job = ModelInversion(digits_teacher.model, digits_teacher.dataset,
                         SynthesisConfig.preset("deepinversion", "digits", batch_size=20, iterations=4,
                                                snapshot_every=0))
    job.setup()
    job.step(0)
    assert job.confidence is None
    job.apply_updates({"confidence_cap": 0.5})
    assert job.confidence.min().item() == pytest.approx(0.5) and job.confidence.max().item() == pytest.approx(1.0)
    job.step(1)
