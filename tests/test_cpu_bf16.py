"""bfloat16 autocast on the CPU (a config's `cpu_bf16`, default $DFKD_CPU_BF16; issue 18): when asked for, the KD
step and the inversion step run in bf16 where the CPU computes it natively, say so in their summaries (and say so
where the CPU cannot), and compute what float32 computes to bf16 precision; float32 is the default. The tests force
the request and the 'native' probe on, so they run on any CPU (torch emulates bf16 where the CPU lacks it: slower,
same numbers)."""
import copy
import os
import subprocess
import sys

import pytest
import torch

import dfkd_core.device as device_module
from dfkd_core.device import precision, uses_bf16
from dfkd_core.distill import DistillConfig
from dfkd_core.distill.student import StudentTrainer
from dfkd_core.models import create_model

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "CPU_BF16", True)
    monkeypatch.setattr(device_module, "cpu_computes_bf16", lambda: True)


def test_bf16_only_where_asked_for_and_computed_natively(monkeypatch, native_bf16):
    assert uses_bf16(CPU, True, cpu=True)
    assert precision(CPU, True, cpu=True) == "bfloat16 autocast (CPU with native bf16)"
    assert not uses_bf16(CPU, True), "a caller that did not measure a gain (teacher training) stays in float32"
    assert not uses_bf16(CPU, False, cpu=True), "amp=False is float32 everywhere"
    assert uses_bf16(torch.device("cuda"), True) and not uses_bf16(torch.device("cuda"), False)
    assert not uses_bf16(CPU, True, cpu=False) and precision(CPU, True, cpu=False) == "float32", "not asked for"
    monkeypatch.setattr(device_module, "cpu_computes_bf16", lambda: False)   # an AVX2 CPU: emulated bf16 is slower
    assert not uses_bf16(CPU, True, cpu=True)
    assert precision(CPU, True, cpu=True) == "float32 (bf16 asked for, but this CPU has no native bf16)"
    assert precision(CPU, False, cpu=True) == "float32", "--no-amp asked for float32 and got it"


def test_a_configs_cpu_bf16_defaults_to_the_environment_and_stays_with_the_run(monkeypatch):
    from dfkd_core.synthesis import SynthesisConfig
    for environment in (False, True):
        monkeypatch.setattr(device_module, "CPU_BF16", environment)
        assert DistillConfig().cpu_bf16 is environment and SynthesisConfig().cpu_bf16 is environment
    asked = DistillConfig(cpu_bf16=True).to_dict()
    monkeypatch.setattr(device_module, "CPU_BF16", False)
    assert DistillConfig.from_dict(asked).cpu_bf16, "a resumed run computes in what it asked for, not what the env says"
    older = {k: v for k, v in asked.items() if k != "cpu_bf16"}
    assert DistillConfig.from_dict(older).cpu_bf16 is False, "a run saved before the setting existed loads"


def test_the_native_probe_is_torchs():
    probes = [torch.cpu._is_avx512_bf16_supported(), torch.cpu._is_amx_tile_supported()]
    assert device_module.cpu_computes_bf16() == any(probes)


def test_the_environment_variable_is_read_at_import():
    code = "import dfkd_core.device as d; print(d.CPU_BF16)"
    unset = {k: v for k, v in os.environ.items() if k != "DFKD_CPU_BF16"}
    cases = ((None, "False"), ("0", "False"), ("1", "True"))
    started = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,   # side by side
                                env=unset if value is None else {**unset, "DFKD_CPU_BF16": value})
               for value, _ in cases]
    for (value, expected), process in zip(cases, started):
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0 and out.strip() == expected, (value, out)


def _kd(digits_teacher, amp: bool, steps: int = 4, **settings):
    torch.manual_seed(0)
    student = device_module.prepare_model(create_model("bncnn3_w16", 10, 1, 8), CPU)
    teacher = device_module.prepare_model(copy.deepcopy(digits_teacher.model), CPU).eval()
    config = DistillConfig(method="deepinversion", mixup=0.5, cutmix=0.5, temperature=20.0, batch_size=32, amp=amp,
                           **settings)
    trainer = StudentTrainer(student, teacher, config, digits_teacher.dataset, CPU, total_steps=steps)
    dtypes = []
    teacher.features[0].register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    student.features[0].register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    images = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    losses = [trainer.train_step(images[8 * i:8 * i + 32])["loss_kd"] for i in range(steps)]
    student.eval()
    with torch.no_grad():
        return trainer, set(dtypes), losses, student(device_module.prepare_input(images, CPU))


def test_the_kd_step_runs_in_bf16_and_agrees_with_float32(native_bf16, digits_teacher):
    trainer, dtypes, losses, logits = _kd(digits_teacher, amp=True)
    assert dtypes == {torch.bfloat16}, "teacher and student convolutions both in bf16"
    assert trainer.precision == "bfloat16 autocast (CPU with native bf16)"
    trainer32, dtypes32, losses32, logits32 = _kd(digits_teacher, amp=False)
    assert dtypes32 == {torch.float32} and trainer32.precision == "float32"
    not_asked, dtypes_not_asked, losses_not_asked, _ = _kd(digits_teacher, amp=True, cpu_bf16=False)
    assert dtypes_not_asked == {torch.float32} and not_asked.precision == "float32", "the config wins over the default"
    assert losses_not_asked == losses32
    # bf16 keeps 8 bits of mantissa: the first loss (same student, same batch) agrees to about 1%
    assert losses[0] == pytest.approx(losses32[0], rel=2e-2)
    assert losses != losses32, "the two precisions really ran differently"
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    agree = float((logits.argmax(1) == logits32.argmax(1)).float().mean())
    assert agree >= 0.9, f"after 4 steps the students' predictions agree on {agree:.0%} of the batch"


def test_an_inversion_runs_in_bf16_and_says_so(native_bf16, digits_teacher):
    from dfkd_core.synthesis import ModelInversion, SynthesisConfig
    results = {}
    for amp in (True, False):
        config = SynthesisConfig.preset("deepinversion", "digits", batch_size=50, iterations=30, snapshot_every=0,
                                        device="cpu", amp=amp)
        job = ModelInversion(copy.deepcopy(digits_teacher.model), digits_teacher.dataset, config)
        job.run()
        assert job.status == "done", job.error
        assert torch.isfinite(job.images()).all()
        results[amp] = job.result
    assert results[True]["engine"].endswith("; bfloat16 autocast (CPU with native bf16)")
    assert results[False]["engine"].endswith("; float32")
    start, bf16, fp32 = (results[True]["bn_distance_start"], results[True]["bn_distance_end"],
                         results[False]["bn_distance_end"])
    assert bf16 < 0.5 * start, "bf16 inverts: the BN distance falls as in float32"
    assert bf16 == pytest.approx(fp32, rel=0.1), (bf16, fp32)


def test_no_amp_makes_a_distillation_float32_in_its_rounds_and_its_kd(native_bf16, digits_teacher, tmp_path):
    """`dfkd distill --no-amp`: the config says amp=False, the pool's inversion rounds follow it, and the run's
    summary says float32; without it the same run is bf16 on such a CPU."""
    import argparse

    from dfkd_core.distill.cli import add_commands, config_from_args
    from dfkd_core.distill.job import DistillJob
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    common = ["distill", "--teacher", "t", "--method", "deepinversion", "--recipe", "digits-quick", "--images", "40",
              "--inv-batch-size", "40", "--inv-iterations", "3", "--steps", "2", "--eval-every", "2"]
    for flags, expected in (([], "bfloat16 autocast (CPU with native bf16)"), (["--no-amp"], "float32"),
                            (["--no-cpu-bf16"], "float32")):
        config = config_from_args(parser.parse_args(common + flags))
        assert config.amp == (flags != ["--no-amp"]) and config.cpu_bf16 == (flags != ["--no-cpu-bf16"])
        job = DistillJob(digits_teacher, config)
        assert job.method._round_config(0).amp == config.amp
        assert job.method._round_config(0).cpu_bf16 == config.cpu_bf16
        job.run()
        assert job.status == "done", job.error
        assert job.result["kd_precision"] == expected
