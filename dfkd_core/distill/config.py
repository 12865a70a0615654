"""`DistillConfig`: one data-free (or, for comparison, data-based) distillation experiment, saved with its run."""
from __future__ import annotations

from dataclasses import dataclass, field

from dfkd_core.config import Config
from dfkd_core.device import cpu_bf16_default, resolve_device, uses_bf16

# The student a teacher gets when none is named: half width (or the published half model),
# methods.md#knowledge-distillation / issue 5.
HALF_WIDTH_STUDENT = {
    "bncnn3_w32": "bncnn3_w16", "bncnn3_w16": "bncnn3_w8",
    "bncnn6_w32": "bncnn6_w16",
    "lenet5": "lenet5_half",
    "resnet34_cifar": "resnet18_cifar", "resnet18_cifar": "tv_mobilenet_v2",
    "tv_resnet18": "tv_mobilenet_v2",
    "plaincnn3_w32": "bncnn3_w16",   # no plain model at half width: the BN CNN of half its width (a student may have BN)
}


AUGMENT_MODES = ("none", "shift", "shift_flip", "auto")


def default_student(teacher_name: str) -> str:
    """The student a teacher gets when none is named: its architecture at half width (ValueError where no
    half-width model is registered)."""
    if teacher_name not in HALF_WIDTH_STUDENT:
        raise ValueError(f"no default student for teacher '{teacher_name}'; pass --student <registered model>")
    return HALF_WIDTH_STUDENT[teacher_name]


def default_student_of(teacher) -> str:
    """`default_student` of a loaded teacher (a `Checkpoint`). An imported network (`dfkd import-teacher`) gets its
    architecture's half-width student where one is registered, else that of its dataset's default teacher."""
    if teacher.name != "imported":
        return default_student(teacher.name)
    arch = teacher.model_cfg.get("arch", "")
    if arch in HALF_WIDTH_STUDENT:
        return HALF_WIDTH_STUDENT[arch]
    from dfkd_core.training import DEFAULT_TEACHER
    return default_student(DEFAULT_TEACHER.get(teacher.dataset.name, arch))


@dataclass
class DistillConfig(Config):
    method: str = "deepinversion"
    student: str = ""                 # registered model name; empty = half-width default of the teacher
    pool: str | list[str] | None = None   # reuse synthesized images: images.pt paths (several: one pool of all)
    options: dict = field(default_factory=dict)   # method-specific settings, checked against the method's Options

    # --- synthesis of a pool (deepdream / deepinversion / adi): rounds of one inverted batch each
    images: int = 2000                # images to synthesize in total
    synthesis: dict = field(default_factory=dict)   # SynthesisConfig overrides (batch_size, iterations, alpha_f...)
    kd_steps_per_round: int = 20      # student steps on the growing pool after each batch (the ADI loop)

    # --- generator (generator / generator-ensemble)
    generator_steps: int = 1000
    generator_lr: float = 1e-3
    latent_dim: int = 128
    generator_width: int = 128
    lambda_tv: float = 1e-4
    lambda_l2: float = 0.0
    lambda_bn: float = 1.0

    # --- the student's KD training (methods.md#knowledge-distillation), shared by every method
    steps: int = 2000                 # student steps after synthesis (pool / noise / generator / real data)
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 4.0
    alpha_ce: float = 0.0             # weight of CE on labels; only methods with real labels (real-kd variants) use it
    augment: str = "auto"             # none | shift | shift_flip | auto (the dataset's natural augmentation)
    mixup: float = 0.0                # probability of mixing two synthesized images in a KD batch
    cutmix: float = 0.0               # probability of pasting a box of another image instead (exclusive of mixup)
    teacher_echo: int = 1             # student steps per teacher-labelled batch (>1: reuse labels, see StudentTrainer)

    # --- monitoring and bookkeeping
    eval_every: int = 100             # student steps between evaluations on held-out real images (display only)
    eval_samples: int = 1000          # size of that held-out subset of the test split; the final report uses it all
    snapshot_every: int = 25
    seed: int = 0
    device: str = "auto"
    amp: bool = True                  # bfloat16 autocast on CUDA
    cpu_bf16: bool = field(default_factory=cpu_bf16_default)   # and on a CPU with native bf16
    data_root: str | None = None      # where the teacher's real test set lives (evaluation only)

    def runs_float32_on_cpu(self) -> bool:
        """Whether this run's KD and inversion steps will compute in float32 on a CPU (no native bf16 there, or bf16
        turned off); a CUDA request on a machine without CUDA is not (that run stops with its own message)."""
        try:
            device = resolve_device(self.device)
        except RuntimeError:
            return False
        return device.type == "cpu" and not uses_bf16(device, self.amp, self.cpu_bf16)

    def validate(self) -> None:
        """One sentence for the first bad setting, before any run exists (CLI, app and library alike)."""
        self.require_finite()
        at_least_one = {"batch_size": self.batch_size, "teacher_echo": self.teacher_echo,
                        "latent_dim": self.latent_dim, "generator_width": self.generator_width,
                        "eval_every": self.eval_every, "eval_samples": self.eval_samples}
        positive = {"lr": self.lr, "temperature": self.temperature, "generator_lr": self.generator_lr}
        non_negative = {"steps": self.steps, "images": self.images, "kd_steps_per_round": self.kd_steps_per_round,
                        "generator_steps": self.generator_steps, "lambda_tv": self.lambda_tv,
                        "lambda_l2": self.lambda_l2, "lambda_bn": self.lambda_bn, "weight_decay": self.weight_decay,
                        "alpha_ce": self.alpha_ce, "snapshot_every": self.snapshot_every}
        for bound, checks, holds in ((">= 1", at_least_one, lambda v: v >= 1), ("> 0", positive, lambda v: v > 0),
                                     (">= 0", non_negative, lambda v: v >= 0)):
            for name, value in checks.items():
                if not holds(value):
                    raise ValueError(f"{name} must be {bound}, got {value}")
        if not 0 <= self.mixup <= 1:
            raise ValueError(f"mixup is a probability in [0, 1], got {self.mixup}")
        if not 0 <= self.cutmix <= 1 - self.mixup:
            raise ValueError(f"cutmix is a probability in [0, 1 − mixup] (an image is blended or pasted, not both), "
                             f"got cutmix {self.cutmix} with mixup {self.mixup}")
        if self.augment not in AUGMENT_MODES:
            raise ValueError(f"augment must be one of {' | '.join(AUGMENT_MODES)}, got '{self.augment}'")
        for name in ("synthesis", "options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict of settings, got {type(getattr(self, name)).__name__}")
