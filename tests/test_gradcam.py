"""Grad-CAM (methods.md#grad-cam) on a hand-built model whose answer is known, overlap scores by hand, clean model
state, and `dfkd gradcam`."""
import copy
import json
import math
import re

import pytest
import torch
import torch.nn as nn

from dfkd_core.analysis.gradcam import (AttentionComparator, attention_correlation, compare_attention, grad_cam,
                                        mismatched_scores, paired_differences, top_region_iou)
from dfkd_core.models import create_model


class LeftHalfMask(nn.Module):
    """Zeroes the right half of a feature map: the model can only use the left half of the image."""

    def forward(self, x):
        mask = torch.ones_like(x)
        mask[..., x.shape[-1] // 2:] = 0
        return x * mask


class LeftHalfNet(nn.Module):
    """logit_k = Σ_c w_kc Σ_hw A_c with A = mask(conv1x1(x)): ∂logit_k/∂A_c = w_kc everywhere, so the Grad-CAM
    weights are α_c = w_kc and the map is ReLU(Σ_c w_kc A_c), exactly zero on the right half."""

    def __init__(self, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.mask = LeftHalfMask()
        self.pool = nn.AvgPool2d(2) if pool else nn.Identity()
        self.head = nn.Linear(2, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))

    def forward(self, x):
        return self.head(self.pool(self.mask(self.conv(x))).sum(dim=(2, 3)))


def test_grad_cam_of_hand_built_model_equals_formula_and_ignores_right_half():
    x = torch.tensor([[[[1.0, -2.0, 3.0, 4.0],
                        [0.5, 1.0, -1.0, 2.0]]]])
    model = LeftHalfNet()
    # class 0: w = (2, 0) -> map = ReLU(2 · x) on the left half, 0 on the right.
    expected0 = torch.tensor([[[2.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 0.0]]])
    assert torch.allclose(grad_cam(model, x, 0, "mask"), expected0)
    # class 1: w = (0, 1) -> map = ReLU(-x): 2 where x = -2, 0 elsewhere on the left.
    expected1 = torch.tensor([[[0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    assert torch.allclose(grad_cam(model, x, torch.tensor([1]), "mask"), expected1)
    # class 2: w = (1, 1) -> A_0 + A_1 = x - x = 0 everywhere.
    assert torch.equal(grad_cam(model, x, 2, "mask"), torch.zeros(1, 2, 4))


def test_grad_cam_is_upsampled_to_the_input_size():
    model = LeftHalfNet(pool=True)
    x = torch.rand(3, 1, 8, 8) + 0.1
    maps = grad_cam(model, x, 0, "pool", interpolate_mode="nearest")
    assert maps.shape == (3, 8, 8)
    assert (maps[:, :, 4:] == 0).all() and (maps[:, :, :4] > 0).all()
    low = 2 * nn.AvgPool2d(2)(x)[:, 0] * (torch.arange(4) < 2)  # ReLU(2 · pooled x), right half masked
    assert torch.allclose(maps, low.repeat_interleave(2, 1).repeat_interleave(2, 2), atol=1e-6)
    assert grad_cam(model, x, 0, "pool").shape == (3, 8, 8)  # bilinear by default


def test_overlap_scores_by_hand():
    a = torch.tensor([[[5.0, 4.0, 3.0, 2.0, 1.0]]])
    assert float(attention_correlation(a, 2 * a + 1)) == pytest.approx(1.0)
    assert float(attention_correlation(a, -a)) == pytest.approx(-1.0)
    assert math.isnan(float(attention_correlation(a, torch.ones_like(a))))
    # fraction 0.4 of 5 pixels -> top 2: a -> {0, 1}; reversed -> {3, 4}; c -> {0, 2}.
    assert float(top_region_iou(a, a.flip(-1), 0.4)) == 0.0
    c = torch.tensor([[[5.0, 1.0, 4.0, 2.0, 3.0]]])
    assert float(top_region_iou(a, c, 0.4)) == pytest.approx(1 / 3)
    zero = torch.zeros_like(a)
    assert math.isnan(float(top_region_iou(zero, zero, 0.4)))   # nothing attended by either model
    assert float(top_region_iou(a, zero, 0.4)) == 0.0
    ties = torch.tensor([[[1.0, 1.0, 1.0, 0.0, 0.0]]])            # ties at the cut are all in the region
    assert float(top_region_iou(ties, a, 0.4)) == pytest.approx(2 / 3)


def test_chance_level_scores_each_teacher_map_against_the_students_map_of_another_image():
    # Two 2x2 one-hot maps: image 0 attends top-left, image 1 bottom-right. The student copies the teacher, so
    # its own scores are perfect; against the other image's map r = −1/3 (Pearson of [1,0,0,0] and [0,0,0,1]) and
    # the top cells (fraction 0.25: one of 4) are disjoint, IoU 0.
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]])
    r, iou = mismatched_scores(teacher, teacher.clone(), fraction=0.25)
    assert r.tolist() == pytest.approx([-1 / 3, -1 / 3]) and iou.tolist() == [0.0, 0.0]
    alone_r, alone_iou = mismatched_scores(teacher[:1], teacher[:1])   # one image has no other image
    assert math.isnan(float(alone_r)) and math.isnan(float(alone_iou))
    # Three images attending to three different corners: every partner is another image (a derangement), so each
    # chance r is the one of two different one-hot maps, −1/3, over every pairing.
    corners = torch.zeros(3, 2, 2)
    corners[0, 0, 0] = corners[1, 0, 1] = corners[2, 1, 1] = 1.0
    r3, iou3 = mismatched_scores(corners, corners.clone(), fraction=0.25, pairings=7)
    assert r3.tolist() == pytest.approx([-1 / 3] * 3) and iou3.tolist() == [0.0] * 3


def test_a_students_scores_come_with_their_chance_level_and_map_size():
    teacher = LeftHalfNet()
    images = torch.rand(12, 1, 6, 6)
    result = compare_attention(teacher, {"copy": copy.deepcopy(teacher)}, images,
                               target="predicted", layer_teacher="mask", layers_students={"copy": "mask"},
                               batch_size=5)
    s = result.summary(intervals=True)["copy"]
    assert s["map_size"] == s["teacher_map_size"] == (6, 6)
    # the chance level is over the whole set of 12, whatever the batches (5, 5 and 2 images here): with the next
    # image of each batch as partner, batches of 1 had no level at all and small ones another level than large ones
    chance, _ = mismatched_scores(result.maps["teacher"], result.maps["copy"])
    assert s["chance_correlation_mean"] == pytest.approx(float(chance.double().mean()))
    for batch_size in (1, 12):
        other = compare_attention(teacher, {"copy": copy.deepcopy(teacher)}, images, target="predicted",
                                  layer_teacher="mask", layers_students={"copy": "mask"}, batch_size=batch_size)
        assert other.summary()["copy"]["chance_correlation_mean"] == pytest.approx(s["chance_correlation_mean"])
    above = s["correlation_above_chance"]
    assert above["estimate"] == pytest.approx(1.0 - s["chance_correlation_mean"]) and above["low"] <= above["high"]


def test_identical_teacher_and_student_overlap_perfectly_and_state_is_left_clean():
    teacher = LeftHalfNet()
    student = copy.deepcopy(teacher).train()
    images = torch.rand(12, 1, 6, 6)
    result = compare_attention(teacher, {"copy": student}, images, target="predicted", layer_teacher="mask",
                               layers_students={"copy": "mask"}, batch_size=5)
    assert result.summary()["copy"]["correlation_mean"] == pytest.approx(1.0)
    assert result.summary()["copy"]["iou_mean"] == 1.0
    assert result.summary()["copy"]["correlation_undefined"] == 0 and result.maps["copy"].shape == (12, 6, 6)
    for model, training in ((teacher, True), (student, True)):
        assert model.training == training
        assert all(p.grad is None for p in model.parameters())
        assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())
    assert torch.is_grad_enabled()


def test_batchnorm_student_in_train_mode_keeps_its_running_statistics():
    student = create_model("bncnn3_w8", 10, 1, 8).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher = create_model("bncnn3_w16", 10, 1, 8).eval()
    result = compare_attention(teacher, [student, student], torch.randn(6, 1, 8, 8), torch.arange(6))
    assert list(result.maps) == ["teacher", "student", "student_2"]
    assert result.layers == {"teacher": "features.10", "student": "features.10", "student_2": "features.10"}
    assert student.training and not teacher.training
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_target_rules_and_errors():
    teacher, student = create_model("bncnn3_w16", 10, 1, 8), create_model("bncnn3_w8", 10, 1, 8)
    images, labels = torch.randn(8, 1, 8, 8), torch.arange(8) % 10
    own = compare_attention(teacher, student, images, target="predicted")
    assert torch.equal(own.targets["student"], own.predictions["student"])
    followed = compare_attention(teacher, student, images, target="teacher")
    assert torch.equal(followed.targets["student"], followed.predictions["teacher"])
    true = compare_attention(teacher, student, images, labels, target="true")
    assert torch.equal(true.targets["teacher"], labels) and torch.equal(true.targets["student"], labels)
    with pytest.raises(ValueError, match="needs the images' labels"):
        compare_attention(teacher, student, images, target="true")
    with pytest.raises(ValueError, match="target must be one of"):
        AttentionComparator(teacher, student, target="argmax")
    with pytest.raises(ValueError, match="no layer 'features.99'.*features.10"):
        AttentionComparator(teacher, student, layer_teacher="features.99")
    with pytest.raises(ValueError, match="spatial"):
        grad_cam(teacher, images, 0, "classifier")


def test_paired_differences_are_later_minus_earlier_on_the_images_defined_for_both():
    from dfkd_core.stats import paired_difference_interval

    nan = float("nan")
    a = {"correlation": torch.tensor([0.1, 0.2, nan, 0.4, 0.5, 0.3]),
         "iou": torch.tensor([0.2, 0.3, 0.4, 0.1, 0.5, 0.6])}
    b = {"correlation": torch.tensor([0.3, nan, 0.5, 0.6, 0.6, 0.5]),
         "iou": torch.tensor([0.3, 0.3, 0.5, 0.3, 0.5, 0.8])}
    c = {"correlation": torch.zeros(6), "iou": torch.zeros(6)}
    out = paired_differences({"A": a, "B": b, "C": c})
    assert [(d["student_a"], d["student_b"]) for d in out] == [("B", "A"), ("C", "A"), ("C", "B")]
    r = out[0]["correlation"]   # images 0, 3, 4, 5: defined for both
    assert r["units"] == 4 and r["estimate"] == pytest.approx((0.2 + 0.2 + 0.1 + 0.2) / 4)
    assert r == paired_difference_interval(b["correlation"], a["correlation"]).to_dict()   # the project's bootstrap
    iou = out[0]["iou"]
    assert iou["units"] == 6 and iou["estimate"] == pytest.approx(0.1) and 0 <= iou["low"] <= 0.1 <= iou["high"]
    # a saved gradcam.json's per-image lists (NaN stored as "nan" or None) give the same numbers
    stored = {n: {k: [("nan" if i % 2 else None) if math.isnan(v) else v for i, v in enumerate(t.tolist())]
                  for k, t in s.items()} for n, s in {"A": a, "B": b, "C": c}.items()}
    assert paired_differences(stored) == out
    assert paired_differences({"A": a}) == []


def _labels(home, *refs):
    """The names `dfkd gradcam` gives its students (boundary_cli.student_label)."""
    from dfkd_core.analysis.labels import student_label
    from dfkd_core.models import load_checkpoint
    from dfkd_core.runs import RunStore
    return [student_label(RunStore(home), ref, load_checkpoint(ref)) for ref in refs]


def test_cli_gradcam_json_carries_the_paired_difference(digits_teacher, digits_student_checkpoint, tmp_path,
                                                        capsys):
    from dfkd_core.cli import main

    assert main(["--home", str(tmp_path / "home"), "--quiet", "gradcam", "--teacher", digits_teacher.path,
                 "--student", digits_teacher.path, "--student", str(digits_student_checkpoint), "--samples", "20",
                 "--json"]) == 0
    (d,) = json.loads(capsys.readouterr().out)["differences"]
    first, second = _labels(tmp_path / "home", digits_teacher.path, str(digits_student_checkpoint))
    assert (d["student_a"], d["student_b"]) == (second, first)
    assert d["iou"]["estimate"] < 0 and d["iou"]["high"] < 0   # B − A: the untrained student against the teacher
    assert d["correlation"]["resamples"] == 1000 and d["correlation"]["units"] <= 20


def test_cli_gradcam_compares_several_students(digits_teacher, digits_student_checkpoint, tmp_path, capsys):
    from dfkd_core.cli import main
    from dfkd_core.runs import RunStore

    home = str(tmp_path / "home")
    assert main(["--home", home, "--quiet", "gradcam", "--teacher", digits_teacher.path, "--student",
                 str(digits_student_checkpoint), "--students", digits_teacher.path, "--samples", "40",
                 "--batch-size", "16", "--target", "teacher"]) == 0
    out = capsys.readouterr().out
    untrained, itself = _labels(home, str(digits_student_checkpoint), digits_teacher.path)
    assert untrained == "student:bncnn3_w16"   # named like `dfkd boundary` names it, not "student1"
    assert itself in out and "40 images" in out and "95% interval" in out
    assert "1.000 [1.000, 1.000]" in out   # the teacher compared with itself, and its interval
    assert "above chance" in out and "maps 2×2 (teacher), 2×2 cells before upsampling" in out
    run = RunStore(home).list(kind="analysis")[0]
    assert run.status == "done" and run.method == "gradcam"
    saved = json.loads((run.dir / "gradcam.json").read_text())
    assert saved["students"][itself]["iou_mean"] == 1.0   # the teacher compared with itself
    interval = saved["students"][untrained]["correlation_interval"]
    assert interval["low"] <= interval["estimate"] <= interval["high"] and interval["units"] <= 40
    assert run.summary["students"][untrained]["iou_interval"]["resamples"] == 1000
    assert len(saved["per_image"][untrained]["correlation"]) == 40
    maps = torch.load(run.dir / "gradcam_maps.pt", weights_only=True)
    assert maps["maps"]["teacher"].shape == (16, 8, 8) and maps["images"].shape == (16, 1, 8, 8)
    assert (run.dir / "gradcam_overlays.png").stat().st_size > 0
    # the paired difference of the two students on the same images: student2 − student1, in the table and stored
    assert "paired differences on the same images" in out
    assert re.search(rf"IoU\({re.escape(itself)}\) − IoU\({re.escape(untrained)}\) = \+0\.\d+ \[\+0\.\d+, \+0\.\d+\] "
                     r"over 40 images", out)   # the teacher itself overlaps its own map better than an untrained one
    (d,) = saved["differences"]
    assert (d["student_a"], d["student_b"]) == (itself, untrained)
    iou = saved["students"][untrained]["iou_mean"]
    assert d["iou"]["estimate"] == pytest.approx(1.0 - iou) and d["iou"]["units"] == 40
    assert d["iou"]["low"] <= d["iou"]["estimate"] <= d["iou"]["high"]
    assert run.summary["differences"] == saved["differences"]


def test_figures_show_every_model_and_score():
    from dfkd_core.plots.representations import attention_overlay, gradcam_grid_figure, overlap_histogram_figure

    images = torch.rand(2, 1, 6, 6)
    maps = {"teacher": torch.rand(2, 6, 6), "student": torch.zeros(2, 6, 6)}
    scores = {"student": {"correlation": torch.tensor([0.5, float("nan")]), "iou": torch.tensor([0.25, 0.0])}}
    fig = gradcam_grid_figure(images, maps, scores, captions=["label 1", "label 2"])
    assert len(fig.data) == 7 and fig.data[0].type == "image"
    scale = fig.data[-1].marker   # the maps' colour scale, with room above the first titles for the toolbar
    assert scale.colorscale and scale.colorbar.title.text.startswith("Grad-CAM") and fig.layout.margin.t >= 60
    titles = [a.text for a in fig.layout.annotations]
    assert titles[:3] == ["label 1", "teacher", "student<br>r=0.50 · IoU=0.25"] and "r=nan" in titles[5]
    overlay = attention_overlay(images[0], maps["student"][0])
    assert overlay.shape == (6, 6, 3) and overlay.dtype.name == "uint8"
    hist = overlap_histogram_figure({"student": scores["student"]["correlation"]})
    assert hist.data[0].name == "student (n=1)"
