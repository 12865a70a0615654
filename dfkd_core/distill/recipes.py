"""Named, measured settings for `DistillConfig` (torchdistill style: an experiment is a config).

A recipe maps a method to the config overrides that worked on one dataset within a stated budget; explicit
settings (CLI flags, app widgets) still win. The numbers each recipe reaches are in the README's results table,
made by `benchmarks/dfkd_table.py`, which uses these same recipes.

    DistillConfig(**recipe_overrides("fashion-10min", "adi"), method="adi")
"""
from __future__ import annotations

import copy

from dfkd_core.distill.config import DistillConfig

# Pool methods: rounds of one inverted batch; `trajectory_kd_from` also trains the student on every inversion
# iterate from that iteration on (see PoolOptions) — the cheapest extra data there is.
_FASHION_POOL = {"images": 2000, "synthesis": {"batch_size": 200, "iterations": 100, "lr": 0.1},
                 "kd_steps_per_round": 0, "options": {"trajectory_kd_from": 20}, "steps": 2000, "eval_every": 400}
# DeepInversion's inversions on Fashion-MNIST are far from the data after 100 iterations at lr 0.1 (BN distance
# 26.9 for a batch of 200; a real batch is at 4.6). Adam at lr 0.25 for 200 iterations brings it to 11.9 and turns
# texture into garments, and the student gains 4 points (README, "Better inversions"). Fewer images keep it in
# 10 minutes: with real images, 2,000 or 10,000 make the same student (89.4% vs 89.9%), so quality beats count.
_FASHION_DI = {**_FASHION_POOL, "images": 1200, "synthesis": {"batch_size": 200, "iterations": 200, "lr": 0.25}}
# Without a time limit: 2,000 inversions, then a long KD on the finished pool with half of each batch mixed
# (λ·x_i + (1−λ)·x_j, labelled by the teacher). On one pool, three KD seeds went from 88.4 / 86.7 / 87.8% without
# mixing to 89.1 / 89.2 / 88.3% with it (0.956 of the teacher on average): the mixes fill the space between the
# pool's images that test images fall into. No KD during synthesis, so a `--pool` reuse of this run's images with
# the same seed repeats its KD exactly (tested).
# KD at T = 20 (what CMI, NAYER and Fast-Datafree use): on the pools of three new teachers, paired with T = 4 on the
# same pool and seed, +0.99 [+0.59, +1.38], −0.04 and +0.07 points; it lifted the worst student from 0.9498 to
# 0.960 of its teacher and lowered none outside its interval (docs/results.md, "Levers measured").
# CutMix on a further half of each batch (a box of another pool image pasted in, labelled by the teacher; exclusive
# of the mixup half): paired with mixup alone on the same pool and KD seed, LeNet-5-half +1.04 [+0.55, +1.52],
# +1.50 [+0.93, +2.05], +1.12 [+0.63, +1.58] points over three seeds (0.879 → 0.892 of its teacher), bncnn6_w16
# +0.17 [−0.18, +0.51] and about +0.5 on two teachers (0.954 → 0.956, 0.956 → 0.961); it gains most on Pullover,
# Coat and Shirt. Mixup 1 alone or mixup 0.25 + cutmix 0.75 did not help (docs/results.md, "Levers measured").
_FASHION_DI_BEST = {**_FASHION_DI, "images": 2000, "options": {"trajectory_kd_from": -1}, "steps": 8000,
                    "mixup": 0.5, "cutmix": 0.5, "temperature": 20.0, "eval_every": 1000}
# Five CPU minutes (issue 18): 4 rounds of 150 inversion iterations at lr 0.4 (fashion-best: 10 of 200 at 0.25), 2,800
# KD steps at 3x the learning rate, in bf16 where the CPU computes it natively (`cpu_bf16`; elsewhere float32 and
# slower). Screened on teacher 0 with bf16, seed 0 (docs/results.md, "A student in five minutes"): on one
# 1,000-image pool, 3,000 KD steps at lr 1e-3 / 2e-3 / 4e-3 / 8e-3 gave 0.937 / 0.952 / 0.953 / 0.954 of the teacher
# (a short schedule needs larger steps; 3e-3 sits in the plateau and on the app's lr scale) and 2,000 steps 0.944;
# its first 800 images 0.958; 1,000 images of 150 iterations at lr 0.4 0.955. Paired on three teachers' pools of this
# recipe, lr 3e-3 against 1e-3: +1.41, +1.66, +1.63 points. 3 teachers x 3 seeds: 4.0-4.7 min, mean 0.951, min 0.939.
_FASHION_DI_5MIN = {**_FASHION_DI_BEST, "images": 800, "synthesis": {"batch_size": 200, "iterations": 150, "lr": 0.4},
                    "steps": 2800, "lr": 3e-3, "cpu_bf16": True}
# Where the run computes in float32 on a CPU (no native bf16, or bf16 turned off), half of a KD step is the teacher's
# forward. There the teacher labels every other KD batch (teacher echo 2: 1.34x the KD steps per second) and the time
# saved buys 3,800 steps for the time of 2,800 plain ones. On seven pools of three teachers (2-core AMD EPYC, AVX2),
# paired on each pool: +1.01, +1.32, +0.28, +0.46, +0.62, +0.09, -0.57 points (mean +0.46 [-0.11, +1.03]: likely, not
# resolved) and 6 of 7 students at 0.95 of their teacher (mean ratio 0.955) against 4 of 7 (0.950) (docs/results.md,
# "On a CPU without bf16"). Not measured where bf16 runs or on a GPU, so not used there.
_FASHION_DI_5MIN_FLOAT32 = {"teacher_echo": 2, "steps": 3800}
# DeepDream has only image priors to hold its images, and Adam rescales every gradient to the same step size: once
# the teacher is sure of the class (within ~20 iterations), α_tv = 1e-3 alone drives the steps and fades the images to
# a quarter of the real contrast (pixel std 0.26 vs 1.0). A student trained on them normalizes real images wrongly
# (27.5%, below noise's 30.2%; with batch statistics at test time 43%). α_tv = 1e-4 keeps the contrast (std 0.61).
_FASHION_DREAM = {**_FASHION_POOL, "synthesis": {**_FASHION_POOL["synthesis"], "alpha_tv": 1e-4}}
# `fast` (a meta-generator adapted per batch, fast.py): 300 plain generator steps, then 20 rounds of 200 images with
# 5 steps each and 100 KD steps after each round from the fourth, then 2,000 more with mixup. One teacher, one seed:
# 85.43% (0.920) in 12.3 min while another run shared the cores; synthesis is a small part of it (KD dominates).
_FASHION_FAST = {"images": 4000, "kd_steps_per_round": 100, "steps": 2000, "mixup": 0.5, "generator_width": 64,
                 "eval_every": 500, "options": {"synthesis_batch": 200, "warmup_rounds": 3, "pretrain_steps": 300,
                                                "lr_g": 1e-3, "lr_z": 0.01}}
_DIGITS_POOL = {"images": 400, "synthesis": {"batch_size": 200, "iterations": 60}, "kd_steps_per_round": 0,
                "options": {"trajectory_kd_from": 10}, "steps": 400, "eval_every": 100}

RECIPES: dict[str, dict] = {
    "fashion-10min": {
        "dataset": "fashion-mnist",
        "description": "Fashion-MNIST 28x28, bncnn6_w32 → bncnn6_w16 (or lenet5 → lenet5_half) in about 10 CPU "
                       "minutes on 2 cores",
        "methods": {
            "noise": {"steps": 3600, "eval_every": 600},
            "deepdream": _FASHION_DREAM,
            "deepinversion": _FASHION_DI,
            "adi": _FASHION_POOL,
            "generator": {"generator_steps": 600, "generator_width": 64, "steps": 2000, "eval_every": 400},
            "generator-ensemble": {"generator_steps": 600, "generator_width": 64, "steps": 2000, "eval_every": 400},
            "fast": _FASHION_FAST,
            "real-kd": {"steps": 2000, "eval_every": 400},
            "scratch": {"steps": 2000, "eval_every": 400},
        },
    },
    "fashion-best": {
        "dataset": "fashion-mnist",
        "description": "Fashion-MNIST, the best measured data-free students with no time limit (DeepInversion: 20 "
                       "minutes on a quiet 2-core Intel machine, 39 on a 2-core AMD EPYC with AVX2, 1.5 on one "
                       "H200): more inverted images, a long KD at temperature 20 with mixup and CutMix on the pool, a "
                       "longer KD for the generator",
        "methods": {
            "deepinversion": _FASHION_DI_BEST,
            "generator": {"generator_steps": 600, "generator_width": 64, "steps": 5000, "eval_every": 1000},
            "generator-ensemble": {"generator_steps": 600, "generator_width": 64, "steps": 5000, "eval_every": 1000},
            "real-kd": {"steps": 2000, "eval_every": 400},
        },
    },
    "fashion-5min": {
        "dataset": "fashion-mnist",
        "description": "Fashion-MNIST, a DeepInversion student at about 95% of its teacher in 4-5 minutes on the "
                       "2-core AMD EPYC with native bf16 it was measured on (9 on a 2-core Intel Xeon with AVX512-BF16, "
                       "where bf16 ran slower than float32): 800 inverted images of 150 iterations, 2,800 KD steps at "
                       "3x the learning rate; in float32 (elsewhere) 10-12 minutes on AVX2, with teacher echo 2 and "
                       "3,800 steps",
        "methods": {"deepinversion": _FASHION_DI_5MIN},
        "cpu_float32": {"deepinversion": _FASHION_DI_5MIN_FLOAT32},
        "cpu_float32_why": ("The teacher labels every other KD batch (teacher echo), so 3,800 KD steps take the "
                            "time of 2,800 plain ones. On seven pools, paired: +0.46 points on average [-0.11, +1.03], "
                            "and 6 of 7 students at 0.95 of their teacher, against 4 of 7 with the recipe's own "
                            "settings (--teacher-echo 1 --steps 2800)."),
    },
    "digits-quick": {
        "dataset": "digits",
        "description": "sklearn digits 8x8, bncnn3_w32 → bncnn3_w16 in well under a minute",
        "methods": {
            "noise": {"steps": 600, "eval_every": 100},
            "deepdream": _DIGITS_POOL,
            "deepinversion": _DIGITS_POOL,
            "adi": _DIGITS_POOL,
            "generator": {"generator_steps": 300, "generator_width": 64, "steps": 400, "eval_every": 100},
            "generator-ensemble": {"generator_steps": 300, "generator_width": 64, "steps": 400, "eval_every": 100},
            "real-kd": {"steps": 400, "eval_every": 100},
            "scratch": {"steps": 400, "eval_every": 100},
        },
    },
}

# The recipe `benchmarks/dfkd_table.py` compares every method with (one budget for all).
DATASET_RECIPE = {"fashion-mnist": "fashion-10min", "digits": "digits-quick"}
# The app's choice per dataset, best first: the robust recipe where it covers the method (issue 19), else the
# budgeted one.
PREFERRED_RECIPES = {"fashion-mnist": ("fashion-best", "fashion-10min"), "digits": ("digits-quick",)}


def list_recipes() -> list[str]:
    """The names `--recipe` and the Distill page take (`RECIPES[name]["description"]` says what each is)."""
    return list(RECIPES)


def recipes_for(dataset: str, method: str) -> list[str]:
    """The recipes measured on `dataset` that set `method`, the preferred one first."""
    preferred = PREFERRED_RECIPES.get(dataset, ())
    found = [r for r, spec in RECIPES.items() if spec.get("dataset") == dataset and method in spec["methods"]]
    return sorted(found, key=lambda r: preferred.index(r) if r in preferred else len(preferred))


def default_recipe(dataset: str, method: str) -> str | None:
    """The recipe the app starts `method` on `dataset` with (None: no recipe measured there)."""
    return next(iter(recipes_for(dataset, method)), None)


def recipe_overrides(recipe: str, method: str) -> dict:
    """The DistillConfig overrides of `recipe` for `method` (a fresh copy; empty if the recipe has none), as measured;
    `adapt_to_precision` adds what the recipe changes for a float32 run on a CPU."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe '{recipe}'; choose one of {list(RECIPES)}")
    return copy.deepcopy(RECIPES[recipe]["methods"].get(method, {}))


def adapt_to_precision(recipe: str, method: str, explicit: dict) -> tuple[dict, dict]:
    """The config values of `recipe` for `method` with `explicit` settings winning (its `device` among them, if
    given), as the run will compute them, and the settings that changed for that: where a config of these values
    computes float32 on a CPU (`DistillConfig.runs_float32_on_cpu`), the recipe's settings for that case (an
    explicit setting still wins; `float32_note` says which and why)."""
    base = recipe_overrides(recipe, method)
    values = merge_overrides(base, explicit)
    adjust = {k: v for k, v in RECIPES[recipe].get("cpu_float32", {}).get(method, {}).items() if k not in explicit}
    if not adjust or not DistillConfig(method=method, **values).runs_float32_on_cpu():
        return values, {}
    return merge_overrides({**base, **copy.deepcopy(adjust)}, explicit), adjust


def float32_settings(adjusted: dict) -> str:
    """'teacher echo 2, steps 3,800': the settings a recipe changed for a float32 run, in words."""
    return ", ".join(f"{key.replace('_', ' ')} {value:,}" for key, value in adjusted.items())


def float32_note(recipe: str, adjusted: dict) -> str:
    """Why the recipe runs with other settings here, in two sentences."""
    return (f"Recipe {recipe} runs in float32 on this CPU (no native bf16), so it takes its float32 settings "
            f"({float32_settings(adjusted)}). {RECIPES[recipe].get('cpu_float32_why', '')}")


def merge_overrides(base: dict, explicit: dict) -> dict:
    """`explicit` settings win over the recipe's; the nested `synthesis` and `options` dicts merge key by key."""
    merged = copy.deepcopy(base)
    for key, value in explicit.items():
        if key in ("synthesis", "options") and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged
