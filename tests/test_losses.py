"""Every loss term of METHODS.md against a hand computation on a tiny tensor."""
import math

import pytest
import torch

from dfkd_core.losses import (BNStatistics, blend_statistics, bn_feature_loss, bn_layer_distance, cross_entropy_loss,
                              disagreement_loss, feature_distillation_loss, js_competition_loss, js_divergence, kd_loss,
                              l2_prior_loss, total_variation_loss)


def test_total_variation_four_neighbour_differences():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # right: (0-1, 2-4) -> √5; down: (0-2, 1-4) -> √13; down-right: 0-4 -> 4; down-left: 1-2 -> 1
    expected = math.sqrt(5) + math.sqrt(13) + 4 + 1
    assert total_variation_loss(x).item() == pytest.approx(expected, rel=1e-6)


def test_total_variation_of_constant_image_is_zero():
    assert total_variation_loss(torch.full((2, 3, 5, 5), 0.7)).item() == 0.0


def test_l2_prior_is_mean_of_per_image_norms():
    x = torch.zeros(2, 1, 1, 2)
    x[0, 0, 0] = torch.tensor([3.0, 4.0])
    assert l2_prior_loss(x).item() == pytest.approx(2.5)


def _stats(name, mean, var, rm, rv):
    t = torch.tensor
    return BNStatistics(name, t(mean), t(var), t(rm), t(rv))


def test_bn_layer_distance_and_first_layer_multiplier():
    first = _stats("a", [1.0, 2.0], [1.0, 1.0], [0.0, 0.0], [1.0, 3.0])     # √5 + 2
    second = _stats("b", [0.0], [4.0], [3.0], [0.0])                        # 3 + 4
    assert bn_layer_distance(first).item() == pytest.approx(math.sqrt(5) + 2)
    total, per_layer = bn_feature_loss([first, second], first_bn_multiplier=10.0)
    assert per_layer.tolist() == pytest.approx([math.sqrt(5) + 2, 7.0])
    assert total.item() == pytest.approx(10 * (math.sqrt(5) + 2) + 7.0)


def test_bn_feature_loss_without_bn_layers_explains():
    with pytest.raises(ValueError, match="at least one BatchNorm"):
        bn_feature_loss([])


def test_js_divergence_hand_values():
    p = torch.tensor([[0.5, 0.5]])
    q = torch.tensor([[1.0, 0.0]])
    assert js_divergence(p, q).item() == pytest.approx(0.75 * math.log(4 / 3), abs=1e-6)
    disjoint = js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert disjoint.item() == pytest.approx(math.log(2), abs=1e-6)


def test_js_competition_loss_is_one_when_models_agree_and_lower_when_they_differ():
    logits = torch.randn(4, 10)
    assert js_competition_loss(logits, logits).item() == pytest.approx(1.0)
    t = torch.tensor([[30.0, 0.0]])
    s = torch.tensor([[0.0, 30.0]])  # at T=3 these are still nearly one-hot and disjoint
    assert js_competition_loss(t, s, temperature=3.0).item() == pytest.approx(1 - math.log(2), abs=1e-3)


def test_kd_loss_hand_value():
    temperature = 4.0
    teacher = torch.tensor([[math.log(3.0) * temperature, 0.0]])  # softmax(z/T) = [0.75, 0.25]
    student = torch.zeros(1, 2)                                    # uniform
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(temperature ** 2 * kl, rel=1e-5)
    assert kd_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)
    per_sample = kd_loss(torch.cat([student, teacher]), torch.cat([teacher, teacher]), temperature, reduction="none")
    assert per_sample.shape == (2,) and per_sample[1].item() == pytest.approx(0.0, abs=1e-6)


def test_feature_distillation_loss_hand_value():
    old = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)    # energy 25 + 0
    student = torch.tensor([[3.0, 5.0], [1.0, -1.0]], requires_grad=True)  # squared errors 1 + 2
    loss = feature_distillation_loss(student, old)
    assert loss.item() == pytest.approx(3.0 / 25.0)
    assert feature_distillation_loss(old, old).item() == 0.0
    assert feature_distillation_loss(2 * student, 2 * old).item() == pytest.approx(3.0 / 25.0)   # scale-free
    loss.backward()
    assert old.grad is None and torch.allclose(student.grad, 2 * (student - old).detach() / 25.0)


def test_cross_entropy_hand_value():
    logits = torch.tensor([[math.log(3.0), 0.0]])
    assert cross_entropy_loss(logits, torch.tensor([0])).item() == pytest.approx(-math.log(0.75), rel=1e-6)


def test_blended_statistics_mix_the_batch_with_the_memory():
    s = BNStatistics("bn1", torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), torch.zeros(2), torch.ones(2))
    [b] = blend_statistics([s], [(torch.tensor([5.0, 7.0]), torch.tensor([4.0, 0.0]))], 0.75)
    # 0.25 · batch + 0.75 · memory
    assert b.batch_mean.tolist() == [4.0, 6.0] and b.batch_var.tolist() == [3.5, 0.5]
    assert b.running_mean.tolist() == [0.0, 0.0] and b.running_var.tolist() == [1.0, 1.0]
    assert blend_statistics([s], None, 0.75)[0] is s and blend_statistics([s], [(s.batch_mean, s.batch_var)], 0)[0] is s


def test_disagreement_is_minus_kl_on_the_images_where_student_and_teacher_agree():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    student = torch.tensor([[1.0, 0.0], [3.0, 0.0]])   # agrees on image 0 (class 0), disagrees on image 1
    p_t, p_s = torch.softmax(teacher[0], 0), torch.softmax(student[0], 0)
    kl = float((p_t * (p_t.log() - p_s.log())).sum())
    assert disagreement_loss(student, teacher).item() == pytest.approx(-kl / 2, rel=1e-6)   # mean over both images
    assert disagreement_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def test_generator_loss_by_hand():
    """L_G (methods.md#generator) on one 2x2 image x = [[0, 1], [2, 3]] through a BN layer (running μ 0, σ² 1) and a
    zero linear head: CE = ln 2 (two equal logits); R_TV = ‖(1, 1)‖ + ‖(2, 2)‖ + |3| + |1| = √2 + √8 + 4; ‖x‖₂ = √14;
    the BN input's μ = 1.5 and biased σ² = 14/4 − 1.5² = 1.25, so the moment term is
    |1.5 − 0| + |1.25 − 1| = 1.75 with every layer weighted 1 (the generator's default), 17.5 with w₁ = 10."""
    from dfkd_core.hooks import BNStatisticsRecorder
    from dfkd_core.synthesis.generator import generator_loss
    teacher = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    torch.nn.init.zeros_(teacher[2].weight)
    torch.nn.init.zeros_(teacher[2].bias)
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    weights = {"lambda_tv": 0.1, "lambda_l2": 0.01, "lambda_bn": 2.0}
    total, terms, logits = generator_loss(teacher, x, torch.tensor([0]), BNStatisticsRecorder(teacher), **weights)
    tv = math.sqrt(2) + math.sqrt(8) + 3 + 1
    assert terms["ce"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert terms["tv"].item() == pytest.approx(tv, abs=1e-5)
    assert terms["l2"].item() == pytest.approx(math.sqrt(14), abs=1e-5)
    assert terms["bn_feature"].item() == pytest.approx(1.75, abs=1e-6)
    assert total.item() == pytest.approx(math.log(2) + 0.1 * tv + 0.01 * math.sqrt(14) + 2.0 * 1.75, abs=1e-5)
    _, first_weighted, _ = generator_loss(teacher, x, torch.tensor([0]), BNStatisticsRecorder(teacher), **weights,
                                          first_bn_multiplier=10.0)
    assert first_weighted["bn_feature"].item() == pytest.approx(17.5, abs=1e-5)
    assert logits.shape == (1, 2)
