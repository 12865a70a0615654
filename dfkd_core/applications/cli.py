"""`dfkd prune`, `dfkd quantize`, `dfkd continual`: the data-free applications of methods.md#applications from the
command line. Every setting is checked, and the data and pool found, before a run is created; the result table is
printed after."""
from __future__ import annotations

import argparse
import sys

from dfkd_core.applications import surgery  # noqa: F401  (registers the `pruned` model: pruned checkpoints load)
from dfkd_core.applications.continual import ContinualConfig
from dfkd_core.applications.pruning import CRITERIA, PruningConfig
from dfkd_core.applications.quantization import OBSERVERS, SOURCES, QuantizationConfig
from dfkd_core.applications.report import format_results
from dfkd_core.data import DATASETS

# CLI flag → SynthesisConfig key, for images synthesized when no --pool is given.
SYNTHESIS_FLAGS = {"inv_batch_size": "batch_size", "inv_iterations": "iterations", "inv_lr": "lr",
                   "alpha_f": "alpha_f", "alpha_tv": "alpha_tv"}


def _words(text: str) -> list[str]:
    return [w.strip() for w in text.split(",") if w.strip()] if text else []


def _fractions(text: str, flag: str) -> list[float]:
    try:
        return [float(w) for w in _words(text)]
    except ValueError:
        raise SystemExit(f"error: {flag} takes comma-separated numbers like 0.75,0.5; got '{text}'") from None


def _settings(args, names: tuple[str, ...]) -> dict:
    """The flags the user gave (None = the config's default), plus the inversion overrides."""
    values = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    values["synthesis"] = {key: getattr(args, flag) for flag, key in SYNTHESIS_FLAGS.items()
                           if getattr(args, flag) is not None}
    return values


COMMON = ("images", "seed", "device", "data_root")
COMPRESSION = (*COMMON, "latency_batch", "latency_rounds")


def _compression_job(args, store, job_class, config):
    """Teacher, data and pool checked, then the job built (its constructor checks the rest): all before a run."""
    from dfkd_core.cli import _load
    from dfkd_core.data import DatasetMissingError, load_split
    from dfkd_core.distill.pool import PoolError, pool_setting

    teacher = _load(store, args.teacher, "teacher")
    try:
        config.validate()
        load_split(teacher.dataset.name, "test", config.data_root, teacher.dataset.image_size)
        if args.pool:
            config.pool = pool_setting(store, args.pool)
        return teacher, job_class(teacher, config)
    except (DatasetMissingError, PoolError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def _run(job, store, kind: str, config, name: str, teacher=None, quiet: bool = False) -> int:
    from dfkd_core.cli import _run_job

    dataset = job.dataset.name
    extra = {"teacher": teacher.path} if teacher is not None else {}
    job.run_record = store.create(kind, {**config.to_dict(), **extra}, dataset=dataset, name=name,
                                  teacher=store.run_id_of(teacher.path) if teacher is not None else None,
                                  method=kind)
    code = _run_job(job, ("phase", "accuracy", "old_accuracy"), quiet)
    if job.rows:
        print(format_results(job.results(job.status)))
    return code


def cmd_prune(args, store) -> int:
    values = _settings(args, (*COMPRESSION, "importance_images", "finetune_steps", "batch_size", "lr", "temperature",
                              "mixup"))
    config = PruningConfig(criteria=_words(args.criteria),
                           keep_flops=_fractions(args.keep_flops, "--keep-flops"),
                           real_finetune=not args.no_real_finetune, **values)
    from dfkd_core.applications.pruning import PruningJob
    teacher, job = _compression_job(args, store, PruningJob, config)
    return _run(job, store, "prune", config, f"prune {teacher.name} to {args.keep_flops} of its FLOPs", teacher,
                args.quiet)


def cmd_quantize(args, store) -> int:
    values = _settings(args, (*COMPRESSION, "calibration_images", "calibration_batch", "backend", "activation_bits",
                              "observer"))
    config = QuantizationConfig(sources=_words(args.sources),
                                bn_recalibration=not args.no_bn_recalibration, **values)
    from dfkd_core.applications.quantization import QuantizationJob
    teacher, job = _compression_job(args, store, QuantizationJob, config)
    return _run(job, store, "quantize", config, f"int8 {teacher.name} calibrated on {args.sources}", teacher,
                args.quiet)


def cmd_continual(args, store) -> int:
    from dfkd_core.applications.continual import ContinualJob
    from dfkd_core.data import DatasetMissingError, load_split

    values = _settings(args, (*COMMON, "dataset", "model", "old_classes", "old_steps", "new_steps", "batch_size",
                              "replay_batch", "lr", "temperature", "feature_weight"))
    try:
        config = ContinualConfig(**values)
        config.validate()
        load_split(config.dataset, "train", config.data_root)
        job = ContinualJob(config)
    except (DatasetMissingError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    return _run(job, store, "continual", config, f"continual {job.model_name} on {config.dataset}: "
                f"{job.k} + {job.dataset.num_classes - job.k} classes", quiet=args.quiet)


def _common_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("synthesized images (DeepInversion, docs/methods.md#model-inversion)")
    g.add_argument("--images", type=int, help="images to synthesize (default 1000)")
    g.add_argument("--inv-batch-size", type=int, help="images per inversion batch")
    g.add_argument("--inv-iterations", type=int, help="Adam steps per inversion batch")
    g.add_argument("--inv-lr", type=float)
    g.add_argument("--alpha-f", type=float, help="α_f: BN feature-statistics loss")
    g.add_argument("--alpha-tv", type=float, help="α_tv: total-variation prior")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda (int8 models and latencies are always CPU)")
    p.add_argument("--data-root", help="dataset directory (default $DFKD_<NAME>, then the default location)")


def _compression_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", required=True, help="checkpoint path or teacher run id")
    p.add_argument("--pool", nargs="+", metavar="RUN",
                   help="reuse synthesized images: a synthesis/distill/application run id or an images.pt; several "
                        "make one pool of all their images")
    p.add_argument("--latency-batch", type=int, help="images per timed forward pass (default 64)")
    p.add_argument("--latency-rounds", type=int,
                   help="rounds timing every model once, back to back at the end; median reported (default 15)")
    _common_flags(p)


def add_commands(sub) -> None:
    p = sub.add_parser("prune", help="data-free pruning: rank filters on synthesized images, remove them, fine-tune")
    _compression_flags(p)
    p.add_argument("--criteria", default=",".join(CRITERIA), help=f"comma-separated, of {list(CRITERIA)}")
    p.add_argument("--keep-flops", default="0.75,0.5,0.25", help="shares of the FLOPs to keep, comma-separated")
    p.add_argument("--importance-images", type=int, help="synthesized images the Taylor criterion averages over")
    p.add_argument("--finetune-steps", type=int, help="KD steps per pruned network and data source (default 300)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--temperature", type=float)
    p.add_argument("--mixup", type=float, help="share of KD images mixed with another (0..1)")
    p.add_argument("--no-real-finetune", action="store_true", help="skip the real-data reference fine-tune")
    p.set_defaults(func=cmd_prune)

    q = sub.add_parser("quantize", help="data-free int8 calibration: synthesized vs real vs noise images")
    _compression_flags(q)
    q.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {list(SOURCES)}")
    q.add_argument("--calibration-images", type=int, help="images per source (default 512)")
    q.add_argument("--calibration-batch", type=int)
    q.add_argument("--backend", help="torch.backends.quantized engine (default: the current one)")
    q.add_argument("--activation-bits", type=int, help="2..8: activation levels 2^bits (default 8)")
    q.add_argument("--observer", choices=OBSERVERS,
                   help="activation ranges: minmax (ZeroQ, The Knowledge Within; default) or histogram (torch's "
                        "backend default, clips outliers)")
    q.add_argument("--no-bn-recalibration", action="store_true", help="skip the BN-statistics-only rows")
    q.set_defaults(func=cmd_quantize)

    c = sub.add_parser("continual", help="data-free continual learning: add classes, replay synthesized old ones")
    c.add_argument("--dataset", default="digits", choices=sorted(DATASETS))
    c.add_argument("--model", help="registered model (default: the dataset's teacher architecture)")
    c.add_argument("--old-classes", type=int, help="classes learned first (default: half)")
    c.add_argument("--old-steps", type=int, help="CE steps of the old model (default 600)")
    c.add_argument("--new-steps", type=int, help="steps of each variant adding the new classes (default 600)")
    c.add_argument("--batch-size", type=int, help="real images per step")
    c.add_argument("--replay-batch", type=int, help="synthesized old-class images per replay step")
    c.add_argument("--lr", type=float)
    c.add_argument("--temperature", type=float)
    c.add_argument("--feature-weight", type=float,
                   help="λ_feat: replay's feature distillation against the old model, on real and synthesized images "
                        "(default: the value measured for the dataset and model: digits 1, fashion-mnist 24 "
                        "for bncnn6_w32 and 12 for bncnn6_w16; 0 = KD replay alone, which forgets within one dataset; "
                        "higher keeps more old-class accuracy and learns the new classes less)")
    _common_flags(c)
    c.set_defaults(func=cmd_continual)


if __name__ == "__main__":
    from dfkd_core.cli import main
    sys.exit(main(sys.argv[1:]))
