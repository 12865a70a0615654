"""IE-KD evidence table (methods.md#ie-kd) on Fashion-MNIST: do inheritance/exploration students have lower CKA to the
teacher than plain KD students, yet similar Grad-CAM attention and more active neurons?

Students (same architecture, same step budget, batch and seeds): scratch (CE on labels only), KD (CE + KD), FT
(CE + inheritance of the teacher factor by the whole split layer: IE-KD without exploration, the baseline the
paper's IE-FT extends), IE-KD, IE-DML (both peers), and, with --pool, KD and IE-KD on a synthesized pool only
(data-free; IE-KD's L_goal uses the teacher's argmax there).
Columns, all on the real test set: accuracy; linear CKA to the teacher at the split layer (the last block with a
spatial map, the layer IE-KD splits and Grad-CAM reads) on `--cka-samples` images, for the whole layer and for
its first / second channel half (IE's inheritance / exploration parts; for other students just the same
channels); Grad-CAM overlap with the teacher (Pearson correlation and top-20% IoU, true-class target) on
`--gradcam-samples` images; active neurons at the split layer: channels and units (c, h, w) firing on >= 1% of
the images, and the activation density (mean share of units on per image). The same test subsets for every
student and seed.

    python benchmarks/iekd_table.py --teacher /work/helpers/fmnist_teacher_bncnn6_w32.pt \
        --pool /tmp/lead_home/runs/distill-20261125-065727-ac5d/images.pt --steps 600 --seeds 0 1

Students are saved as distill runs in the run store of --home (default $DFKD_HOME), so the app's
Representations and Attention pages can open them. One torch thread (the machine is shared).
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dfkd_core.analysis import (activation_density, active_neuron_fraction, capture_features, compare_attention,
                                default_attention_layer, linear_cka)
from dfkd_core.data import load_split
from dfkd_core.distill import DistillConfig, DistillJob, SyntheticPool
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.training import evaluate


@dataclass
class Row:
    key: str
    name: str
    method: str
    options: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    pool: bool = False


def rows(args) -> list[Row]:
    ie = {"lambda_inh": args.lambda_inh, "lambda_exp": args.lambda_exp, "distance_norm": args.distance_norm}
    ae = {"autoencoder_steps": args.autoencoder_steps}
    out = [Row("scratch", "scratch (labels only)", "scratch"),
           Row("kd", "KD (CE + KD)", "real-kd", config={"alpha_ce": 1.0}),
           Row("ft", "FT (CE + inheritance, no exploration)", "iekd",
               {**ie, **ae, "inheritance_share": 1.0, "lambda_exp": 0.0}),
           Row("iekd", "IE-KD", "iekd", {**ie, **ae}),
           Row("iedml", "IE-DML", "iedml", ie)]
    if args.pool:
        out += [Row("df-kd", "data-free KD (pool)", "deepinversion", pool=True),
                Row("df-iekd", "data-free IE-KD (pool)", "iekd", {**ie, **ae}, pool=True)]
    return [r for r in out if not args.only or r.key in args.only]


def train(row: Row, teacher, args, seed: int, store: RunStore | None, pool: SyntheticPool | None) -> DistillJob:
    config = DistillConfig(method=row.method, steps=args.steps, batch_size=args.batch_size, seed=seed,
                           eval_every=max(1, args.steps // 4), options=row.options,
                           pool=pool.source if row.pool and pool is not None else None, **row.config)
    run = store.create("distill", {**config.to_dict(), "teacher": str(teacher.path)},
                       teacher=store.run_id_of(teacher.path), method=row.method, dataset=teacher.dataset.name,
                       name=f"{row.name}, seed {seed}: {teacher.name} → half width") if store else None
    job = DistillJob(copy.deepcopy(teacher), config, run=run, pool=pool if row.pool else None)
    job.run()
    if job.status != "done":
        raise SystemExit(f"{row.name} ended {job.status}: {job.error}")
    return job


def half_ckas(teacher_features: torch.Tensor, student_map: torch.Tensor) -> tuple[float, float, float]:
    """CKA of the teacher's map with the student's whole map, its first and its second channel half."""
    c = student_map.shape[1] // 2
    return (linear_cka(teacher_features, student_map.flatten(1)), linear_cka(teacher_features,
            student_map[:, :c].flatten(1)), linear_cka(teacher_features, student_map[:, c:].flatten(1)))


def measure(students: dict[str, torch.nn.Module], teacher: torch.nn.Module, dataset: str, args) -> dict[str, dict]:
    """Every column but accuracy, for each model, on fixed test subsets (the same images for every student)."""
    test = load_split(dataset, "test")
    cka_set = test.subset(args.cka_samples, seed=0)
    cam_set = test.subset(args.gradcam_samples, seed=1)
    x_cka = cka_set.normalized()
    layer_t = default_attention_layer(teacher, x_cka[:2])
    feats_t = capture_features(teacher, [layer_t], x_cka)[layer_t]
    attention = compare_attention(teacher, students, cam_set.normalized(), cam_set.labels, target="true",
                                  batch_size=100, keep_maps=0).summary()
    out = {}
    for name, model in {"teacher": teacher, **students}.items():
        layer = default_attention_layer(model, x_cka[:2])
        student_map = capture_features(model, [layer], x_cka, reduce="none")[layer]
        whole, first, second = half_ckas(feats_t, student_map)
        out[name] = {"cka": whole, "cka_inh": first, "cka_exp": second,
                     "gradcam_r": attention[name]["correlation_mean"] if name in attention else 1.0,
                     "gradcam_iou": attention[name]["iou_mean"] if name in attention else 1.0,
                     "active_channels": active_neuron_fraction(model, layer, cka_set, neuron="channel"),
                     "active_units": active_neuron_fraction(model, layer, cka_set, neuron="unit"),
                     "density": activation_density(model, layer, cka_set)}
    return out


COLUMNS = {"accuracy": ("test acc", 4), "cka": ("CKA (split layer)", 3), "cka_inh": ("CKA 1st half (inh)", 3),
           "cka_exp": ("CKA 2nd half (exp)", 3), "gradcam_r": ("Grad-CAM r", 3),
           "gradcam_iou": ("Grad-CAM IoU@20%", 3), "active_channels": ("active channels", 3),
           "active_units": ("active units", 3), "density": ("activation density", 3)}


def cell(values: list[float], digits: int) -> str:
    """Mean, and ± the standard deviation over seeds when there are several."""
    t = torch.tensor(values, dtype=torch.float64)
    mean = f"{float(t.mean()):.{digits}f}"
    return mean if len(values) < 2 else f"{mean} ± {float(t.std()):.{digits}f}"


def print_table(results: dict[str, dict[str, list[float]]], args) -> None:
    print(f"\nFashion-MNIST, students bncnn6_w16, {args.steps} steps × batch {args.batch_size}, seeds {args.seeds}; "
          f"CKA on {args.cka_samples} test images, Grad-CAM on {args.gradcam_samples}; IE: λ_inh {args.lambda_inh}, "
          f"λ_exp {args.lambda_exp}, p = {args.distance_norm}")
    print("| student | " + " | ".join(title for title, _ in COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, m in results.items():
        print(f"| {name} | " + " | ".join(cell(m[k], d) for k, (_, d) in COLUMNS.items()) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="teacher checkpoint (Fashion-MNIST bncnn6_w32)")
    p.add_argument("--pool", help="images.pt of a synthesis run: adds the data-free rows")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--autoencoder-steps", type=int, default=300)
    p.add_argument("--lambda-inh", type=float, default=1.0)
    p.add_argument("--lambda-exp", type=float, default=1.0)
    p.add_argument("--distance-norm", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--cka-samples", type=int, default=2000)
    p.add_argument("--gradcam-samples", type=int, default=500)
    p.add_argument("--only", nargs="+", choices=["scratch", "kd", "ft", "iekd", "iedml", "df-kd", "df-iekd"],
                   help="train only these rows")
    p.add_argument("--home", help="run store for the students (default $DFKD_HOME); 'none': do not save")
    p.add_argument("--out", help="also write the per-seed numbers as JSON")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    store = None if args.home == "none" else RunStore(args.home)
    teacher = load_checkpoint(args.teacher)
    if store is not None and store.run_id_of(teacher.path) == str(teacher.path):   # so the app can pick the pair
        run = store.create("teacher", {"imported": str(teacher.path)}, method=teacher.name,
                           dataset=teacher.dataset.name, name=f"{teacher.name} on {teacher.dataset.name}")
        shutil.copy(teacher.path, run.path("model.pt"))
        run.set_status("done", summary={**teacher.metrics, "model": teacher.name})
        teacher = load_checkpoint(run.path("model.pt"))
    pool = SyntheticPool.load(args.pool, teacher.dataset) if args.pool else None

    results: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        students, accuracy = {}, {"teacher": teacher.metrics.get("test_accuracy", float("nan"))}
        for row in rows(args):
            start = time.time()
            job = train(row, teacher, args, seed, store, pool)
            students[row.name], accuracy[row.name] = job.student.cpu().eval(), job.result["student_accuracy"]
            print(f"seed {seed} · {row.name}: test accuracy {accuracy[row.name]:.4f} ({time.time() - start:.0f} s)"
                  + (f", run {job.run_record.id}" if job.run_record else ""), flush=True)
            if row.method == "iedml":
                peer = f"{row.name} peer B"
                students[peer] = job.method.student_b.cpu().eval()
                accuracy[peer] = job.result.get("student_b_accuracy") or evaluate(
                    students[peer], job.real_split("test"))["accuracy"]
        for name, m in measure(students, teacher.model.eval(), teacher.dataset.name, args).items():
            for k, v in {"accuracy": accuracy[name], **m}.items():
                results.setdefault(name, {}).setdefault(k, []).append(v)
    print_table(results, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
