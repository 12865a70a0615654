"""BSS generation (methods.md#bss) on tiny constructed cases with hand-derived answers, then on a real digits
teacher."""
import math

import pytest
import torch

from dfkd_core.distill.bss_loss import bss_alpha, bss_beta, bss_kd_loss, bss_term
from dfkd_core.synthesis.bss import (ACCEPTED, REJECTED_MAX_STEPS, REJECTED_THIRD_CLASS, AttackSettings,
                                     boundary_attack_loss, boundary_supporting_samples, sample_target_classes,
                                     select_base_samples, target_class_weights)

from hand_models import LinearClassifier, row_images as images

EPS = 1e-4


def predicted_crossing_step(l0: float, eta: float, eps: float = EPS) -> int:
    """For linear L_a one step gives L' = L − η(L + ε), so L_t + ε = (1 − η)^t (L_0 + ε): the attack is accepted
    at the first t with (1 − η)^t (L_0 + ε) − ε < 0."""
    t = 0
    while (1 - eta) ** t * (l0 + eps) - eps >= 0:
        t += 1
    return t


@pytest.mark.parametrize("eta", [0.3, 0.5, 1.0])
def test_attack_crosses_linear_boundary_in_predicted_steps(eta):
    # Two classes, L_a(x) = f_0 − f_1 = 2·x_1 − x_2 + 0.5, so ||∇L_a||² = 5 and the step count depends only on L_0.
    model = LinearClassifier([[2.0, -1.0, 0.0], [0.0, 0.0, 0.0]], [0.5, 0.0])
    x = images([[0.25, 0.0, 7.0], [1.0, 0.5, -3.0], [2.75, 0.0, 1.0]])   # L_0 = 1, 2, 6
    l0 = [1.0, 2.0, 6.0]
    base, target = torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.long)
    result = boundary_supporting_samples(model, x, base, target, eta=eta, eps=EPS, max_steps=60,
                                         record_trajectory=True)
    expected = [predicted_crossing_step(v, eta) for v in l0]
    if eta == 0.3:   # closed form of the same count: t* = ⌊ln((L_0 + ε)/ε) / −ln(1 − η)⌋ + 1 (no ties here)
        assert expected == [math.floor(math.log((v + EPS) / EPS) / -math.log(1 - eta)) + 1 for v in l0]
    assert result.outcome.tolist() == [ACCEPTED] * 3
    assert result.crossed_step.tolist() == expected == result.steps.tolist()
    for i, (v, t_star) in enumerate(zip(l0, expected)):
        for t in range(61):   # L_a follows the recurrence, then the sample stays frozen where it crossed
            closed_form = (1 - eta) ** min(t, t_star) * (v + EPS) - EPS
            assert result.loss_trajectory[t, i].item() == pytest.approx(closed_form, abs=1e-10)
        assert torch.equal(result.trajectory[t_star, i], result.trajectory[-1, i])
        assert torch.equal(result.trajectory[t_star, i], result.adversarial[i])
    # The perturbation runs along −∇L_a and its length is the L_a it removed divided by ||∇L_a||.
    pert = (result.adversarial - x).flatten(1)
    direction = torch.tensor([-2.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(5)
    for i, v in enumerate(l0):
        length = (v - result.final_loss[i].item()) / math.sqrt(5)
        assert pert[i].tolist() == pytest.approx((length * direction).tolist())
    if eta == 1.0:   # the full Newton step lands exactly ε past the boundary
        assert result.final_loss.tolist() == pytest.approx([-EPS] * 3, abs=1e-12)


def test_official_step_divides_by_the_norm_not_its_square():
    # ||∇L_a|| = 2: with power 1 one step removes η (L + ε) · ||∇L_a|| = 0.1 · 3.0001 · 2 from L_0 = 3.
    model = LinearClassifier([[2.0], [0.0]], [0.0])
    result = boundary_supporting_samples(model, images([[1.5]]), torch.tensor([0]), torch.tensor([1]), eta=0.1,
                                         max_steps=1, gradient_norm_power=1, record_trajectory=True)
    assert result.loss_trajectory[1, 0].item() == pytest.approx(3.0 - 0.1 * 3.0001 * 2, abs=1e-12)


def test_reject_when_the_path_enters_a_third_class():
    # 1-D input: f = (0, 2(x − 1), x − 2). From x = 0 (class 0) toward k = 2 the path passes class 1 (x > 1)
    # before L_a = 2 − x turns negative (x > 2). x_t = 2 − L_t, L_t = 0.7^t (2 + ε) − ε: x_1 ≈ 0.60, x_2 ≈ 1.02.
    model = LinearClassifier([[0.0], [2.0], [1.0]], [0.0, -2.0, -2.0])
    result = boundary_supporting_samples(model, images([[0.0]]), torch.tensor([0]), torch.tensor([2]), eta=0.3)
    assert result.outcome.tolist() == [REJECTED_THIRD_CLASS]
    assert result.steps.tolist() == [2] and result.crossed_step.tolist() == [-1]
    assert result.final_prediction.tolist() == [1]
    assert result.adversarial.item() == pytest.approx(2 - (0.49 * (2 + EPS) - EPS))
    assert result.counts() == {"accepted": 0, "rejected_third_class": 1, "rejected_max_steps": 0}


def test_reject_after_max_steps_with_tiny_eta():
    model = LinearClassifier([[1.0], [0.0]], [0.0])
    result = boundary_supporting_samples(model, images([[1.0]]), torch.tensor([0]), torch.tensor([1]), eta=1e-3,
                                         max_steps=10)
    assert result.outcome.tolist() == [REJECTED_MAX_STEPS] and result.steps.tolist() == [10]
    assert result.final_loss.item() == pytest.approx(0.999 ** 10 * (1 + EPS) - EPS, abs=1e-12)


def test_pixel_clamping_per_channel():
    # Two channels with different valid ranges; the boundary (x_0 + x_1 = 3) lies outside both, so the attack
    # presses against the bounds and can never cross.
    model = LinearClassifier([[-1.0, -1.0], [0.0, 0.0]], [3.0, 0.0])
    x = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    low = torch.tensor([-0.5, -1.0]).view(1, 2, 1, 1)
    high = torch.tensor([0.5, 1.0]).view(1, 2, 1, 1)
    result = boundary_supporting_samples(model, x, torch.tensor([0]), torch.tensor([1]), eta=1.0, max_steps=5,
                                         pixel_bounds=(low, high), record_trajectory=True)
    assert result.outcome.tolist() == [REJECTED_MAX_STEPS]
    assert (result.trajectory >= low.double() - 1e-12).all() and (result.trajectory <= high.double() + 1e-12).all()
    assert result.adversarial.flatten().tolist() == pytest.approx([0.5, 1.0])


def test_attack_rejects_bad_arguments():
    model = LinearClassifier([[1.0], [0.0]], [0.0])
    with pytest.raises(ValueError, match="k ≠ b"):
        boundary_supporting_samples(model, images([[1.0]]), torch.tensor([0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="NaN"):
        boundary_supporting_samples(model, images([[float("nan")]]), torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="samples"):
        boundary_supporting_samples(model, images([[1.0]]), torch.tensor([0, 0]), torch.tensor([1, 1]))


def test_select_base_samples_both_correct_largest_gap():
    teacher = torch.tensor([[.7, .2, .1], [.6, .3, .1], [.2, .7, .1], [.5, .4, .1], [.1, .1, .8], [.2, .5, .3]])
    student = torch.tensor([[.5, .3, .2], [.6, .3, .1], [.3, .6, .1], [.3, .6, .1], [.2, .2, .6], [.2, .5, .3]])
    labels = torch.tensor([0, 0, 1, 0, 2, 2])
    # Sample 3: student wrong; sample 5: both wrong. Gaps: s0 .04+.01+.01 = .06, s1 0, s2 .02, s4 .06.
    assert select_base_samples(teacher, student, labels, 3).tolist() == [0, 4, 2]
    assert select_base_samples(teacher, student, labels, 10).tolist() == [0, 4, 2, 1]


def test_target_classes_follow_teacher_probabilities():
    probs = torch.tensor([[.5, .3, .2]]).repeat(20000, 1)
    weights = target_class_weights(probs[:1], torch.tensor([0]))
    assert weights.tolist()[0] == pytest.approx([0.0, 0.6, 0.4])
    targets, p = sample_target_classes(probs, torch.zeros(20000, dtype=torch.long),
                                       torch.Generator().manual_seed(0))
    assert (targets != 0).all()
    assert (targets == 1).float().mean().item() == pytest.approx(0.6, abs=0.015)
    assert torch.equal(p, torch.where(targets == 1, 0.6, 0.4).float())
    # A teacher so sure of b that every other probability is exactly 0: uniform over k ≠ b, not 0/0.
    assert target_class_weights(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([1])).tolist() == [[.5, 0, .5]]


def test_boundary_attack_loss_by_hand():
    logits = torch.tensor([[2.0, 5.0, -1.0], [0.0, 1.0, 3.0]])
    assert boundary_attack_loss(logits, torch.tensor([1, 2]), torch.tensor([2, 0])).tolist() == [6.0, 3.0]


def test_attack_on_real_digits_teacher(digits_teacher):
    from dfkd_core.data import load_split
    from dfkd_core.training import predict_logits

    test = load_split("digits", "test")
    x, y = test.normalized(slice(0, 80)), test.labels[:80]
    probs = predict_logits(digits_teacher.model, x).softmax(1)
    keep = probs.argmax(1) == y
    x, y, probs = x[keep][:40], y[keep][:40], probs[keep][:40]
    targets, _ = sample_target_classes(probs, y, torch.Generator().manual_seed(0))
    low, high = digits_teacher.dataset.pixel_bounds()
    result = AttackSettings(eta=1.0, max_steps=20).build(digits_teacher.model, (low, high)).attack(x, y, targets)
    counts = result.counts()
    assert sum(counts.values()) == len(y) and counts["accepted"] >= 5, counts
    after = predict_logits(digits_teacher.model, result.adversarial)
    ok = result.accepted
    assert torch.equal(after.argmax(1)[ok], targets[ok])
    third = result.outcome == REJECTED_THIRD_CLASS
    assert ((after.argmax(1)[third] != y[third]) & (after.argmax(1)[third] != targets[third])).all()
    assert (result.adversarial >= low - 1e-6).all() and (result.adversarial <= high + 1e-6).all()
    assert digits_teacher.model.training is False


# ------------------------------------------------------------------ BSS-KD loss and schedules

def test_official_schedules_by_hand():
    assert (bss_alpha(0, 80), bss_beta(0, 80)) == (4.0, 2.0)
    assert bss_alpha(40, 80) == 2.5 and bss_beta(40, 80) == pytest.approx(2 / 3)
    assert bss_beta(60, 80) == 0.0 and bss_beta(70, 80) == 0.0
    assert bss_alpha(80, 80) == 1.0


def test_bss_kd_loss_by_hand():
    # Real sample: student and teacher logits equal → KD = 0, CE of logits (0, 0) = ln 2.
    # BSS at T = 1: p_T = (3/4, 1/4), p_S = (1/2, 1/2): KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308120.
    zeros = torch.zeros(1, 2)
    bss_teacher = torch.tensor([[math.log(3.0), 0.0]])
    out = bss_kd_loss(zeros, torch.tensor([0]), zeros, zeros, bss_teacher, torch.tensor([0.5]),
                      alpha=3.0, beta=2.0, temperature=1.0)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert out["kd"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["bss"].item() == pytest.approx(0.5 * kl, abs=1e-6)
    assert out["total"].item() == pytest.approx(math.log(2) + 2.0 * 0.5 * kl, abs=1e-6)
    # Same teacher distribution at T = 2 (logits doubled): the T² factor multiplies KL by 4.
    at_t2 = bss_term(zeros, 2 * bss_teacher, torch.tensor([1.0]), 1, temperature=2.0)
    assert at_t2.item() == pytest.approx(4 * kl, abs=1e-6)
    # Two BSS of one base sample (all k attacked, weights p_n^k): summed with weights, divided by 1 base sample.
    two = bss_term(torch.zeros(2, 2), bss_teacher.repeat(2, 1), torch.tensor([0.25, 0.75]), 1, temperature=1.0)
    assert two.item() == pytest.approx(kl, abs=1e-6)
    # No accepted BSS: the term is 0, not NaN.
    none = bss_kd_loss(zeros, torch.tensor([0]), zeros, torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0),
                       alpha=1.0, beta=2.0)
    assert none["bss"].item() == 0.0 and none["total"].item() == pytest.approx(math.log(2))


def test_boundary_supporting_batch_feeds_bss_kd_loss(digits_teacher, digits_student_checkpoint):
    from dfkd_core.data import load_split
    from dfkd_core.models import load_checkpoint
    from dfkd_core.synthesis.bss import boundary_supporting_batch

    train = load_split("digits", "train")
    x, y = train.normalized(slice(0, 64)), train.labels[:64]
    teacher, student = digits_teacher.model, load_checkpoint(digits_student_checkpoint).model
    with torch.no_grad():
        t_logits, s_logits = teacher(x), student(x)
    batch = boundary_supporting_batch(teacher, x, y, t_logits, s_logits, n_base=16,
                                      settings=AttackSettings(eta=1.0, max_steps=20),
                                      pixel_bounds=digits_teacher.dataset.pixel_bounds(),
                                      generator=torch.Generator().manual_seed(0))
    both_correct = int(((t_logits.argmax(1) == y) & (s_logits.argmax(1) == y)).sum())
    assert batch.n_base_samples == min(16, both_correct) == sum(batch.counts.values())
    assert len(batch.samples) == batch.counts["accepted"] == len(batch.weights)
    if len(batch.samples):
        assert torch.equal(teacher(batch.samples).argmax(1), batch.target_class)
        assert (batch.target_class != y[batch.base_index]).all()
    with torch.no_grad():
        out = bss_kd_loss(student(x), y, t_logits, student(batch.samples), teacher(batch.samples), batch.weights,
                          alpha=bss_alpha(0, 10), beta=bss_beta(0, 10), n_base_samples=batch.n_base_samples)
    assert torch.isfinite(out["total"]) and out["bss"] >= 0
