"""The NHWC (channels_last) layout on the CPU (`dfkd_core.device.CPU_CHANNELS_LAST`, issue 18): it changes how a
tensor sits in memory, not what the models compute, and $DFKD_CPU_CHANNELS_LAST=0 turns it off."""
import copy
import os
import subprocess
import sys

import pytest
import torch

import dfkd_core.device as device_module
from dfkd_core.device import channels_last, prepare_input, prepare_model
from dfkd_core.distill import DistillConfig
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.models import create_model

CPU = torch.device("cpu")


def _widest_conv_weight(model: torch.nn.Module) -> torch.Tensor:
    """A 1-channel first convolution is both layouts at once; the widest one tells them apart."""
    return max((m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)), key=lambda w: w.shape[1])


@pytest.fixture
def layout(monkeypatch):
    # Compared in float32: with $DFKD_CPU_BF16=1 on a CPU with native bf16 the KD step runs in bf16
    # (test_cpu_bf16.py), whose rounding differs between layouts far more than float32's.
    monkeypatch.setattr(device_module, "CPU_BF16", False)

    def use(nhwc: bool) -> None:
        monkeypatch.setattr(device_module, "CPU_CHANNELS_LAST", nhwc)
    return use


def test_the_switch_sets_the_layout_of_models_and_batches(layout, digits_teacher):
    x = torch.randn(8, 3, 8, 8)
    layout(True)
    model = prepare_model(copy.deepcopy(digits_teacher.model), CPU)
    assert channels_last(CPU) and _widest_conv_weight(model).is_contiguous(memory_format=torch.channels_last)
    assert not _widest_conv_weight(model).is_contiguous()
    assert prepare_input(x, CPU).is_contiguous(memory_format=torch.channels_last)
    layout(False)
    assert not channels_last(CPU)
    back = prepare_model(model, CPU)   # a model prepared in NHWC follows the switch back
    assert _widest_conv_weight(back).is_contiguous()
    assert not _widest_conv_weight(back).is_contiguous(memory_format=torch.channels_last)
    assert prepare_input(x, CPU).is_contiguous()
    assert not prepare_input(x, CPU).is_contiguous(memory_format=torch.channels_last)
    assert channels_last(torch.device("cuda")), "CUDA always runs NHWC"


def test_the_layout_environment_variable_is_read_at_import():
    code = "import dfkd_core.device as d; print(d.CPU_CHANNELS_LAST)"
    cases = (("0", "False"), ("1", "True"))
    started = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,   # side by side
                                env={**os.environ, "DFKD_CPU_CHANNELS_LAST": value}) for value, _ in cases]
    for (value, expected), process in zip(cases, started):
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == expected, (value, out)


def _kd_steps(digits_teacher, nhwc: bool, layout, steps: int = 4) -> tuple[list[float], torch.Tensor]:
    layout(nhwc)
    torch.manual_seed(0)
    student = prepare_model(create_model("bncnn3_w16", 10, 1, 8), CPU)
    teacher = prepare_model(copy.deepcopy(digits_teacher.model), CPU).eval()
    config = DistillConfig(method="deepinversion", mixup=0.5, cutmix=0.5, temperature=20.0, batch_size=32)
    trainer = StudentTrainer(student, teacher, config, digits_teacher.dataset, CPU, total_steps=steps)
    images = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    seen = []   # the first convolution's output (1-channel inputs are both layouts at once)
    teacher.features[0].register_forward_hook(
        lambda module, inputs, out: seen.append(out.is_contiguous(memory_format=torch.channels_last)))
    losses = [trainer.train_step(images[8 * i:8 * i + 32])["loss_kd"] for i in range(steps)]
    assert seen and all(flag == nhwc for flag in seen), "the teacher computes in the layout asked for"
    student.eval()
    with torch.no_grad():
        return losses, student(prepare_input(images, CPU))


def test_kd_steps_compute_the_same_in_both_layouts(layout, digits_teacher):
    """Same seeds, same batches (shift, flip, mixup and CutMix draws included): the KD losses and the trained
    student's logits agree to float rounding, so the layout is a speed setting, not a change of method."""
    losses_nchw, logits_nchw = _kd_steps(digits_teacher, False, layout)
    losses_nhwc, logits_nhwc = _kd_steps(digits_teacher, True, layout)
    assert losses_nhwc == pytest.approx(losses_nchw, rel=1e-4)
    assert torch.allclose(logits_nhwc, logits_nchw, atol=1e-4)
    assert losses_nchw[0] != losses_nchw[-1], "the student moved, so the comparison is of trained students"


def test_an_inversion_computes_the_same_in_both_layouts_and_says_which_it_used(layout, digits_teacher):
    from dfkd_core.synthesis import ModelInversion, SynthesisConfig
    runs = {}
    for nhwc in (False, True):
        layout(nhwc)
        config = SynthesisConfig.preset("deepinversion", "digits", batch_size=50, iterations=5, snapshot_every=0,
                                        device="cpu")
        job = ModelInversion(copy.deepcopy(digits_teacher.model), digits_teacher.dataset, config)
        job.run()
        assert job.status == "done", job.error
        runs[nhwc] = job
    assert runs[False].result["engine"].endswith("eager, NCHW; float32")
    assert runs[True].result["engine"].endswith("eager, NHWC; float32")
    assert [h["loss_total"] for h in runs[True].history] == pytest.approx(
        [h["loss_total"] for h in runs[False].history], rel=1e-3)
