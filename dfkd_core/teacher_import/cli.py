"""`dfkd import-teacher`: a network trained by other code becomes a teacher run (teacher_import)."""
from __future__ import annotations

import argparse
import json
import sys

from dfkd_core.data import DATASETS

EPILOG = """examples:
  dfkd import-teacher --weights resnet18_cifar10.pth --arch torchvision:resnet18 --dataset cifar10 \\
      --data-root ~/data/cifar-10-batches-py --normalization none      # trained with ToTensor() only
  dfkd import-teacher --weights sd.pt --arch bncnn6_w32 --dataset fashion-mnist   # a registered architecture
  dfkd import-teacher --weights net.pt --arch code:my_models.py:Net --arch-kwargs '{"width": 32}' --dataset digits
  dfkd import-teacher --list-architectures"""


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, like 0.5,0.5,0.5; got '{text}'")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text}")
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"depth\": 16}}', got {text}")
    return value


def cmd_import_teacher(args, store) -> int:
    from dfkd_core.models import CheckpointError
    from dfkd_core.models.imported import torchvision_architectures
    from dfkd_core.models.registry import list_models
    from dfkd_core.teacher_import import ImportConfig, import_teacher

    if args.list_architectures:
        print("registered:  " + " ".join(list_models(from_scratch=True)))
        print("torchvision: " + " ".join(torchvision_architectures()))
        return 0
    if not args.weights or not args.arch:
        raise SystemExit("error: import-teacher needs --weights and --arch (see --help)")
    normalization = "custom" if args.input_mean or args.input_std else args.normalization
    config = ImportConfig(weights=args.weights, arch=args.arch, arch_kwargs=args.arch_kwargs, dataset=args.dataset,
                          data_root=args.data_root,
                          normalization=normalization, input_mean=args.input_mean or [],
                          input_std=args.input_std or [], evaluate=not args.no_evaluate, name=args.name or "")
    try:
        imported = import_teacher(config, store)
    except (CheckpointError, ValueError) as e:
        raise SystemExit(f"error: cannot import {args.weights}: {e}")
    for note in imported.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"run {imported.run.id} [done] -> {imported.run.dir}")
    print(json.dumps({k: v for k, v in imported.summary.items() if k != "import_notes"}, indent=2, default=str))
    return 0


def add_commands(sub) -> None:
    i = sub.add_parser("import-teacher", help="bring your own trained classifier (a state_dict) as a teacher",
                       description="Fit a state_dict saved by your own training code into its architecture (a "
                                   "stock torchvision classifier or a registered model), check it, measure its test "
                                   "accuracy where the dataset is here, and store it as a teacher run.",
                       epilog=EPILOG)
    i.add_argument("--weights", help="torch.save(model.state_dict()) file, or a training checkpoint holding one "
                                     "(read with weights_only=True)")
    i.add_argument("--arch", help="torchvision:<name> (stock; e.g. torchvision:resnet18), a registered model, or "
                                  "code:<file.py>:<class> for your own (run once here, then stored as a traced graph "
                                  "of standard layers, without the code)")
    i.add_argument("--arch-kwargs", type=_json_object, default={},
                   help="a code: class's constructor arguments as JSON, e.g. '{\"depth\": 16}'")
    i.add_argument("--dataset", default="cifar10", choices=sorted(DATASETS),
                   help="the classes, channels and image size it was trained on")
    i.add_argument("--data-root", help="the dataset's folder, to measure test accuracy (optional: data-free use "
                                       "needs no data)")
    i.add_argument("--normalization", default="dataset", choices=["dataset", "none", "half", "imagenet"],
                   help="how its training normalized images: the tool's for the dataset, none (ToTensor only), half "
                        "(Normalize(0.5, 0.5)) or imagenet; --input-mean/--input-std for "
                        "others")
    i.add_argument("--input-mean", type=_floats, help="its training's per-channel mean, e.g. 0.4914,0.4822,0.4465")
    i.add_argument("--input-std", type=_floats, help="its training's per-channel std, e.g. 0.2023,0.1994,0.2010")
    i.add_argument("--no-evaluate", action="store_true", help="do not measure test accuracy")
    i.add_argument("--name", help="name shown in pickers (default: '<arch> on <dataset> (imported <file>)')")
    i.add_argument("--list-architectures", action="store_true", help="list the architectures it can build")
    i.set_defaults(func=cmd_import_teacher)
