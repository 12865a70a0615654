"""`dfkd cka` and `dfkd gradcam`: compare a teacher with students; print a table (or `--json`), save an "analysis"
run. Every number comes with its 95% interval (resampled inputs); everything is checked before the run exists."""
from __future__ import annotations

import argparse
import json
import math
import sys

from dfkd_core.analysis.cka import KERNELS, RBF_BANDWIDTHS
from dfkd_core.analysis.cka_intervals import CKA_RESAMPLES
from dfkd_core.analysis.cka_matrix import ESTIMATORS
from dfkd_core.analysis.gradcam import TARGETS
from dfkd_core.analysis.labels import student_label, teacher_label
from dfkd_core.stats import Interval


def _models(store, refs: list[str], what: str):
    """The teacher (`refs[0]`) and the students; a student may be `untrained:<model>`, a fresh reference."""
    from dfkd_core.cli import _load, _load_student
    teacher = _load(store, refs[0], what)
    return [teacher, *(_load_student(store, ref, teacher) for ref in refs[1:])]


def json_ready(obj):
    """NaN → None, recursively: what `--json` prints is valid JSON."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _fmt_interval(interval: Interval, spec: str = ".3f") -> str:
    """'0.912 [0.893, 0.929]'; 'nan' or '0.912 [no interval]' when undefined."""
    if math.isnan(interval.estimate):
        return "nan"
    if not interval.defined:
        return f"{format(interval.estimate, spec)} [no interval]"
    return interval.format(spec)


def print_cka_table(result) -> None:
    """Teacher layers as rows, student layers as columns, every cell with its interval."""
    width = max(len(n) for n in result.layers_teacher) + 2
    col = max(22, *(len(n) for n in result.layers_student))
    print(f"{result.quantity}, {result.estimator} estimator, {result.samples:,} inputs "
          f"(rows: teacher layers, columns: student layers)")
    if result.note:
        print(f"note: {result.note}")
    resamples = f", {result.resamples} resamples" if result.resamples else ""
    has_intervals = result.low is not None and any(not math.isnan(v) for v in result.low.flatten().tolist())
    print(f"[95% interval: {result.interval_method}{resamples}]" if has_intervals else
          f"[{result.interval_method}]" if result.interval_method.startswith("no interval") else
          "[no intervals: --resamples 0]")
    print(" " * width + " ".join(f"{c:>{col}}" for c in result.layers_student))
    for t in result.layers_teacher:
        print(f"{t:<{width}}" + " ".join(f"{_fmt_interval(result.interval(t, s)):>{col}}"
                                          for s in result.layers_student))


def _check_layers(model, layers) -> None:
    from dfkd_core.analysis.features import resolve_layers
    try:
        resolve_layers(model.model, [layer for layer in layers if layer])
    except ValueError as e:
        raise SystemExit(f"error: {e}")


def _check_before_run(config, teacher, students: dict) -> None:
    """Settings and the teacher/student pairs, before anything is loaded or stored (one sentence each)."""
    from dfkd_core.analysis.checks import require_comparable
    try:
        config.validate()
        for ref, student in students.items():
            require_comparable(teacher, student, f"student '{ref}'")
    except ValueError as e:
        raise SystemExit(f"error: {e}")


def _start_run(store, kind_method: str, config, teacher, name: str):
    return store.create("analysis", config.to_dict(), teacher=store.run_id_of(teacher.path), method=kind_method,
                        dataset=teacher.dataset.name, name=name)


def _inputs(args, store, teacher):
    """The analysis inputs; says before the run when fewer exist than were asked for."""
    from dfkd_core.analysis.jobs import load_inputs
    from dfkd_core.data import DatasetMissingError
    try:
        inputs = load_inputs(args.inputs, teacher.dataset, args.samples, args.seed, store, args.data_root)
    except (KeyError, FileNotFoundError, ValueError, DatasetMissingError) as e:
        raise SystemExit(f"error: cannot use inputs '{args.inputs}': {e}")
    if inputs.note:
        print(f"note: {inputs.note}")
    return inputs


def cmd_cka(args, store) -> int:
    from dfkd_core.analysis.jobs import CKAAnalysis, CKAConfig
    from dfkd_core.cli import ProgressBar

    if len(args.student) > 1:   # argparse would keep only the last: never drop a model the user named
        raise SystemExit(f"error: cka compares one student with the teacher, got {len(args.student)} --student; "
                         "run it once per student")
    args.student = args.student[0]
    teacher, student = _models(store, [args.teacher, args.student], "model")
    config = CKAConfig(teacher=args.teacher, student=args.student, kernel=args.kernel, threshold=args.threshold,
                       bandwidth=args.bandwidth, layers_teacher=args.layers_teacher or [],
                       layers_student=args.layers_student or [], inputs=args.inputs, samples=args.samples,
                       batch_size=args.batch_size, reduce=args.reduce, estimator=args.estimator,
                       resamples=args.resamples, seed=args.seed, device=args.device, data_root=args.data_root)
    _check_before_run(config, teacher, {args.student: student})
    _check_layers(teacher, config.layers_teacher)
    _check_layers(student, config.layers_student)
    inputs = _inputs(args, store, teacher)
    # No kernel in the name: an 'auto' or minibatch estimator may answer another quantity (the summary keeps it).
    run = _start_run(store, "cka", config, teacher, f"CKA {teacher_label(store, teacher)} vs "
                     f"{student_label(store, args.student, student)} ({args.inputs})")
    job = CKAAnalysis(teacher.model, student.model, inputs.images, config, run, samples_note=inputs.note)
    job.subscribe(ProgressBar(("samples",), args.quiet))
    job.run()
    if job.status != "done" or not hasattr(job, "cka"):
        print(f"error: {job.error or job.status}", file=sys.stderr)
        print(f"run {run.id} [{job.status}] -> {run.dir}")
        return 1
    if args.json:
        print(json.dumps(json_ready({"run": run.id, **job.result, "cka": job.cka.to_dict()}), indent=2))
        return 0
    print_cka_table(job.cka)
    if inputs.note:
        print(f"note: {inputs.note}")
    print(f"run {run.id} [{job.status}] -> {run.dir} (cka.json, cka_heatmap.json)")
    return 0


def print_gradcam_table(result: dict, fraction: float) -> None:
    """One row per student: mean correlation and top-region IoU with their intervals over images; then the paired
    differences between students (later − earlier)."""
    print(f"Grad-CAM overlap with the teacher ({result['layers']['teacher']}), target = {result['target']}, "
          f"{result['samples']:,} images, top-{fraction:.0%} IoU; [95% interval: percentile bootstrap over images]")
    print(f"{'student':34} {'layer':14} {'correlation':>22} {'IoU':>22} {'undefined r/IoU':>16}")
    for name, s in result["students"].items():
        r, iou = (Interval.from_dict(s[k]) for k in ("correlation_interval", "iou_interval"))
        print(f"{name:34} {result['layers'][name]:14} {_fmt_interval(r):>22} {_fmt_interval(iou):>22} "
              f"{s['correlation_undefined']:>8}/{s['iou_undefined']}")
    print("above chance (the teacher's map against the student's map of another image; paired 95% interval):")
    for name, s in result["students"].items():
        sizes = f"maps {'×'.join(map(str, s['teacher_map_size']))} (teacher), {'×'.join(map(str, s['map_size']))}"
        print(f"  {name:32} r {_fmt_interval(Interval.from_dict(s['correlation_above_chance']), '+.3f')}, IoU "
              f"{_fmt_interval(Interval.from_dict(s['iou_above_chance']), '+.3f')}; {sizes} cells before upsampling")
    if result.get("differences"):
        print("paired differences on the same images (95% interval, images defined for both):")
        for d in result["differences"]:
            for metric, label in (("correlation", "r"), ("iou", "IoU")):
                interval = Interval.from_dict(d[metric])
                print(f"  {label}({d['student_a']}) − {label}({d['student_b']}) = "
                      f"{_fmt_interval(interval, '+.3f')} over {interval.units} images")
    if result.get("samples_note"):
        print(f"note: {result['samples_note']}")


def cmd_gradcam(args, store) -> int:
    from dfkd_core.analysis.jobs import GradCAMAnalysis, GradCAMConfig
    from dfkd_core.cli import ProgressBar

    refs = args.student + (args.students or [])   # --student repeats (as in `dfkd boundary`), --students lists
    teacher, *students = _models(store, [args.teacher] + refs, "model")
    # How each student was made and its run (as `dfkd boundary` names them), not "student1": the names are what the
    # table, gradcam.json and the app's Attention page show.
    names = [student_label(store, ref, s) for ref, s in zip(refs, students)]
    names = [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]
    config = GradCAMConfig(teacher=args.teacher, students=refs, target=args.target,
                           layer_teacher=args.layer_teacher or "", layers_students=args.layers_students or [],
                           fraction=args.fraction, inputs=args.inputs, samples=args.samples,
                           batch_size=args.batch_size, seed=args.seed, device=args.device, data_root=args.data_root)
    _check_before_run(config, teacher, dict(zip(refs, students)))
    _check_layers(teacher, [config.layer_teacher])
    for s, layer in zip(students, config.layers_students):
        _check_layers(s, [layer])
    inputs = _inputs(args, store, teacher)
    if args.target == "true" and inputs.labels is None:
        raise SystemExit("error: these inputs have no labels; use --target predicted or --target teacher")
    run = _start_run(store, "gradcam", config, teacher, f"Grad-CAM {teacher_label(store, teacher)} vs "
                     + ", ".join(names))
    job = GradCAMAnalysis(teacher.model, {n: s.model for n, s in zip(names, students)}, inputs.images,
                          inputs.labels, config, teacher.dataset, run, samples_note=inputs.note)
    job.subscribe(ProgressBar((), args.quiet))
    job.run()
    if job.status != "done":
        print(f"error: {job.error or job.status}", file=sys.stderr)
        print(f"run {run.id} [{job.status}] -> {run.dir}")
        return 1
    if args.json:
        print(json.dumps(json_ready({"run": run.id, **job.result}), indent=2))
        return 0
    print_gradcam_table(job.result, args.fraction)
    print(f"run {run.id} [{job.status}] -> {run.dir} (gradcam.json, gradcam_maps.pt, gradcam_overlays.png)")
    return 0


def _common(p: argparse.ArgumentParser, samples: int, batch_size: int) -> None:
    p.add_argument("--teacher", required=True, help="checkpoint path or run id")
    p.add_argument("--student", required=True, action="append",
                   help="checkpoint path or run id, or untrained:<model> (a freshly initialised reference)")
    p.add_argument("--inputs", default="real", help="'real' (teacher's test split) or a synthesis run id")
    p.add_argument("--samples", type=int, default=samples, help="number of inputs (0: all)")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", help="where the teacher's dataset lives (default: $DFKD_<NAME>, then the "
                                       "standard location)")
    p.add_argument("--json", action="store_true", help="print the results, intervals included, as JSON")


def add_commands(sub) -> None:
    c = sub.add_parser("cka", help="layer x layer CKA between a teacher and a student (docs/methods.md#cka)")
    _common(c, 2000, 500)
    c.add_argument("--kernel", default="linear", choices=KERNELS,
                   help="the quantity: linear / rbf CKA, or either with the unbiased HSIC estimator")
    c.add_argument("--threshold", type=float, default=1.0,
                   help="RBF: sigma^2 = threshold^2 x median squared distance")
    c.add_argument("--bandwidth", default="reference", choices=RBF_BANDWIDTHS,
                   help="RBF median: reference = over all n^2 squared distances as Kornblith et al.'s code; "
                        "offdiagonal = median distance over distinct pairs (this project's earlier rule)")
    c.add_argument("--layers-teacher", nargs="+", help="layer names (default: every block and the logits)")
    c.add_argument("--layers-student", nargs="+")
    c.add_argument("--reduce", default="flatten", choices=["flatten", "mean"],
                   help="feature maps: flatten (every unit) or mean (global average pool per channel)")
    c.add_argument("--estimator", default="auto", choices=ESTIMATORS,
                   help="full: exact, n<=3000; streaming: exact linear, small features; minibatch: any size, "
                        "estimates debiased CKA (and is reported so)")
    c.add_argument("--resamples", type=int, default=CKA_RESAMPLES,
                   help="resamples for the 95%% intervals: random halves of the inputs (0: none)")
    c.set_defaults(func=cmd_cka)

    g = sub.add_parser("gradcam", help="Grad-CAM teacher vs students, per-image overlap (docs/methods.md#grad-cam)")
    _common(g, 500, 100)
    g.add_argument("--students", nargs="+", help="more students compared on the same images")
    g.add_argument("--target", default="true", choices=TARGETS,
                   help="class explained: true label, each model's own prediction, or the teacher's prediction")
    g.add_argument("--layer-teacher", help="default: the teacher's last block with a spatial map")
    g.add_argument("--layers-students", nargs="+", help="one layer per student, in order")
    g.add_argument("--fraction", type=float, default=0.2, help="top-region size for the IoU")
    g.set_defaults(func=cmd_gradcam)
