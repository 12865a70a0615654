"""Does a recipe hold across teachers and seeds? (issue 19)

Trains (or reuses) teachers with seeds T, and for each runs the distillation recipe with synthesis+KD seeds S:
|T| × |S| students. Prints every student's accuracy and ratio with their 95% intervals over the test images, the
minimum and the mean ratio with a 95% t-interval over the students (the seed-to-seed spread, which the per-run
intervals do not cover), per-class accuracy of the worst student against its teacher, and the time.

The teachers come from `benchmarks/teachers/` where a checkpoint of the asked seed, model, dataset and epochs is
committed there (trained once by this script on a 2-core AMD EPYC, so every session pairs its students with the same
teachers: a run store dies with its machine, and a teacher retrained on another CPU is another teacher); else they are
trained (--train-teachers always trains). `--set key=value` changes one setting of the recipe (dotted for the
synthesis: `--set synthesis.alpha_f=0.3`); such students are named and reused apart from the recipe's own.

A full Fashion-MNIST `fashion-best` table is 9 runs of 20–35 CPU minutes each, so the script resumes: teachers
(found by the run names this script gives them) and students already in the run store are reused, and the table can
be completed over several sittings. A stored student is reused only if it computed what is asked now: the same
teacher, every setting equal to the recipe's current one, and its own pool or an identical one (so a CLI run of the
same computation counts, and after a recipe change the student is run again, the script saying which settings
changed). A student whose pool another stored run already synthesized with the same teacher, seed and synthesis
settings reuses those images and runs only its KD (the table's `pool` column says so; --no-pool-reuse synthesizes
anew).

    python benchmarks/robustness.py --home ~/.dfkd --recipe fashion-best                      # 3 teachers x 3 seeds
    python benchmarks/robustness.py --dataset digits --recipe digits-quick --teacher-epochs 20   # a quick check
    python benchmarks/robustness.py --recipe fashion-best --set synthesis.alpha_f=0.3      # a variant
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

import torch

from dfkd_core.device import describe_machine, precision, resolve_device
from dfkd_core.distill import DistillConfig, DistillJob
from dfkd_core.distill.recipes import adapt_to_precision, float32_note, list_recipes
from dfkd_core.distill.pool import pool_files
from dfkd_core.distill.results import load_test_hits, per_class_accuracy
from dfkd_core.models import load_checkpoint
from dfkd_core.runs import RunStore
from dfkd_core.stats import Interval
from dfkd_core.training import TeacherConfig, TeacherTraining

# Two-sided 95% quantiles of Student's t for small sample sizes (df = n − 1), so no scipy is needed.
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093}


def mean_t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean ± t_{0.975, n−1} · s / √n over runs (NaN bounds below two runs)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def find_run(store: RunStore, kind: str, name: str):
    """The newest finished run of this kind and name (a run this script made before), else None."""
    return next((r for r in store.list(kind=kind, status="done") if r.name == name), None)


# Settings that say where a run ran or where its images came from, not what it computed; and cpu_bf16, a request
# whose outcome (bf16 only on a CPU with native bf16) the compared "precision" records.
_PLACE_KEYS = {"teacher", "pool", "device", "data_root", "cpu_bf16"}
# Settings that decide a pool's images when no KD runs during synthesis (the student cannot steer them then).
_SYNTHESIS_KEYS = {"method", "images", "synthesis", "lambda_tv", "lambda_l2", "lambda_bn", "generator_steps",
                   "generator_lr", "latent_dim", "generator_width", "seed", "kd_steps_per_round", "precision"}


# Two spellings of one setting: the CLI stores processes 1 where the library leaves None (one process either way);
# runs made while the student's weight averaging existed (e57e55f..daf7e55) store swa_from, 1 meaning off. (A run made
# before a setting existed stores nothing for it: `stored_settings` fills in the default it computed with.)
# A run made before runs recorded their precision ran in float32 (the CPU had no bf16 path then); a float32 run that
# asked for bf16 on a CPU without it computed what any float32 run computes.
_SAME_MEANING = {"processes": lambda v: v or 1,
                 "precision": lambda v: "float32" if not v or v.startswith("float32") else v,
                 "swa_from": lambda v: 1.0 if v is None else v}


def stored_settings(store: RunStore, record) -> dict:
    """A stored run's config plus the precision its KD and synthesis computed in (its summary says), which the
    config does not fix: `amp` means bf16 on CUDA, `cpu_bf16` bf16 on CPUs with native bf16, float32 elsewhere.
    A setting added since the run was made is filled in with its default, which is what the run computed with."""
    defaults = {k: v for k, v in DistillConfig().to_dict().items() if k not in _PLACE_KEYS}
    return {**defaults, **store.get(record.id).config(), "precision": (record.summary or {}).get("kd_precision")}


def wanted_settings(config: DistillConfig) -> dict:
    """The settings of the run `config` would make on this machine, its precision included."""
    return {**config.to_dict(), "precision": precision(resolve_device(config.device), config.amp, cpu=config.cpu_bf16)}


def config_differences(stored: dict, wanted: dict, keys=None) -> list[str]:
    """'key: stored → wanted' for each setting where a stored run's config differs from the one asked for."""
    keys = sorted((set(stored) | set(wanted)) - _PLACE_KEYS if keys is None else keys)
    same = {k: _SAME_MEANING.get(k, lambda v: v) for k in keys}
    return [f"{k}: {same[k](stored.get(k))} → {same[k](wanted.get(k))}" for k in keys
            if same[k](stored.get(k)) != same[k](wanted.get(k))]


def _same_path(a, b) -> bool:
    return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()


def is_pool_source(store: RunStore, images: str | Path, teacher_path: str, wanted: dict) -> bool:
    """`images` is the images.pt of a finished run that synthesized it itself, with this teacher, these synthesis
    settings and seed, and no KD during synthesis (the student then cannot shape the images): the pool `wanted`
    would synthesize. Reusing it repeats that run's KD exactly (tests/test_distill.py), minus the synthesis time."""
    if not isinstance(images, (str, Path)):   # several pools joined: not the pool one synthesis makes
        return False
    images = Path(images)
    if wanted.get("kd_steps_per_round") != 0 or images.name != "images.pt" or not images.is_file():
        return False
    try:
        source = store.get(images.parent.name)
    except (KeyError, ValueError, FileNotFoundError):
        return False
    record = source.record()
    stored = stored_settings(store, record)
    return (_same_path(source.dir, images.parent) and record.status == "done"
            and _same_path(stored.get("teacher"), teacher_path) and not stored.get("pool")
            and not config_differences(stored, wanted, _SYNTHESIS_KEYS))


def same_student(store: RunStore, stored: dict, wanted: dict, teacher_path: str) -> bool:
    """A stored config computed the student asked for: same teacher, every setting equal, and its own pool or an
    identical one reused."""
    if not _same_path(stored.get("teacher"), teacher_path) or config_differences(stored, wanted):
        return False
    return not stored.get("pool") or is_pool_source(store, stored["pool"], teacher_path, wanted)


def find_student(store: RunStore, name: str, wanted: dict, teacher_path: str):
    """The newest finished student computed with exactly the settings asked for (this script's run of that name, or
    any run that did the same computation, e.g. from the CLI), and, when there is none, the differences of the
    newest run of that name (a recipe changed since it ran), so a stale student is never reused silently."""
    stale = []
    for record in store.list(kind="distill", status="done"):
        stored = stored_settings(store, record)
        if same_student(store, stored, wanted, teacher_path):
            return record, []
        if record.name == name and not stale:
            stale = config_differences(stored, wanted) or ["another teacher or pool"]
    return None, stale


def reusable_pool(store: RunStore, teacher_path: str, wanted: dict):
    """A finished run whose stored images.pt is the pool this config would synthesize (is_pool_source), else None."""
    return next((r for r in store.list(kind="distill", status="done")
                 if is_pool_source(store, r.dir / "images.pt", teacher_path, wanted)), None)


def teacher_name(args, seed: int) -> str:
    return f"robustness teacher {args.teacher_model} {args.dataset} seed {seed} ({args.teacher_epochs} epochs)"


TEACHERS_DIR = Path(__file__).parent / "teachers"


def committed_teacher(args, seed: int) -> Path:
    """Where the committed checkpoint of this teacher lies (it may not exist); its run's summary lies beside it."""
    return TEACHERS_DIR / f"{args.dataset}-{args.teacher_model}-{args.teacher_epochs}ep-seed{seed}.pt"


def import_teacher(path: Path, name: str, store: RunStore):
    """A finished teacher run in `store` made of a committed checkpoint and the summary of the run that trained it."""
    checkpoint = load_checkpoint(path)   # refuses a file that is not a checkpoint of this tool, before a run exists
    summary = json.loads(path.with_suffix(".json").read_text())
    run = store.create("teacher", {**summary.get("config", {}), "imported_from": str(path)},
                       method=checkpoint.model_cfg["name"], dataset=checkpoint.dataset.name, name=name)
    shutil.copyfile(path, run.dir / "model.pt")
    run.set_status("done", {**summary["summary"], "checkpoint": str(run.dir / "model.pt"),
                            "imported_from": str(path)})
    print(f"  {name}: {summary['summary']['test_accuracy']:.2%}, imported from {path}", flush=True)
    return run.record()


def export_teacher(record, path: Path, store: RunStore) -> None:
    """Write a stored teacher run where `committed_teacher` looks: the checkpoint and, beside it, its summary,
    config and machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(record.dir / "model.pt", path)
    summary = {k: v for k, v in record.summary.items() if k != "checkpoint"}
    path.with_suffix(".json").write_text(json.dumps(
        {"summary": summary, "config": store.get(record.id).config(), "run": record.id,
         "machine": describe_machine()}, indent=2) + "\n")


def teacher_for(seed: int, args, store: RunStore):
    name = teacher_name(args, seed)
    record = find_run(store, "teacher", name)
    committed = committed_teacher(args, seed)
    if record is None and not args.train_teachers and committed.is_file():
        record = import_teacher(committed, name, store)
    if record is None:
        job = TeacherTraining(TeacherConfig(dataset=args.dataset, model=args.teacher_model,
                                            epochs=args.teacher_epochs, seed=seed, data_root=args.data_root))
        job.run_record = store.create("teacher", job.config.to_dict(), method=job.config.model,
                                      dataset=args.dataset, name=name)
        job.run()
        if job.status != "done":
            raise SystemExit(f"teacher seed {seed}: {job.status}: {job.error}")
        record = job.run_record.record()
        print(f"  {name}: {job.result['test_accuracy']:.2%}", flush=True)
    return record


def student_name(args, teacher_seed: int, seed: int) -> str:
    variant = "".join(f" {k}={v}" for k, v in sorted(args.set.items()))
    return (f"robustness {args.method} [{args.recipe}{variant}] {args.teacher_model} teacher seed {teacher_seed} "
            f"seed {seed}")


def parse_settings(pairs: list[str]) -> dict:
    """`--set key=value` pairs as recipe overrides: `synthesis.x=v` goes into the synthesis dict; values are read as
    JSON (numbers, true/false), else kept as text."""
    settings: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set takes key=value (e.g. synthesis.alpha_f=0.3), got {pair!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        group, dot, name = key.partition(".")
        if dot:
            settings.setdefault(group, {})[name] = value
        else:
            settings[key] = value
    return settings


def recipe_settings(args) -> tuple[dict, dict]:
    """The recipe as `dfkd distill --recipe` runs it on this machine (its float32 settings on a CPU without bf16),
    with `--set` winning, and what changed for float32."""
    return adapt_to_precision(args.recipe, args.method, {**args.overrides, "device": args.device})


def student_config(args, seed: int) -> DistillConfig:
    return DistillConfig(method=args.method, seed=seed, data_root=args.data_root, **recipe_settings(args)[0])


def student_for(teacher_record, teacher_seed: int, seed: int, args, store: RunStore):
    name = student_name(args, teacher_seed, seed)
    config = student_config(args, seed)
    teacher_path = str(teacher_record.dir / "model.pt")
    record, stale = find_student(store, name, wanted_settings(config), teacher_path)
    if record is not None:
        return record
    if stale:
        print(f"  {name}: the stored student was made with other settings ({'; '.join(stale)}); running it again",
              flush=True)
    teacher = load_checkpoint(teacher_record.dir / "model.pt")
    source = None if args.no_pool_reuse else reusable_pool(store, teacher_path, wanted_settings(config))
    if source is not None:
        config.pool = str(source.dir / "images.pt")
        print(f"  {name}: reusing the identical pool of {source.id} (synthesis skipped)", flush=True)
    job = DistillJob(teacher, config)
    job.run_record = store.create("distill", {**config.to_dict(), "teacher": str(teacher.path)},
                                  teacher=teacher_record.id, method=args.method, dataset=teacher.dataset.name,
                                  name=name)
    started = time.time()
    job.run()
    if job.status != "done":
        raise SystemExit(f"{name}: {job.status}: {job.error}")
    print(f"  {name}: {job.result['student_accuracy']:.2%} in {(time.time() - started) / 60:.1f} min", flush=True)
    return job.run_record.record()


def pool_source(store: RunStore, record) -> str:
    """'own' when the run synthesized its pool, else the run it reused it from (its minutes are KD only)."""
    sources = pool_files(store.get(record.id).config().get("pool"))
    return "own" if not sources else f"reused from {', '.join(p.parent.name for p in sources)} (KD time only)"


def per_class(record) -> dict[str, list[float]]:
    hits = load_test_hits(record)
    labels = hits["labels"]
    num_classes = int(labels.max()) + 1
    return {model: per_class_accuracy(h, labels, num_classes) for model, h in hits["hits"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="run store (default $DFKD_HOME or ~/.dfkd); reused between sittings")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root")
    p.add_argument("--teacher-model", default="bncnn6_w32")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--teachers", type=int, nargs="+", default=[0, 1, 2], help="teacher seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="synthesis+KD seeds per teacher")
    p.add_argument("--method", default="deepinversion")
    p.add_argument("--recipe", default="fashion-best", choices=list_recipes())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target", type=float, default=0.95,
                   help="the ratio every student should reach (issue 19: 0.95; the LeNet pair: 0.90)")
    p.add_argument("--device", default="auto")
    p.add_argument("--only-table", action="store_true", help="print the table of what is stored; run nothing")
    p.add_argument("--no-pool-reuse", action="store_true",
                   help="synthesize every student's pool even when an identical one is stored")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change one setting of the recipe (synthesis.KEY for the inversions); repeat for several")
    p.add_argument("--train-teachers", action="store_true",
                   help="train the teachers here even where benchmarks/teachers/ has them")
    p.add_argument("--export-teachers", action="store_true",
                   help="write the stored teachers to benchmarks/teachers/ (what later sessions import)")
    args = p.parse_args()
    args.overrides = parse_settings(args.set)
    args.set = {k: v for pair in args.set for k, v in [pair.split("=", 1)]}
    torch.set_num_threads(args.threads)
    adjusted = recipe_settings(args)[1]
    if adjusted:
        print(f"note: {float32_note(args.recipe, adjusted)}")
    store = RunStore(args.home)
    rows, started = [], time.time()
    for teacher_seed in args.teachers:
        if args.only_table:
            teacher = find_run(store, "teacher", teacher_name(args, teacher_seed))
            if teacher is None:
                continue
        else:
            teacher = teacher_for(teacher_seed, args, store)
        if args.export_teachers:   # teachers only: no students
            export_teacher(teacher, committed_teacher(args, teacher_seed), store)
            print(f"  teacher seed {teacher_seed}: written to {committed_teacher(args, teacher_seed)}")
            continue
        for seed in args.seeds:
            if args.only_table:
                record, stale = find_student(store, student_name(args, teacher_seed, seed),
                                             wanted_settings(student_config(args, seed)), str(teacher.dir / "model.pt"))
                if record is None:
                    if stale:
                        print(f"  teacher seed {teacher_seed} seed {seed}: only a student of other settings is "
                              f"stored ({'; '.join(stale)}); left out")
                    continue
            else:
                record = student_for(teacher, teacher_seed, seed, args, store)
            rows.append((teacher_seed, seed, record))
    if args.export_teachers:
        return
    if not rows:
        raise SystemExit("no student in the run store yet")
    print(f"\n{args.method} [{args.recipe}{''.join(f' {k}={v}' for k, v in sorted(args.set.items()))}], {args.dataset}: {args.teacher_model} teachers → students "
          f"(95% intervals over the test images)\nmachine: {describe_machine()}\n")
    print("| teacher seed | teacher acc | seed | student acc | ratio | minutes | pool | precision |")
    print("|---|---|---|---|---|---|---|---|")
    ratios = []
    for teacher_seed, seed, record in rows:
        s = record.summary
        fmt = {k: Interval.from_dict(s[f"{k}_ci"]).format(".2%" if k != "ratio" else ".3f")
               for k in ("teacher_accuracy", "student_accuracy", "ratio")}
        ratios.append(s["ratio"])
        computed_in = _SAME_MEANING["precision"](s.get("kd_precision"))
        print(f"| {teacher_seed} | {fmt['teacher_accuracy']} | {seed} | {fmt['student_accuracy']} | {fmt['ratio']} "
              f"| {s['wall_minutes']:.1f} | {pool_source(store, record)} | {computed_in} |")
    mean, low, high = mean_t_interval(ratios)
    print(f"\n{len(ratios)} students: ratio min {min(ratios):.4f}, mean {mean:.3f} (95% t-interval over students "
          f"[{low:.3f}, {high:.3f}]); {sum(r >= args.target for r in ratios)} of {len(ratios)} at or above "
          f"{args.target:.3f}")
    worst = min(rows, key=lambda row: row[2].summary["ratio"])
    names = load_checkpoint(worst[2].dir / "model.pt").dataset.class_names
    classes = per_class(worst[2])
    print(f"\nper-class accuracy of the worst student (teacher seed {worst[0]}, seed {worst[1]}):\n")
    print("| class | teacher | student | gap |")
    print("|---|---|---|---|")
    for k, (t, st) in enumerate(zip(classes["teacher"], classes["student"])):
        print(f"| {names[k] if names else k} | {t:.1%} | {st:.1%} | {st - t:+.1%} |")
    print(f"\nthis sitting: {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
