"""CMI's contrastive diversity term (dfkd_core/synthesis/contrastive.py) against hand computations, and in a run."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dfkd_core.models import create_model
from dfkd_core.synthesis import ModelInversion, SynthesisConfig
from dfkd_core.synthesis.contrastive import (ContrastiveMemory, contrastive_loss, draw_crops,
                                             instance_channel_means, resized_crop)


def test_instance_channel_means_by_hand():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]], [[0.0, 0.0], [0.0, 4.0]]]])   # one image, two channels
    assert torch.equal(instance_channel_means(x), torch.tensor([[4.0, 1.0]]))


def test_contrastive_loss_by_hand():
    # Orthogonal unit vectors at τ = 1: each row's logits are (1, 0), the label the 1: CE = log(1 + e^-1).
    eye = torch.eye(2)
    row = math.log(1 + math.exp(-1))
    assert contrastive_loss(eye, eye, current=2, temperature=1.0).item() == pytest.approx(row)
    # With the second row from the bank, the batch's mean and the bank's mean are summed.
    assert contrastive_loss(eye, eye, current=1, temperature=1.0).item() == pytest.approx(2 * row)
    # τ = 0.5 doubles the logits: log(1 + e^-2).
    assert contrastive_loss(eye, eye, 2, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # A local view that matches another image's global view is the loss's worst case for that row.
    swapped = eye.flip(0)
    assert contrastive_loss(swapped, eye, 2, 1.0).item() == pytest.approx(math.log(1 + math.exp(1)))


def test_only_the_local_side_gets_gradients():
    local = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    global_ = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    contrastive_loss(local, global_, 4, 0.2).backward()
    assert local.grad is not None and local.grad.abs().sum() > 0 and global_.grad is None


def test_full_size_crops_without_flip_are_the_identity_and_flips_mirror():
    x = torch.randn(8, 1, 6, 6)
    same = resized_crop(x, draw_crops(8, torch.Generator().manual_seed(0), scale=(1.0, 1.0), flip=False))
    assert torch.allclose(same, x, atol=1e-5)
    flipped = resized_crop(x, draw_crops(64 // 8, torch.Generator().manual_seed(1), scale=(1.0, 1.0), flip=True))
    mirrored = [torch.allclose(f, i.flip(-1), atol=1e-5) for f, i in zip(flipped, x)]
    kept = [torch.allclose(f, i, atol=1e-5) for f, i in zip(flipped, x)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored)


def test_crops_stay_inside_the_image_and_cover_the_asked_share():
    theta = draw_crops(500, torch.Generator().manual_seed(0), scale=(0.25, 1.0))
    side, centre_x, centre_y = theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2]
    assert torch.equal(theta[:, 0, 0].abs(), side)
    assert (side.square() >= 0.25 - 1e-6).all() and (side.square() <= 1 + 1e-6).all()
    assert (centre_x.abs() + side <= 1 + 1e-6).all() and (centre_y.abs() + side <= 1 + 1e-6).all()
    # A quarter-area crop of an image whose top-left quadrant alone is bright, taken at that quadrant: bright but
    # for the last row and column, which interpolate into the dark neighbour (bilinear sampling at the crop's edge).
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4, :4] = 1.0
    quadrant = torch.tensor([[[0.5, 0.0, -0.5], [0.0, 0.5, -0.5]]])
    crop = resized_crop(x, quadrant)
    assert torch.allclose(crop[..., :7, :7], torch.ones(1, 1, 7, 7)) and (crop[..., 7, :] < 1).all()


def test_memory_refuses_a_teacher_without_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm"):
        ContrastiveMemory(create_model("plaincnn3_w32", 10, 1, 8), "cpu")


def test_the_bank_keeps_the_newest_rows(digits_teacher):
    teacher = copy.deepcopy(digits_teacher.model).eval()
    memory, generator = ContrastiveMemory(teacher, "cpu", bank_size=30), torch.Generator().manual_seed(0)
    first, second = torch.randn(20, 1, 8, 8), torch.randn(20, 1, 8, 8)
    memory.remember(teacher, first, generator)
    memory.remember(teacher, second, generator)
    dim = sum(m.num_features for m in memory.layers)
    assert memory.bank.shape == (30, 2 * dim)
    _, newest = memory.features(teacher, second)
    assert torch.allclose(memory.bank[-20:, dim:], newest, atol=1e-5)   # global features of the second batch
    # The local view is cropped as the run's steps crop: unmirrored when the run does not flip (digits).
    memory.remember(teacher, first, torch.Generator().manual_seed(5), flip=False)
    crops = draw_crops(20, torch.Generator().manual_seed(5), flip=False)
    assert (crops[:, 0, 0] > 0).all()
    _, local = memory.features(teacher, resized_crop(first, crops))
    assert torch.allclose(memory.bank[-20:, :dim], local, atol=1e-5)


def _inversion(teacher, **kw):
    config = SynthesisConfig.preset("deepinversion", "digits", **{"batch_size": 50, "iterations": 150, **kw})
    return ModelInversion(copy.deepcopy(teacher.model), teacher.dataset, config)


def test_inversion_with_the_contrastive_term_logs_it_and_still_fools_the_teacher(digits_teacher):
    job = _inversion(digits_teacher, alpha_cr=0.8)
    job.run()
    assert job.status == "done", job.error
    contrast = [m["loss_contrast"] for m in job.history]
    # The images and the head both minimize R_cr: from chance (log of the batch size) it falls by more than half.
    assert contrast[0] == pytest.approx(math.log(50), rel=0.1) and contrast[-1] < 0.5 * contrast[0]
    assert job.result["teacher_accuracy"] >= 0.9
    assert "CMI contrastive term" in job.result["engine"]
    assert job.objective.contrast.bank.shape[0] == 50   # the finished batch is remembered for later rounds


def test_the_contrastive_term_spreads_each_class(digits_teacher):
    """Within a class, images are less alike (cosine of the teacher's BN-input features) with R_cr than without."""
    def within_class_similarity(job):
        job.run()
        memory = job.objective.contrast or ContrastiveMemory(job.teacher, "cpu")
        with torch.no_grad():
            features = F.normalize(memory.features(job.teacher, job.images())[1], dim=1)
        same = (job.targets[:, None] == job.targets[None]) & ~torch.eye(len(job.targets), dtype=torch.bool)
        return (features @ features.T)[same].mean().item()
    assert within_class_similarity(_inversion(digits_teacher, alpha_cr=2.0)) < within_class_similarity(
        _inversion(digits_teacher))


def test_a_negative_weight_or_temperature_is_refused():
    with pytest.raises(ValueError, match="alpha_cr"):
        SynthesisConfig(alpha_cr=-1.0).validate()
    with pytest.raises(ValueError, match="contrast_temperature"):
        SynthesisConfig(contrast_temperature=0.0).validate()


def test_a_pools_rounds_share_one_bank(digits_teacher):
    """Round r's images are contrasted with every earlier round's: the bank ends holding the whole pool."""
    from dfkd_core.distill import DistillConfig, DistillJob
    config = DistillConfig(method="deepinversion", images=120, steps=5, eval_every=5,
                           synthesis={"iterations": 10, "batch_size": 50, "alpha_cr": 0.8})
    job = DistillJob(copy.deepcopy(digits_teacher), config)
    job.run()
    assert job.status == "done", job.error
    assert job.method.objective().contrast.bank.shape[0] == 120 == len(job.pool)
    assert any("inv_loss_contrast" in m for m in job.history)
