"""The CPU's fast paths, each against its off switch: a synthesis step and a KD step, side by side (issue 18).

    python benchmarks/cpu_paths.py --teacher <ckpt|run id> [--switch layout|precision|compile|echo]
        [--student-model bncnn6_w16] [--threads N] [--repeats 3] [--iterations 40] [--kd-steps 40]

`--switch layout` (the default): NCHW against NHWC (channels_last), switched by `dfkd_core.device.CPU_CHANNELS_LAST`
(what $DFKD_CPU_CHANNELS_LAST sets), both in float32. `--switch precision`: float32 against bfloat16 autocast,
switched by `dfkd_core.device.CPU_BF16` ($DFKD_CPU_BF16, the default of a config's cpu_bf16), in the default
layout; bf16 is used only on a CPU that computes it natively, elsewhere the script says so and compares float32 with
itself. `--switch compile`: eager against `torch.compile` (the synthesis through `InversionObjective(compile=True)`,
as `--compile` runs it; the KD step with the teacher and the student compiled), compilation timed apart (the warm-up
steps). `--switch echo`: the KD step without and with `teacher_echo` 2 (the teacher labels every other batch; the
synthesis is the same in both). Both variants run the project's own code: `ModelInversion` as `dfkd synthesize`
runs it (DeepInversion preset, batch 200), and `StudentTrainer.train_step` with the `fashion-best` KD settings
(batch 128, mixup and CutMix, T = 20) on that synthesis's images. Same seeds, same initial noise, same student
initialization; layouts interleaved, medians of the repeats. Quality: BN distance and teacher accuracy of the final
synthesized batch, and after the KD steps the largest difference of the two students' logits on the batch and how
often their predictions agree.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
import dfkd_core  # noqa: E402,F401  (before torch: its OpenMP wait policy)

import torch  # noqa: E402
from synthesis_speed import compiled_objective, frozen_teacher, quality, run_engine  # noqa: E402

import dfkd_core.device as device_module  # noqa: E402
from dfkd_core.device import describe_machine, prepare_model, thread_policy  # noqa: E402
from dfkd_core.distill import DistillConfig  # noqa: E402
from dfkd_core.distill.recipes import recipe_overrides  # noqa: E402
from dfkd_core.distill.student import StudentTrainer  # noqa: E402
from dfkd_core.models import create_model, load_checkpoint  # noqa: E402
from dfkd_core.runs import RunStore  # noqa: E402
from dfkd_core.synthesis import SynthesisConfig  # noqa: E402

# switch → (the dfkd_core.device flag it sets, {variant: value}); the first variant is the baseline.
SWITCHES = {"layout": ("CPU_CHANNELS_LAST", {"NCHW": False, "NHWC": True}),
            "precision": ("CPU_BF16", {"float32": False, "bf16": True}),
            "compile": (None, {"eager": False, "compiled": True}),
            "echo": (None, {"no echo": 1, "echo 2": 2})}


def kd_run(checkpoint, student_model: str, images: torch.Tensor, steps: int, recipe: str, compiled: bool = False,
           teacher_echo: int = 1) -> tuple[float, torch.Tensor]:
    """Seconds for `steps` KD steps (after 2 warm-up steps, where a compiled step compiles) and the student's logits
    on `images` afterwards."""
    info, device = checkpoint.dataset, torch.device("cpu")
    overrides = {k: v for k, v in recipe_overrides(recipe, "deepinversion").items()
                 if k in ("mixup", "cutmix", "temperature", "lr", "weight_decay", "batch_size")}
    config = DistillConfig(**overrides, method="deepinversion", seed=0, teacher_echo=teacher_echo)
    torch.manual_seed(0)
    student = prepare_model(create_model(student_model, info.num_classes, info.in_channels, info.image_size), device)
    teacher = prepare_model(frozen_teacher(checkpoint, device), device).eval()
    trainer = StudentTrainer(student, teacher, config, info, device, total_steps=steps + 2)
    if compiled:
        trainer.teacher, trainer.forward_model = torch.compile(teacher), torch.compile(trainer.forward_model)
    order = torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        return images[torch.randint(0, len(images), (config.batch_size,), generator=order)]

    for _ in range(2):
        trainer.train_step(batch())
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(batch())
    elapsed = time.perf_counter() - start
    student.eval()
    with torch.no_grad():
        logits = student(device_module.prepare_input(images, device)).float()
    return elapsed, logits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="checkpoint path or teacher run id")
    p.add_argument("--student-model", default="bncnn6_w16")
    p.add_argument("--recipe", default="fashion-best")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--kd-steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int)
    p.add_argument("--switch", choices=list(SWITCHES), default="layout")
    args = p.parse_args()
    flag, variants = SWITCHES[args.switch]
    base, other = variants
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(RunStore().resolve_checkpoint(args.teacher))
    device = torch.device("cpu")
    config = SynthesisConfig.preset("deepinversion", checkpoint.dataset.name, batch_size=args.batch_size,
                                    iterations=args.iterations, seed=0, device="cpu")
    print(f"teacher {checkpoint.name} on {checkpoint.dataset.name}, student {args.student_model}; synthesis batch "
          f"{args.batch_size} × {args.iterations} iterations, KD batch from `{args.recipe}` × {args.kd_steps} steps; "
          f"{args.repeats} interleaved repeats; {describe_machine(device)}, {thread_policy()}")
    if args.switch == "precision" and not device_module.cpu_computes_bf16():
        print("note: this CPU has no native bf16 (AVX512-BF16 or AMX), so the dfkd code runs float32 in both "
              "variants here")
    synth_s = {k: [] for k in variants}
    kd_s = {k: [] for k in variants}
    finals, logits, loads = {}, {}, []
    objective = None
    if args.switch == "compile":
        objective, compile_s = compiled_objective(checkpoint, config, device)
        print(f"synthesis compilation: {compile_s:.1f} s (not in the rates)")
    saved = {"CPU_CHANNELS_LAST": device_module.CPU_CHANNELS_LAST, "CPU_BF16": device_module.CPU_BF16}
    if args.switch == "layout":
        device_module.CPU_BF16 = False   # the layouts compared in float32, as before bf16 existed
    try:
        for repeat in range(args.repeats):
            loads.append(os.getloadavg()[0])
            names = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
            for name in names:
                compiled = args.switch == "compile" and variants[name]
                if flag:
                    setattr(device_module, flag, variants[name])
                # a config's cpu_bf16 is fixed when it is made: the synthesis config follows the switch here
                elapsed, finals[name], _ = run_engine(checkpoint, config.replace(cpu_bf16=device_module.CPU_BF16),
                                                      device, objective if compiled else None)
                synth_s[name].append(elapsed)
                pool = finals.get(base, finals[name]).detach()   # both variants' KD on the same images
                kd_elapsed, logits[name] = kd_run(checkpoint, args.student_model, pool, args.kd_steps, args.recipe,
                                                  compiled, variants[name] if args.switch == "echo" else 1)
                kd_s[name].append(kd_elapsed)
        loads.append(os.getloadavg()[0])
    finally:
        for name, value in saved.items():
            setattr(device_module, name, value)
    probe = frozen_teacher(checkpoint, device)
    targets = torch.arange(args.batch_size) % checkpoint.dataset.num_classes
    print(f"load average {min(loads):.1f}–{max(loads):.1f}\n")
    print(f"| {args.switch} | synthesis images/s | × {base} | KD steps/s | × {base} | BN distance | teacher acc |")
    print("|---|---|---|---|---|---|---|")
    base_synth = args.batch_size / statistics.median(synth_s[base])
    base_kd = args.kd_steps / statistics.median(kd_s[base])
    for name in variants:
        images_per_s = args.batch_size / statistics.median(synth_s[name])
        steps_per_s = args.kd_steps / statistics.median(kd_s[name])
        bn, accuracy = quality(probe, finals[name], targets)
        print(f"| {name} | {images_per_s:.1f} | {images_per_s / base_synth:.2f} | {steps_per_s:.2f} | "
              f"{steps_per_s / base_kd:.2f} | {bn:.3f} | {accuracy:.3f} |")
    print(f"\nfinal synthesized batches: max |Δx| {float((finals[base] - finals[other]).abs().max()):.2e}; "
          f"students after {args.kd_steps + 2} KD steps on the same images: max |Δ logit| "
          f"{float((logits[base] - logits[other]).abs().max()):.2e}, argmax agreement "
          f"{float((logits[base].argmax(1) == logits[other].argmax(1)).float().mean()):.3f}")


if __name__ == "__main__":
    main()
