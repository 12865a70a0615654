"""`dfkd` command line: train teachers, synthesize, distill, list runs. Every command runs a job and shows its
events as a progress bar; results land in the run store ($DFKD_HOME, default ~/.dfkd)."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
import time
from contextlib import contextmanager

from tqdm import tqdm

from dfkd_core.data import DATASETS, DatasetMissingError, load_split
from dfkd_core.jobs import Event, Job
from dfkd_core.models import CheckpointError, describe_model, list_models, load_checkpoint
from dfkd_core.runs import RunStillRunningError, RunStore, UnknownRunError
from dfkd_core.stats import Interval

EXIT = {"done": 0, "failed": 1, "cancelled": 130}


class ProgressBar:
    """Renders a job's events with tqdm: one tick per step, the chosen metrics as postfix. Given the job, the time
    left is the job's own estimate (`Job.time_left`, each kind of step timed apart) in place of tqdm's, which
    assumes every remaining step costs what the recent ones did (an inversion iteration, not a student step)."""

    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"

    def __init__(self, keys: tuple[str, ...], quiet: bool = False, job: Job | None = None):
        self.keys, self.quiet, self.bar, self.job = keys, quiet, None, job
        self.left, self.left_at = "", 0.0

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if event.kind == "started":
            self.bar = tqdm(total=event.total, unit="step", dynamic_ncols=True,
                            bar_format=self.BAR_FORMAT if self.job is not None else None)
        elif event.kind == "step" and self.bar is not None:
            self.bar.update(1)
            shown = {k: event.metrics[k] for k in self.keys if k in event.metrics}
            postfix = {k: v if isinstance(v, str) else f"{v:.4g}" for k, v in shown.items()}
            if self.job is not None:
                if time.monotonic() - self.left_at >= 1.0:   # it reads the whole history: once a second
                    left = self.job.time_left()
                    self.left, self.left_at = (left.describe() if left is not None else ""), time.monotonic()
                if self.left:
                    postfix["time"] = self.left
            self.bar.set_postfix(postfix, refresh=False)
        elif event.kind == "updated":
            tqdm.write(f"step {event.step}: {event.message}")
        elif event.kind in ("done", "cancelled", "failed") and self.bar is not None:
            self.bar.close()


def _run_job(job: Job, keys: tuple[str, ...], quiet: bool, report: bool = True) -> int:
    """Run `job` with a progress bar; print where its run is and its summary (`report`: not on torchrun's other
    ranks, which have no run and would print the leader's lines N times). The exit code says how it ended."""
    job.subscribe(ProgressBar(keys, quiet, job))
    job.run()
    if not report:
        if job.status == "failed":
            print(f"error (rank {job.world.rank}): {job.error}", file=sys.stderr)
        return EXIT.get(job.status, 1)
    run = job.run_record
    if job.status == "failed":
        print(f"error: {job.error}", file=sys.stderr)
    if run is not None:
        print(f"run {run.id} [{job.status}] -> {run.dir}")
    print(json.dumps({k: v for k, v in job.result.items() if not isinstance(v, list)}, indent=2, default=str))
    for key in ("teacher_note", "diagnosis", "pool_note", "reproducibility_note"):   # said under the numbers too
        if job.result.get(key):
            print(f"note: {job.result[key]}", file=sys.stderr)
    return EXIT.get(job.status, 1)


def _load(store: RunStore, ref: str, what: str):
    try:
        return load_checkpoint(store.resolve_checkpoint(ref))
    except (CheckpointError, FileNotFoundError) as e:
        raise SystemExit(f"error: cannot use {what} '{ref}': {e}")


def _load_student(store: RunStore, ref: str, teacher, what: str = "student"):
    """A student to compare with `teacher`: a stored checkpoint, or `untrained:<model>` (a fresh reference)."""
    from dfkd_core.models.reference import is_untrained, untrained_reference
    if not is_untrained(ref):
        return _load(store, ref, what)
    try:
        return untrained_reference(ref, teacher)
    except ValueError as e:
        raise SystemExit(f"error: cannot use {what} '{ref}': {e}")


# ---------------------------------------------------------------- commands

def cmd_train_teacher(args, store: RunStore) -> int:
    from dfkd_core.training import TeacherConfig, TeacherTraining

    config = TeacherConfig(dataset=args.dataset, model=args.model or "", epochs=args.epochs or 0,
                           batch_size=args.batch_size, lr=args.lr, augment=args.augment, seed=args.seed,
                           device=args.device, data_root=args.data_root).resolved()
    try:  # fail before creating a run: a bad setting or a missing dataset is the user's fix, not a failed run
        config.validate()
        load_split(config.dataset, "test", config.data_root)
    except (DatasetMissingError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    run = store.create("teacher", config.to_dict(), method=config.model, dataset=config.dataset,
                       name=config.run_name())
    return _run_job(TeacherTraining(config, run), ("loss", "test_accuracy", "epoch"), args.quiet)


def cmd_synthesize(args, store: RunStore) -> int:
    from dfkd_core.distributed import init_from_environment, shutdown, signals_request_cancel, stop_signals
    from dfkd_core.synthesis import ModelInversion, SynthesisConfig
    from dfkd_core.synthesis.sharded import ShardedSynthesis

    teacher = _load(store, args.teacher, "teacher")
    student = _load(store, args.student, "student").model if args.student else None
    overrides = {k: getattr(args, k) for k in (
        "batch_size", "iterations", "lr", "alpha_ce", "alpha_tv", "alpha_l2", "alpha_f", "alpha_c",
        "alpha_cr", "first_bn_multiplier", "jitter", "flip", "seed", "device", "snapshot_every")}
    overrides["multi_resolution_iterations"] = args.multi_resolution
    try:
        overrides["targets"] = [int(t) for t in args.targets.split(",")] if args.targets else None
    except ValueError:
        raise SystemExit(f"error: --targets takes comma-separated class indices like 0,3,7; got '{args.targets}'")
    overrides["amp"] = not args.no_amp
    overrides["cpu_bf16"] = args.cpu_bf16
    world = init_from_environment(args.device or "auto")   # torchrun's processes join one group; a plain run: none
    try:  # every check (settings, teacher, student) before the run exists: a typo is not a failed run
        config = SynthesisConfig.preset(args.method, teacher.dataset.name, **overrides)
        config.device = world.device_name(config.device)
        if args.batches == 1 and not world.active:
            job = ModelInversion(teacher.model, teacher.dataset, config, student=student,
                                 teacher_test_accuracy=teacher.metrics.get("test_accuracy"))
        else:
            job = ShardedSynthesis(teacher.model, teacher.dataset, config, args.batches, world, student=student)
    except ValueError as e:
        shutdown(world, synchronize=False)
        raise SystemExit(f"error: {e}")
    if world.leader:
        title = config.title() + (f" ×{args.batches} batches" if args.batches > 1 else "")
        job.run_record = store.create("synthesis", {**config.to_dict(), "batches": args.batches,
                                                    "processes": world.world, "teacher": teacher.path},
                                      teacher=store.run_id_of(teacher.path), method=config.method,
                                      dataset=teacher.dataset.name, name=f"{title} · {teacher.name}")
    if world.active and args.batches < world.world:
        print(f"note: {args.batches} batch(es) over {world.world} processes: {world.world - args.batches} process(es) "
              "have nothing to do; --batches sets how many batches the pool has", file=sys.stderr)
    try:
        with signals_request_cancel(job, stop_signals(world)) if world.active else _no_handlers():
            return _run_job(job, ("loss_total", "bn_distance", "teacher_accuracy"), args.quiet or not world.leader,
                            report=world.leader)
    finally:
        shutdown(world)


@contextmanager
def _no_handlers():
    """A one-process synthesis keeps Python's Ctrl-C: it stops the batch at once, which is saved as it is."""
    yield


def cmd_runs(args, store: RunStore) -> int:
    records = store.list(kind=args.kind)
    if args.json:
        print(json.dumps([{**r.__dict__, "dir": str(r.dir)} for r in records], indent=2, default=str))
        return 0
    if not records:
        print(f"no runs in {store.home}")
        return 0
    key_metrics = ("test_accuracy", "teacher_accuracy", "student_accuracy", "bn_distance_end", "ratio")
    print(f"{'id':36} {'kind':10} {'status':11} {'dataset':14} {'method':16} {'teacher':28} metrics")
    for r in records:
        shown = " ".join(_metric_text(k, r.summary) for k in key_metrics
                         if isinstance(r.summary.get(k), (int, float)))
        teacher = r.teacher or "-"   # a run id fits whole (28 characters); a long path keeps its end, marked cut
        teacher = teacher if len(teacher) <= 28 else "…" + teacher[-27:]
        method = r.method or "-"   # 'imported torchvision:resnet18' would push the columns after it
        method = method if len(method) <= 16 else method[:15] + "…"
        print(f"{r.id:36} {r.kind:10} {r.status:11} {r.dataset or '-':14} {method:16} {teacher:28} "
              f"{shown}")
    return 0


def _metric_text(key: str, summary: dict) -> str:
    """'student_accuracy=0.8605[0.8537,0.8672]' when the run stored the metric's 95% interval, else the value."""
    stored = summary.get(f"{key}_ci")
    if isinstance(stored, dict):
        ci = Interval.from_dict(stored)
        if ci.defined:
            return f"{key}={summary[key]:.4g}[{ci.low:.4g},{ci.high:.4g}]"
    return f"{key}={summary[key]:.4g}"


def cmd_models(args, store: RunStore) -> int:
    for name in list_models():
        made = "" if name in list_models(from_scratch=True) else " (not trained from scratch)"
        print(f"{name:18} {describe_model(name)}{made}")
    return 0


def cmd_delete(args, store: RunStore) -> int:
    try:
        record = store.delete(args.run)
    except (UnknownRunError, RunStillRunningError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"deleted {record.kind} run {record.id} ({record.status}) and its directory {record.dir}")
    return 0


# ---------------------------------------------------------------- parser

class ShowDefaults(argparse.RawDescriptionHelpFormatter):
    """Each flag's help ends with its default where it has a fixed one; a flag without one (None: the recipe's or
    the preset's value, said in its help) and a switch stay as they are. Descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        fixed = not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and not isinstance(
            action, (argparse._StoreTrueAction, argparse._HelpAction, argparse._VersionAction))
        if fixed and "%(default)" not in text and (action.option_strings or action.nargs in ("?", "*")):
            text += " (default: %(default)s)"
        return text


def describe_synthesis_defaults(parser: argparse.ArgumentParser, keys: dict[str, str] | None = None) -> None:
    """Give each inversion flag without a default of its own (None: the preset decides) the preset's values in its
    help. `keys`: flag dest → SynthesisConfig field where they differ."""
    from dfkd_core.synthesis import SynthesisConfig
    fields = set(SynthesisConfig.__dataclass_fields__)
    for action in parser._actions:
        key = (keys or {}).get(action.dest, action.dest)
        if not action.option_strings or action.default is not None or key not in fields or key == "method":
            continue
        if action.help and "default" in action.help:
            continue
        text = f"default: {SynthesisConfig.describe_default(key)}".replace("%", "%%")
        action.help = f"{action.help} ({text})" if action.help else text


class Parser(argparse.ArgumentParser):
    """Every `dfkd` command's parser: `ShowDefaults` unless a command asks for another formatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", ShowDefaults)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from dfkd_core.training import DEFAULT_EPOCHS
    p = Parser(prog="dfkd", description=__doc__)
    p.add_argument("--home", help="run store directory (default $DFKD_HOME or ~/.dfkd)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    t = sub.add_parser("train-teacher", help="train a BN CNN teacher on a real dataset")
    t.add_argument("--dataset", default="digits", choices=sorted(DATASETS), help="what it learns from")
    t.add_argument("--model", help=f"registered model (default per dataset); one of "
                                   f"{', '.join(list_models(from_scratch=True))}")
    t.add_argument("--data-root", help="dataset directory (Fashion-MNIST default: Debian's package location)")
    t.add_argument("--epochs", type=int, help="passes over the training set (default per dataset: " + ", ".join(
        f"{d} {e}" for d, e in DEFAULT_EPOCHS.items()) + ")")
    t.add_argument("--batch-size", type=int, default=64, help="images per step")
    t.add_argument("--lr", type=float, default=3e-3, help="AdamW's peak learning rate (one-cycle schedule)")
    t.add_argument("--augment", default="none", choices=["none", "crop", "crop_flip"],
                   help="random 2-pixel shifts, and horizontal flips")
    t.add_argument("--seed", type=int, default=0, help="initialisation and batch order")
    t.add_argument("--device", default="auto", help="auto: CUDA when present, else the CPU; or cpu, cuda, cuda:1")
    t.set_defaults(func=cmd_train_teacher)

    s = sub.add_parser("synthesize", help="invert a teacher into images (DeepDream / DeepInversion / ADI)")
    s.add_argument("--teacher", required=True, help="checkpoint path or teacher run id")
    s.add_argument("--method", default="deepinversion", choices=["deepdream", "deepinversion", "adi"],
                   help="the inversion objective (docs/methods.md#model-inversion)")
    s.add_argument("--student", help="checkpoint or run id of the student ADI competes against")
    s.add_argument("--batches", type=int, default=1,
                   help="batches in the pool (batch k uses seed + k); under torchrun they are shared by the processes")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--iterations", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--alpha-ce", type=float, help="weight of CE(T(x̂), y)")
    s.add_argument("--alpha-tv", type=float, help="α_tv: total-variation prior")
    s.add_argument("--alpha-l2", type=float, help="α_l2: L2 prior")
    s.add_argument("--alpha-f", type=float, help="α_f: BN feature-statistics loss (DeepInversion)")
    s.add_argument("--alpha-c", type=float, help="α_c: competition loss (Adaptive DI)")
    s.add_argument("--alpha-cr", type=float, help="α_cr: CMI's contrastive diversity term (0 = off)")
    s.add_argument("--first-bn-multiplier", type=float)
    s.add_argument("--jitter", type=int)
    s.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None)
    s.add_argument("--multi-resolution", type=int, default=0, help="first K iterations at half resolution")
    s.add_argument("--targets", help="comma-separated classes to synthesize (default: all, cycled)")
    s.add_argument("--seed", type=int)
    s.add_argument("--device")
    s.add_argument("--snapshot-every", type=int)
    s.add_argument("--no-amp", action="store_true",
                   help="float32 everywhere (default: bfloat16 autocast on CUDA, and on a CPU with --cpu-bf16)")
    s.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for the inversion on a CPU with native bf16 (AVX512-BF16/AMX): "
                        "1.4-1.5x faster, slightly different numbers; default: the recipe's setting, else "
                        "$DFKD_CPU_BF16")
    describe_synthesis_defaults(s)
    s.set_defaults(func=cmd_synthesize)

    r = sub.add_parser("runs", help="list stored runs")
    r.add_argument("--kind", help="teacher | synthesis | distill | ...")
    r.add_argument("--json", action="store_true", help="every field of every run, as JSON")
    r.set_defaults(func=cmd_runs)

    d = sub.add_parser("delete", help="delete a run and its files")
    d.add_argument("run", help="a run id, or a prefix of exactly one (as `dfkd runs` lists them)")
    d.set_defaults(func=cmd_delete)

    m = sub.add_parser("models", help="list registered models")
    m.set_defaults(func=cmd_models)
    _add_extra_commands(sub)
    return p


# Modules that contribute sub-commands with an `add_commands(subparsers)` function; each keeps its own parser
# code so this file stays short. A module not written yet is skipped; an import error inside one is not hidden.
COMMAND_MODULES = ("dfkd_core.distill.cli", "dfkd_core.analysis.cli", "dfkd_core.analysis.boundary_cli",
                   "dfkd_core.applications.cli", "dfkd_core.teacher_import.cli")


def _add_extra_commands(sub) -> None:
    import importlib
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.add_commands(sub)


def _note_line(message, category, filename, lineno, line=None) -> str:
    """A library warning as one line (`note: …`), not Python's file:line form."""
    return f"note: {message}\n"


def main(argv: list[str] | None = None) -> int:
    shown_as, warnings.formatwarning = warnings.formatwarning, _note_line   # restored: main() runs inside tests too
    try:
        try:
            args = build_parser().parse_args(argv)   # --help prints, then exits
        finally:
            sys.stdout.flush()
        store = RunStore(args.home)
        try:
            code = args.func(args, store)
        except DatasetMissingError as e:
            print(f"error: {e}", file=sys.stderr)
            code = 2
        sys.stdout.flush()   # a closed pipe shows here, not in the interpreter's flush at exit
        return code
    except BrokenPipeError:
        # The reader stopped early (`dfkd runs | head -1`): exit quietly as other tools do (128 + SIGPIPE), with
        # stdout on devnull so Python's own flush at exit does not fail a second time (the recipe in Python's docs).
        import os
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass   # stdout is not a real file (captured in tests): nothing is left to flush into the pipe
        return 141
    finally:
        warnings.formatwarning = shown_as


if __name__ == "__main__":
    sys.exit(main())
