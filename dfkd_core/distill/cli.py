"""`dfkd distill`: distill a teacher into a student with any registered method; results land in the run store.
`dfkd distill --resume <run>` continues a stopped one (resume.py)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from dfkd_core.distill.config import DistillConfig
from dfkd_core.distill.methods import DISTILL_METHODS
from dfkd_core.distill.recipes import RECIPES, adapt_to_precision, float32_note, merge_overrides
from dfkd_core.distributed import signals_request_cancel, stop_signals
from dfkd_core.stats import Interval

DEFAULT_METHOD = "deepinversion"

# CLI flag → key of SynthesisConfig for the pool methods' inversion rounds.
SYNTHESIS_FLAGS = {"inv_batch_size": "batch_size", "inv_iterations": "iterations", "inv_lr": "lr",
                   "alpha_tv": "alpha_tv", "alpha_l2": "alpha_l2", "alpha_f": "alpha_f", "alpha_c": "alpha_c",
                   "alpha_cr": "alpha_cr",
                   "first_bn_multiplier": "first_bn_multiplier", "jitter": "jitter",
                   "multi_resolution": "multi_resolution_iterations"}
CONFIG_FLAGS = ("student", "images", "kd_steps_per_round", "generator_steps", "generator_lr", "latent_dim",
                "generator_width",
                "lambda_tv", "lambda_l2", "lambda_bn", "steps", "batch_size", "lr", "temperature", "alpha_ce", "augment",
                "mixup", "cutmix", "teacher_echo", "cpu_bf16",
                "eval_every", "seed", "device", "data_root")


def parse_options(pairs: list[str] | None, method: str) -> dict:
    """`--option key=value` pairs, typed by the method's Options dataclass."""
    options_class = DISTILL_METHODS[method].Options
    types = {f.name: f.type for f in fields(options_class)}
    parsed = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"error: --option {pair!r}: method '{method}' takes "
                             f"{', '.join(f'{k}=<{t}>' for k, t in types.items()) or 'no options'}")
        kind = types[key] if isinstance(types[key], str) else types[key].__name__
        try:
            parsed[key] = (value.lower() in ("1", "true", "yes") if "bool" in kind else int(value) if kind == "int"
                           else float(value) if kind == "float" else value)
        except ValueError:
            raise SystemExit(f"error: --option {key} needs a {kind}, got {value!r}") from None
    return parsed


def config_from_args(args) -> DistillConfig:
    """Flags given on the command line win over the recipe's settings, which win over DistillConfig's defaults."""
    values = {k: getattr(args, k) for k in CONFIG_FLAGS if getattr(args, k) is not None}
    synthesis = {key: getattr(args, flag) for flag, key in SYNTHESIS_FLAGS.items() if getattr(args, flag) is not None}
    method = args.method or DEFAULT_METHOD
    explicit = {**values, "synthesis": synthesis, "options": parse_options(args.option, method)}
    if getattr(args, "no_amp", None):
        explicit["amp"] = False
    if not getattr(args, "recipe", None):
        return DistillConfig(method=method, **merge_overrides({}, explicit))
    try:
        values, adjusted = adapt_to_precision(args.recipe, method, explicit)
    except ValueError as e:   # an unknown recipe (recipe_overrides says which there are)
        raise SystemExit(f"error: {e}") from None
    if adjusted:
        print(f"note: {float32_note(args.recipe, adjusted)}", file=sys.stderr)
    return DistillConfig(method=method, **values)


def images_column(summary: dict) -> str:
    """Images synthesized by the run, or the reused pool's size marked as such (a pool run synthesized none)."""
    made, pool = summary.get("images_synthesized", 0), summary.get("pool_size", 0)
    return f"{made:,}" if made or not pool else f"{pool:,} pool"


def format_result(summary: dict) -> str:
    """The run's one-row table: each accuracy and the ratio with its 95% interval over the real test images."""
    def estimate(key: str, spec: str) -> str:
        return Interval.from_dict(summary[f"{key}_ci"]).format(spec)

    head = (f"{'method':20} {'student acc [95% CI]':>25} {'teacher acc [95% CI]':>25} {'ratio [95% CI]':>22} "
            f"{'minutes':>8} {'images':>8}")
    row = (f"{summary['method']:20} {estimate('student_accuracy', '.4f'):>25} "
           f"{estimate('teacher_accuracy', '.4f'):>25} {estimate('ratio', '.3f'):>22} "
           f"{summary['wall_minutes']:>8.2f} {images_column(summary):>8}")
    precision = f"\nKD computed in {summary['kd_precision']}" if summary.get("kd_precision") else ""
    agreement = summary.get("pool_teacher_agreement")
    pool = (f"\nthe teacher gives {agreement:.0%} of the synthesized images their target class"
            if isinstance(agreement, (int, float)) else "")
    return head + "\n" + row + precision + pool


def run_distillation(job, quiet: bool) -> int:
    """Run with progress bar; the first Ctrl-C stops the run after the step in progress, so its progress save is
    exact and `--resume` continues from there; a second one stops at once (the last progress save stands)."""
    from dfkd_core.cli import _run_job

    leader = job.world.leader
    with signals_request_cancel(job, stop_signals(job.world),
                                "\nstopping after this step (Ctrl-C again to stop at once)" if leader else ""):
        code = _run_job(job, ("phase", "loss_kd", "student_accuracy", "images_synthesized"), quiet or not leader,
                        report=leader)
    if job.result.get("student_accuracy") is not None:
        print(format_result(job.result))
    if leader and job.status == "cancelled" and job.run_record is not None:
        print(f"stopped: the student so far is saved; `dfkd distill --resume {job.run_record.id}` continues the run "
              "where it stopped", file=sys.stderr)
    return code


def cmd_distill(args, store) -> int:
    from dfkd_core.cli import _load
    from dfkd_core.data import DatasetMissingError, load_split
    from dfkd_core.distill.estimate import planned_time
    from dfkd_core.distill.job import DistillJob
    from dfkd_core.distill.pool import PoolError, pool_setting

    from dfkd_core.distributed import environment_world, init_from_environment, shutdown

    if args.resume:
        if environment_world().active:
            raise SystemExit("error: a run resumes in one process: `dfkd distill --resume <run>` without torchrun")
        return cmd_resume(args, store)
    if args.attach_run:
        teacher, config = attached_settings(args, store)
    else:
        if not args.teacher:
            raise SystemExit("error: --teacher is required (a checkpoint path or teacher run id), or --resume <run>")
        teacher = _load(store, args.teacher, "teacher")
        config = config_from_args(args)
    world = init_from_environment(config.device)   # torchrun's processes join one group; a plain run: none
    try:
        config.device = world.device_name(config.device)
        try:
            load_split(teacher.dataset.name, "test", config.data_root, teacher.dataset.image_size)
        except DatasetMissingError as e:   # the teacher's run knows its folder, but a folder is this machine's
            raise DatasetMissingError(f"the student is scored on the real test images of the teacher's dataset: "
                                      f"{e}") from e
        measured_on = RECIPES.get(getattr(args, "recipe", None) or "", {}).get("dataset")
        if measured_on and measured_on != teacher.dataset.name and world.leader:
            print(f"note: recipe {args.recipe} was measured on {measured_on}; this teacher is on "
                  f"{teacher.dataset.name}: its settings run, its times and accuracies were not measured there",
                  file=sys.stderr)
        if args.pool:
            config.pool = pool_setting(store, args.pool)
        job = DistillJob(teacher, config, world=world)   # loads and checks config.pool
    except (DatasetMissingError, PoolError, FileNotFoundError, ValueError) as e:
        shutdown(world, synchronize=False)
        raise SystemExit(f"error: {e}")
    try:
        if world.leader and args.attach_run:
            job.run_record = store.hand_over(args.attach_run)
        elif world.leader:
            teacher_id = store.run_id_of(teacher.path)
            if not args.quiet:   # --steps 60 made 100 student steps: the per-round KD steps come on top
                print(f"plan: {job.method.describe_plan()}", file=sys.stderr)
            if teacher_id and not args.quiet:   # the app shows the same line before its Start
                print(f"time: {planned_time(job, store, teacher_id, world.world).describe()}", file=sys.stderr)
            job.run_record = store.create("distill", {**config.to_dict(), "teacher": teacher.path,
                                                      "processes": world.world},
                                          teacher=store.run_id_of(teacher.path), method=config.method,
                                          dataset=teacher.dataset.name, name=job.title())
        return run_distillation(job, args.quiet)
    finally:
        shutdown(world)


def attached_settings(args, store):
    """The teacher and config of a run another process created for this command to run (`--attach-run`: the app
    starts a multi-process distillation this way); no other setting may be given."""
    from dfkd_core.cli import _load
    given = [k for k in NEW_RUN_SETTINGS if getattr(args, k, None) is not None]
    if given:
        raise SystemExit(f"error: --attach-run runs a run with its own settings; drop "
                         f"{', '.join('--' + k.replace('_', '-') for k in given)}")
    try:
        saved = store.get(args.attach_run).config()
    except KeyError as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None
    teacher = saved.pop("teacher", None)
    saved.pop("processes", None)
    if not teacher:
        raise SystemExit(f"error: run {args.attach_run} names no teacher in its config.json")
    try:
        return _load(store, teacher, "teacher"), DistillConfig.from_dict(saved)
    except ValueError as e:
        raise SystemExit(f"error: run {args.attach_run}'s config.json: {e}") from None


# Settings of a new run; `--resume` continues a run with its own (config in resume.pt), where only the machine's
# settings may differ: where the data lives and which device runs it.
NEW_RUN_SETTINGS = ("teacher", "method", "pool", "recipe", "option", "no_amp", *SYNTHESIS_FLAGS,
                    *(k for k in CONFIG_FLAGS if k not in ("data_root", "device")))


def cmd_resume(args, store) -> int:
    from dfkd_core.cli import _load
    from dfkd_core.data import DatasetMissingError
    from dfkd_core.distill.job import DistillJob
    from dfkd_core.distill.pool import PoolError
    from dfkd_core.runs import RunStillRunningError
    from dfkd_core.distill.resume import ResumeError, load_resume_state

    given = [k for k in NEW_RUN_SETTINGS if getattr(args, k, None) is not None]
    if given:
        raise SystemExit(f"error: --resume continues the run with the settings it was started with; drop "
                         f"{', '.join('--' + k.replace('_', '-') for k in given)} (only --data-root and --device "
                         "may differ)")
    try:
        record = store.get_record(args.resume)
        state = load_resume_state(record)
    except KeyError as e:
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None
    except ResumeError as e:
        raise SystemExit(f"error: {e}") from None
    if not state["teacher"]:
        raise SystemExit(f"error: run {record.id} was distilled from a teacher that is not a saved checkpoint; "
                         "it cannot be loaded again to resume")
    teacher = _load(store, state["teacher"], "teacher")
    config = DistillConfig.from_dict(state["config"])
    config.data_root, config.device = args.data_root or config.data_root, args.device or config.device
    try:
        job = DistillJob(teacher, config, run=store.get(record.id), resume=state)
        job.real_split("test")
    except (DatasetMissingError, PoolError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    try:
        job.run_record = store.reopen(record.id)
    except RunStillRunningError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"resuming run {record.id} ({record.status}) at {job.describe_start()}")
    return run_distillation(job, args.quiet)


def add_commands(sub) -> None:
    methods = ", ".join(f"{name} ({cls.description})" for name, cls in DISTILL_METHODS.items())
    d = sub.add_parser("distill", help="distill a teacher into a student (data-free methods and baselines)",
                       description=f"Methods: {methods}.")
    d.add_argument("--teacher", help="checkpoint path or teacher run id")
    d.add_argument("--resume", metavar="RUN",
                   help="continue a cancelled, failed or interrupted distillation (its id or a unique prefix) from "
                        "its last progress save, with its own settings")
    d.add_argument("--method", choices=list(DISTILL_METHODS), help=f"(default: {DEFAULT_METHOD})")
    d.add_argument("--student", help="registered model name (default: the teacher's half-width student)")
    d.add_argument("--pool", nargs="+", metavar="RUN",
                   help="reuse the images of a synthesis/distill run (id) or an images.pt path; several make one pool "
                        "of all their images")
    d.add_argument("--recipe", choices=list(RECIPES),
                   help="measured settings for a dataset (" + "; ".join(   # argparse %-formats help: "95%" → "95%%"
                       f"{name}: {r['description']}".replace("%", "%%") for name, r in RECIPES.items())
                        + "); flags still win")
    d.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a setting of the chosen method (e.g. IE-KD's lambda_inh=1.0); repeat for several")
    g = d.add_argument_group("synthesis of a pool (deepdream / deepinversion / adi)")
    g.add_argument("--images", type=int, help="images to synthesize in total")
    g.add_argument("--kd-steps-per-round", type=int, help="student steps after each synthesized batch")
    g.add_argument("--inv-batch-size", type=int, help="images per inversion batch")
    g.add_argument("--inv-iterations", type=int, help="Adam steps per inversion batch")
    g.add_argument("--inv-lr", type=float)
    for name in ("alpha_tv", "alpha_l2", "alpha_f", "alpha_c", "first_bn_multiplier"):
        g.add_argument("--" + name.replace("_", "-"), type=float)
    g.add_argument("--alpha-cr", type=float, help="CMI's contrastive diversity term: each round's images are pushed "
                   "away from the earlier rounds' (0 = off)")
    g.add_argument("--jitter", type=int)
    g.add_argument("--multi-resolution", type=int, help="first K inversion iterations at half resolution")
    gen = d.add_argument_group("generator (generator / generator-ensemble)")
    gen.add_argument("--generator-steps", type=int)
    gen.add_argument("--generator-lr", type=float)
    gen.add_argument("--latent-dim", type=int)
    gen.add_argument("--generator-width", type=int, help="channels of the generator's first conv block")
    gen.add_argument("--lambda-tv", type=float)
    gen.add_argument("--lambda-l2", type=float)
    gen.add_argument("--lambda-bn", type=float)
    s = d.add_argument_group("student training (KD, methods.md#knowledge-distillation)")
    s.add_argument("--steps", type=int, help="student steps after synthesis")
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--temperature", type=float)
    s.add_argument("--alpha-ce", type=float, help="weight of CE on real labels (methods that read real data)")
    s.add_argument("--augment", choices=["auto", "none", "shift", "shift_flip"])
    s.add_argument("--mixup", type=float, help="share of KD images mixed with another (0..1)")
    s.add_argument("--cutmix", type=float, help="share of KD images given a box of another (0..1 − mixup)")
    s.add_argument("--teacher-echo", type=int, metavar="K",
                   help="student steps per teacher-labelled batch: the teacher labels every K-th batch and each step "
                        "draws from the last K labelled ones (default 1)")
    s.add_argument("--eval-every", type=int)
    d.add_argument("--seed", type=int)
    d.add_argument("--device")
    d.add_argument("--no-amp", action="store_true", default=None,
                   help="float32 everywhere (default: bfloat16 autocast on CUDA, and on a CPU with --cpu-bf16)")
    d.add_argument("--cpu-bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for KD and inversion on a CPU with native bf16 (AVX512-BF16/AMX): "
                        "1.4-1.5x faster, slightly different numbers; default: the recipe's setting, else "
                        "$DFKD_CPU_BF16")
    d.add_argument("--data-root", help="where the teacher's real test set lives (evaluation only; default: "
                                       "$DFKD_<DATASET>, else the dataset's default location)")
    d.add_argument("--attach-run", help=argparse.SUPPRESS)   # run a run created elsewhere (dfkd_core/launch.py)
    _describe_defaults(d)
    d.set_defaults(func=cmd_distill)


def _describe_defaults(parser: argparse.ArgumentParser) -> None:
    """Each setting's value when neither the flag nor a recipe gives one, in its help: DistillConfig's default for
    the student and generator settings, the inversion preset's for a pool's (`--inv-*`, α weights)."""
    from dfkd_core.cli import describe_synthesis_defaults
    defaults = DistillConfig()
    for action in parser._actions:
        if action.dest not in CONFIG_FLAGS or action.default is not None or (action.help and "default" in action.help):
            continue
        value = getattr(defaults, action.dest)
        if action.dest in ("student", "seed", "device", "data_root", "cpu_bf16") or value in ("", None):
            continue
        text = f"default: {value:g}" if isinstance(value, float) else f"default: {value}"
        action.help = (f"{action.help} ({text}" if action.help else f"({text}") + "; a recipe may set it)"
    describe_synthesis_defaults(parser, SYNTHESIS_FLAGS)


if __name__ == "__main__":
    from dfkd_core.cli import main
    sys.exit(main(["distill", *sys.argv[1:]]))
