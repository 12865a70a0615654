"""`dfkd cka` and `dfkd gradcam`: compare a teacher with students; print a table, save an "analysis" run."""
from __future__ import annotations

import argparse
import math
import sys

from dfkd_core.analysis.cka import KERNELS
from dfkd_core.analysis.cka_matrix import ESTIMATORS
from dfkd_core.analysis.gradcam import TARGETS


def _models(store, refs: list[str], what: str):
    from dfkd_core.cli import _load
    return [_load(store, ref, what) for ref in refs]


def _fmt(v: float) -> str:
    return "  nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def print_cka_table(result) -> None:
    """Teacher layers as rows, student layers as columns."""
    width = max(len(n) for n in result.layers_teacher) + 2
    col = max(8, *(len(n) for n in result.layers_student))
    print(f"{result.kernel} CKA, {result.estimator} estimator, {result.samples} inputs "
          f"(rows: teacher layers, columns: student layers)")
    print(" " * width + " ".join(f"{c:>{col}}" for c in result.layers_student))
    for i, name in enumerate(result.layers_teacher):
        print(f"{name:<{width}}" + " ".join(f"{_fmt(float(v)):>{col}}" for v in result.matrix[i]))


def _check_layers(model, layers) -> None:
    from dfkd_core.analysis.features import resolve_layers
    try:
        resolve_layers(model.model, [layer for layer in layers if layer])
    except ValueError as e:
        raise SystemExit(f"error: {e}")


def _start_run(store, kind_method: str, config, teacher, name: str):
    return store.create("analysis", config.to_dict(), teacher=store.run_id_of(teacher.path), method=kind_method,
                        dataset=teacher.dataset.name, name=name)


def _inputs(args, store, teacher):
    from dfkd_core.analysis.jobs import load_inputs
    from dfkd_core.data import DatasetMissingError
    try:
        return load_inputs(args.inputs, teacher.dataset, args.samples, args.seed, store)
    except (KeyError, FileNotFoundError, ValueError, DatasetMissingError) as e:
        raise SystemExit(f"error: cannot use inputs '{args.inputs}': {e}")


def cmd_cka(args, store) -> int:
    from dfkd_core.analysis.jobs import CKAAnalysis, CKAConfig
    from dfkd_core.cli import ProgressBar

    teacher, student = _models(store, [args.teacher, args.student], "model")
    config = CKAConfig(teacher=args.teacher, student=args.student, kernel=args.kernel, threshold=args.threshold,
                       layers_teacher=args.layers_teacher or [], layers_student=args.layers_student or [],
                       inputs=args.inputs, samples=args.samples, batch_size=args.batch_size, reduce=args.reduce,
                       estimator=args.estimator, seed=args.seed, device=args.device)
    _check_layers(teacher, config.layers_teacher)
    _check_layers(student, config.layers_student)
    images, _ = _inputs(args, store, teacher)
    run = _start_run(store, "cka", config, teacher, f"CKA {teacher.name} vs {student.name} ({args.inputs})")
    job = CKAAnalysis(teacher.model, student.model, images, config, run)
    job.subscribe(ProgressBar(("samples",), args.quiet))
    job.run()
    if job.status != "done" or not hasattr(job, "cka"):
        print(f"error: {job.error or job.status}", file=sys.stderr)
        print(f"run {run.id} [{job.status}] -> {run.dir}")
        return 1
    print_cka_table(job.cka)
    print(f"run {run.id} [{job.status}] -> {run.dir} (cka.json, cka_heatmap.json)")
    return 0


def cmd_gradcam(args, store) -> int:
    from dfkd_core.analysis.jobs import GradCAMAnalysis, GradCAMConfig
    from dfkd_core.cli import ProgressBar

    refs = [args.student] + (args.students or [])
    teacher, *students = _models(store, [args.teacher] + refs, "model")
    names = [f"student{i + 1}:{s.name}" if len(refs) > 1 else f"student:{s.name}" for i, s in enumerate(students)]
    config = GradCAMConfig(teacher=args.teacher, students=refs, target=args.target,
                           layer_teacher=args.layer_teacher or "", layers_students=args.layers_students or [],
                           fraction=args.fraction, inputs=args.inputs, samples=args.samples,
                           batch_size=args.batch_size, seed=args.seed, device=args.device)
    _check_layers(teacher, [config.layer_teacher])
    if config.layers_students and len(config.layers_students) != len(students):
        raise SystemExit(f"error: --layers-students needs one layer per student ({len(students)})")
    for s, layer in zip(students, config.layers_students):
        _check_layers(s, [layer])
    images, labels = _inputs(args, store, teacher)
    if args.target == "true" and labels is None:
        raise SystemExit("error: these inputs have no labels; use --target predicted or --target teacher")
    run = _start_run(store, "gradcam", config, teacher, f"Grad-CAM {teacher.name} vs {len(refs)} student(s)")
    job = GradCAMAnalysis(teacher.model, {n: s.model for n, s in zip(names, students)}, images, labels, config,
                          teacher.dataset, run)
    job.subscribe(ProgressBar((), args.quiet))
    job.run()
    if job.status != "done":
        print(f"error: {job.error or job.status}", file=sys.stderr)
        print(f"run {run.id} [{job.status}] -> {run.dir}")
        return 1
    layers = job.comparison.layers
    print(f"Grad-CAM overlap with the teacher ({layers['teacher']}), target = {args.target}, "
          f"{job.result['samples']} images, top-{args.fraction:.0%} IoU")
    print(f"{'student':34} {'layer':14} {'correlation':>11} {'IoU':>7} {'undefined r/IoU':>16}")
    for name, s in job.result["students"].items():
        print(f"{name:34} {layers[name]:14} {_fmt(s['correlation_mean']):>11} {_fmt(s['iou_mean']):>7} "
              f"{s['correlation_undefined']:>8}/{s['iou_undefined']}")
    print(f"run {run.id} [{job.status}] -> {run.dir} (gradcam.json, gradcam_maps.pt, gradcam_overlays.png)")
    return 0


def _common(p: argparse.ArgumentParser, samples: int, batch_size: int) -> None:
    p.add_argument("--teacher", required=True, help="checkpoint path or run id")
    p.add_argument("--student", required=True, help="checkpoint path or run id")
    p.add_argument("--inputs", default="real", help="'real' (teacher's test split) or a synthesis run id")
    p.add_argument("--samples", type=int, default=samples, help="number of inputs (0: all)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")


def add_commands(sub) -> None:
    c = sub.add_parser("cka", help="layer x layer CKA between a teacher and a student (METHODS §7)")
    _common(c, 2000, 500)
    c.add_argument("--kernel", default="linear", choices=KERNELS)
    c.add_argument("--threshold", type=float, default=1.0, help="RBF bandwidth = threshold x median distance")
    c.add_argument("--layers-teacher", nargs="+", help="layer names (default: every block and the logits)")
    c.add_argument("--layers-student", nargs="+")
    c.add_argument("--reduce", default="flatten", choices=["flatten", "mean"],
                   help="feature maps: flatten (every unit) or mean (global average pool per channel)")
    c.add_argument("--estimator", default="auto", choices=ESTIMATORS,
                   help="full: exact, n<=3000; streaming: exact linear, small features; minibatch: any size")
    c.set_defaults(func=cmd_cka)

    g = sub.add_parser("gradcam", help="Grad-CAM teacher vs students, per-image overlap (METHODS §6)")
    _common(g, 500, 100)
    g.add_argument("--students", nargs="+", help="more students compared on the same images")
    g.add_argument("--target", default="true", choices=TARGETS,
                   help="class explained: true label, each model's own prediction, or the teacher's prediction")
    g.add_argument("--layer-teacher", help="default: the teacher's last block with a spatial map")
    g.add_argument("--layers-students", nargs="+", help="one layer per student, in order")
    g.add_argument("--fraction", type=float, default=0.2, help="top-region size for the IoU")
    g.set_defaults(func=cmd_gradcam)
