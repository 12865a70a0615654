"""Why synthesized images fail to teach, said from the numbers a run already has: how many of them the teacher gives
their target class, how sure it is, and which loss term outweighs the others."""
from __future__ import annotations

# Two measurements on one stock torchvision ResNet-18 (20 BatchNorm layers, Fashion-MNIST, batch 100, 150 iterations,
# lr 0.25; benchmarks/import_teacher.py's teacher seed 0): α_f 1 → 19% of the batch given its class, BN distance 92;
# α_f 0.1 → 91%, BN distance 89.
BN_DOMINANCE = 5.0        # α_f·R_feature this many times α_ce·CE: the class term no longer steers the images
PERSISTENT_STEPS = 20     # a live warning needs this many steps in a row: a batch starts as noise, wrong and unsure


def agreement_cause(teacher_accuracy: float, mean_confidence: float | None = None, loss_ce: float | None = None,
                    loss_bn: float | None = None, alpha_ce: float = 1.0, alpha_f: float = 0.0) -> str | None:
    """None where the teacher gives at least half of the images their target class; else 'bn' (the BN term
    outweighs the class term), 'collapse' (sure of them, but of other classes) or 'unsure'."""
    if not teacher_accuracy < 0.5:
        return None
    if loss_ce is not None and loss_bn is not None and alpha_f > 0 and alpha_ce > 0 and loss_ce > 0 \
            and alpha_f * loss_bn > BN_DOMINANCE * alpha_ce * loss_ce:
        return "bn"
    return "collapse" if mean_confidence is not None and mean_confidence > 0.8 else "unsure"


def class_agreement_note(teacher_accuracy: float, mean_confidence: float | None = None,
                         loss_ce: float | None = None, loss_bn: float | None = None, alpha_ce: float = 1.0,
                         alpha_f: float = 0.0, where: str = "these images") -> str:
    """'' where the teacher gives at least half of the images their target class; else one sentence on the likely
    cause and the setting to move. `loss_bn` is R_feature before α_f (as a step's `loss_bn_feature` records it)."""
    cause = agreement_cause(teacher_accuracy, mean_confidence, loss_ce, loss_bn, alpha_ce, alpha_f)
    if cause is None:
        return ""
    head = f"The teacher gives only {teacher_accuracy:.0%} of {where} their target class"
    if cause == "bn":
        bn, ce = alpha_f * loss_bn, alpha_ce * loss_ce
        return (f"{head}: the BN term (α_f·R_feature = {bn:.3g}) is {bn / ce:.0f}× the class term (α_ce·CE = "
                f"{ce:.3g}), so the images match the teacher's BN statistics but not their classes. Lower α_f or "
                "raise α_ce: on a stock ResNet-18 (20 BN layers) α_f 0.1 gave 91% of a batch its class at the "
                "same BN distance, α_f 1 gave 19%.")
    if cause == "collapse":
        return (f"{head}, though it is sure of them ({mean_confidence:.2f}): the batch has likely collapsed onto a "
                "few classes. The BN statistics show whether its variance went flat; raising α_ce, or lowering α_tv "
                "and α_l2, usually brings it back.")
    return (f"{head} and is unsure of them: more iterations or a higher learning rate give the class term time to "
            "act.")


def _step_values(row: dict) -> tuple:
    return (row.get("teacher_accuracy", 1.0), row.get("mean_confidence"), row.get("loss_ce"),
            row.get("loss_bn_feature"), row.get("alpha_ce", 1.0), row.get("alpha_f", 0.0))


def note_for_step(row: dict, where: str = "these images") -> str:
    """`class_agreement_note` from one inversion step's metrics (keys as `ModelInversion.step` returns them)."""
    return class_agreement_note(*_step_values(row), where=where)


def persistent_note(history: list[dict]) -> str:
    """A live warning: the note for the last step, once for PERSISTENT_STEPS steps in a row the teacher has given
    fewer than half of the images their class while sure of them or while the BN term outweighs the class term
    (wrong and unsure is how every batch starts)."""
    recent = history[-PERSISTENT_STEPS:]
    if len(recent) < PERSISTENT_STEPS or any(agreement_cause(*_step_values(r)) in (None, "unsure") for r in recent):
        return ""
    return note_for_step(recent[-1])
