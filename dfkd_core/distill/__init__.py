"""Data-free knowledge distillation: one KD loop (methods.md#knowledge-distillation) fed by registered methods
(methods.md#model-inversion, #generator)."""
from dfkd_core.distill.config import DistillConfig, default_student, default_student_of
from dfkd_core.distill.job import DistillJob
from dfkd_core.distill.methods import DISTILL_METHODS, DistillMethod, list_methods, register_method
from dfkd_core.distill.pool import PoolError, SyntheticPool
from dfkd_core.distill.results import compare_students_accuracy
from dfkd_core.distill.student import StudentTrainer

__all__ = ["DISTILL_METHODS", "DistillConfig", "DistillJob", "DistillMethod", "PoolError", "StudentTrainer",
           "SyntheticPool", "compare_students_accuracy", "default_student", "default_student_of", "list_methods", "register_method"]
from dfkd_core.distill import inversion_kd  # noqa: F401,E402  (registers deepdream, deepinversion, adi: first)
from dfkd_core.distill import generator_kd  # noqa: F401,E402  (registers generator, generator-ensemble)
from dfkd_core.distill import baselines  # noqa: F401,E402  (registers noise, real-kd, scratch)
from dfkd_core.distill import iekd  # noqa: F401,E402  (registers iekd, iedml)
from dfkd_core.distill import bss  # noqa: F401,E402  (registers bss)
from dfkd_core.distill import fast  # noqa: F401,E402  (registers fast)
