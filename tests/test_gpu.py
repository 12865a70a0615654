"""CUDA: synthesis, distillation, analysis, AMP and channels_last on a GPU give what the CPU gives (issue 18).

Run with `python -m pytest -m gpu` on a GPU machine (`scripts/gpu_checks.sh` runs them with the speed benchmark).
Without CUDA every test here is skipped with the reason. `DFKD_TEST_DEVICE=cpu` runs the same tests on the CPU
(a check of the tests themselves on a machine without a GPU; the CUDA comparisons then compare the CPU with
itself).
"""
import copy
import os

import pytest
import torch

from dfkd_core.analysis.boundary import decision_boundary_similarity
from dfkd_core.analysis.cka import linear_cka
from dfkd_core.analysis.features import capture_features
from dfkd_core.analysis.gradcam import compare_attention
from dfkd_core.data import load_split
from dfkd_core.device import prepare_input, prepare_model
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.synthesis import ModelInversion, SynthesisConfig

DEVICE = os.environ.get("DFKD_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU; this machine has none (torch.cuda.is_available() is "
                                        "False)")]


def _inversion(teacher, device: str, **kw) -> ModelInversion:
    config = SynthesisConfig.preset("deepinversion", "digits",
                                    **{"batch_size": 100, "iterations": 150, "device": device, "snapshot_every": 0,
                                       **kw})
    return ModelInversion(copy.deepcopy(teacher.model), teacher.dataset, config)


def test_synthesis_on_the_gpu_fools_the_teacher_and_matches_its_bn_statistics(digits_teacher):
    job = _inversion(digits_teacher, DEVICE, snapshot_every=25)
    snapshots = []
    job.subscribe(lambda e: snapshots.append(e) if e.kind == "snapshot" else None)
    job.run()
    assert job.status == "done", job.error
    assert job.result["teacher_accuracy"] >= 0.9
    assert job.result["bn_distance_end"] < 0.5 * job.result["bn_distance_start"]
    assert len(job.history) == 150 and [h["step"] for h in job.history] == list(range(150))
    assert job.images().device.type == "cpu" and snapshots and snapshots[-1].images.device.type == "cpu"
    assert "fused into all 3 BatchNorm layers" in job.result["engine"]


def test_gpu_and_cpu_inversions_start_the_same(digits_teacher):
    """Same noise and augmentations: the first steps' losses agree up to the GPU's float rounding (TF32
    convolutions); later steps drift apart as any rounding difference does in this optimization."""
    gpu, cpu = _inversion(digits_teacher, DEVICE, iterations=3, amp=False), _inversion(digits_teacher, "cpu",
                                                                                     iterations=3)
    gpu.run(), cpu.run()
    assert [h["loss_total"] for h in gpu.history] == pytest.approx([h["loss_total"] for h in cpu.history],
                                                                   rel=2e-2)


def test_amp_on_and_off_make_inversions_of_the_same_quality(digits_teacher):
    """bfloat16 autocast (amp=True, the CUDA default) against float32: the first loss agrees to bf16 precision
    and both batches reach the same teacher accuracy and BN distance within a few percent."""
    on, off = _inversion(digits_teacher, DEVICE, amp=True), _inversion(digits_teacher, DEVICE, amp=False)
    on.run(), off.run()
    assert on.history[0]["loss_total"] == pytest.approx(off.history[0]["loss_total"], rel=2e-2)
    assert on.result["teacher_accuracy"] >= 0.9 and off.result["teacher_accuracy"] >= 0.9
    assert on.result["bn_distance_end"] == pytest.approx(off.result["bn_distance_end"], rel=0.25)


def test_compiled_objective_on_the_gpu(digits_teacher):
    eager, compiled = _inversion(digits_teacher, DEVICE, iterations=6), _inversion(digits_teacher, DEVICE,
                                                                                  iterations=6, compile=True)
    eager.run(), compiled.run()
    assert "torch.compile" in compiled.result["engine"], compiled.result["engine"]
    assert [h["loss_total"] for h in compiled.history] == pytest.approx([h["loss_total"] for h in eager.history],
                                                                       rel=2e-2)


def test_channels_last_teacher_gives_the_contiguous_teachers_outputs(digits_teacher):
    device = torch.device(DEVICE)
    plain = copy.deepcopy(digits_teacher.model).to(device).eval()
    prepared = prepare_model(copy.deepcopy(digits_teacher.model), device).eval()
    x = torch.randn(64, 1, 8, 8)
    if device.type == "cuda":
        assert prepared.features[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert prepare_input(x, device).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(prepared(prepare_input(x, device)), plain(x.to(device)), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("method, extra", [("deepinversion", {"images": 200, "synthesis": {"iterations": 60},
                                                              "kd_steps_per_round": 0}),
                                           ("generator-ensemble", {"generator_steps": 60})])
def test_distillation_on_the_gpu(digits_teacher, method, extra):
    config = DistillConfig(method=method, device=DEVICE, steps=200, eval_every=100, **extra)
    job = DistillJob(copy.deepcopy(digits_teacher), config)
    job.run()
    assert job.status == "done", job.error
    assert job.result["student_accuracy"] > 0.5
    assert all(p.device.type == torch.device(DEVICE).type for p in job.student.parameters())


def test_analysis_on_the_gpu_gives_the_cpu_values(digits_teacher):
    test = load_split("digits", "test")
    images, labels = test.normalized()[:120], test.labels[:120]
    device = torch.device(DEVICE)
    on_cpu, on_gpu = copy.deepcopy(digits_teacher.model).eval(), copy.deepcopy(digits_teacher.model).to(device).eval()
    layer = "features.2"
    cpu_features = capture_features(on_cpu, [layer], images)[layer]
    gpu_features = capture_features(on_gpu, [layer], images)[layer]
    assert gpu_features.device.type == "cpu" or gpu_features.device == device
    assert linear_cka(gpu_features.float().cpu(), cpu_features) == pytest.approx(1.0, abs=1e-4)
    attention = compare_attention(on_gpu, {"copy": copy.deepcopy(on_gpu)}, images.to(device), labels.to(device))
    assert attention.summary()["copy"]["correlation_mean"] == pytest.approx(1.0, abs=1e-4)
    similarity = decision_boundary_similarity(on_gpu, copy.deepcopy(on_gpu), images.to(device), labels.to(device),
                                              n_base=40, pixel_bounds=digits_teacher.dataset.pixel_bounds(device))
    assert similarity.magsim == pytest.approx(1.0, abs=1e-3) and similarity.angsim == pytest.approx(1.0, abs=1e-3)
