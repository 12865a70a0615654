"""Why synthesized images fail to teach, said from the numbers a run already has: how many of them the teacher gives
their target class, how sure it is, which loss term outweighs the others, whether the images went flat or were
pinned to the pixel range, and whether the teacher itself learned anything."""
from __future__ import annotations

from dataclasses import dataclass

# Two measurements on one stock torchvision ResNet-18 (20 BatchNorm layers, Fashion-MNIST, batch 100, 150 iterations,
# lr 0.25; benchmarks/import_teacher.py's teacher seed 0): α_f 1 → 19% of the batch given its class, BN term 18–56×
# the class term; α_f 0.1 → 91%, BN distance 89 against 92. A learning rate of 1e30 left noise with the BN term at 5×
# the class term: the threshold sits above that.
BN_DOMINANCE = 10.0       # α_f·R_feature this many times α_ce·CE: the class term no longer steers the images
PERSISTENT_STEPS = 20     # a live warning needs this many steps in a row: a batch starts as noise, wrong and unsure
MOST_FLAT = 0.5           # share of flat images that names the priors as the cause
# Share of pixels at the range's ends that names the learning rate: real digits are half background (pixels of 0),
# and a sound DeepInversion batch of them had 51% there; a learning rate of 1e30 pinned 100%.
MOST_PINNED = 0.9


def near_chance(accuracy: float | None, num_classes: int) -> bool:
    """Under twice chance (1 / classes): a classifier that has learned next to nothing."""
    return accuracy is not None and num_classes >= 2 and accuracy < 2 / num_classes


def weak_teacher_note(test_accuracy: float | None, num_classes: int) -> str:
    """'' unless the teacher's accuracy on real test images is near chance: then nothing built on it means much, and
    that is the first thing to say."""
    if not near_chance(test_accuracy, num_classes):
        return ""
    return (f"the teacher itself scores {test_accuracy:.1%} on real test images, near chance ({1 / num_classes:.0%} "
            f"for {num_classes} classes): it has learned too little to invert or to teach; train it longer first")


@dataclass
class BatchReading:
    """What a synthesized batch shows at its end (or at one step; the fields a step lacks stay None)."""

    teacher_accuracy: float                # share of images the teacher gives their target class
    mean_confidence: float | None = None
    loss_ce: float | None = None
    loss_bn: float | None = None           # R_feature before α_f (a step's `loss_bn_feature`)
    alpha_ce: float = 1.0
    alpha_f: float = 0.0
    alpha_c: float = 0.0
    flat_fraction: float | None = None     # images with (almost) no spread: one grey value
    pinned_fraction: float | None = None   # pixels at the ends of the valid range
    teacher_test_accuracy: float | None = None
    num_classes: int = 10

    @classmethod
    def of_step(cls, row: dict, **extra) -> "BatchReading":
        return cls(row.get("teacher_accuracy", 1.0), row.get("mean_confidence"), row.get("loss_ce"),
                   row.get("loss_bn_feature"), row.get("alpha_ce", 1.0), row.get("alpha_f", 0.0),
                   row.get("alpha_c", 0.0), row.get("flat_fraction"), row.get("pinned_fraction"), **extra)

    def cause(self) -> str | None:
        """None where the teacher gives at least half of the images their class (and learned something itself);
        else the first that holds of: 'teacher' (it is at chance), 'no_class_term' (α_ce and α_c are 0), 'pinned'
        (most pixels at the range's ends: too high a learning rate), 'flat' (most images one grey: the priors
        won), 'bn' (the BN term outweighs the class term), 'collapse' (sure of them, but of other classes),
        'unsure'."""
        if weak_teacher_note(self.teacher_test_accuracy, self.num_classes):
            return "teacher"
        if not self.teacher_accuracy < 0.5:
            return None
        if self.alpha_ce == 0 and self.alpha_c == 0:
            return "no_class_term"
        if self.pinned_fraction is not None and self.pinned_fraction > MOST_PINNED:
            return "pinned"
        if self.flat_fraction is not None and self.flat_fraction > MOST_FLAT:
            return "flat"
        if self.loss_ce is not None and self.loss_bn is not None and self.alpha_f > 0 and self.alpha_ce > 0 \
                and self.loss_ce > 0 and self.alpha_f * self.loss_bn > BN_DOMINANCE * self.alpha_ce * self.loss_ce:
            return "bn"
        return "collapse" if self.mean_confidence is not None and self.mean_confidence > 0.8 else "unsure"

    def note(self, where: str = "these images") -> str:
        """'' or one sentence: what the batch shows and the setting to move."""
        cause = self.cause()
        if cause is None:
            return ""
        if cause == "teacher":
            note = weak_teacher_note(self.teacher_test_accuracy, self.num_classes)
            return note[:1].upper() + note[1:] + "."
        head = f"The teacher gives only {self.teacher_accuracy:.0%} of {where} their target class"
        if cause == "no_class_term":
            return (f"{head}: α_ce is 0 (and α_c too), so nothing pulls the images toward their classes; set α_ce "
                    "above 0.")
        if cause == "pinned":
            return (f"{head}: {self.pinned_fraction:.0%} of the pixels sit at the ends of the valid range, the sign of "
                    "steps too large to settle: lower the learning rate.")
        if cause == "flat":
            return (f"{head}: {self.flat_fraction:.0%} of the images are flat (one grey value), the priors' doing: "
                    "lower α_tv and α_l2.")
        if cause == "bn":
            bn, ce = self.alpha_f * self.loss_bn, self.alpha_ce * self.loss_ce
            return (f"{head}: the BN term (α_f·R_feature = {bn:.3g}) is {bn / ce:.0f}× the class term (α_ce·CE = "
                    f"{ce:.3g}), so the images match the teacher's BN statistics but not their classes. Lower α_f or "
                    "raise α_ce: on a stock ResNet-18 (20 BN layers) α_f 0.1 gave 91% of a batch its class at the "
                    "same BN distance, α_f 1 gave 19% (its students gained +0.7 points on average over 3 seeds, "
                    "not resolved).")
        if cause == "collapse":
            return (f"{head}, though it is sure of them ({self.mean_confidence:.2f}): the batch has likely collapsed "
                    "onto a few classes. The BN statistics show whether its variance went flat; raising α_ce, or "
                    "lowering α_tv and α_l2, usually brings it back.")
        return (f"{head} and is unsure of them: more iterations or a higher learning rate give the class term time "
                "to act.")


def class_agreement_note(teacher_accuracy: float, mean_confidence: float | None = None,
                         loss_ce: float | None = None, loss_bn: float | None = None, alpha_ce: float = 1.0,
                         alpha_f: float = 0.0, where: str = "these images") -> str:
    """`BatchReading(...).note(where)` from the numbers every run has."""
    return BatchReading(teacher_accuracy, mean_confidence, loss_ce, loss_bn, alpha_ce, alpha_f).note(where)


def note_for_step(row: dict, where: str = "these images") -> str:
    """The note from one inversion step's metrics (keys as `ModelInversion.step` returns them)."""
    return BatchReading.of_step(row).note(where)


def persistent_note(history: list[dict]) -> str:
    """A live warning: the note for the last step, once for PERSISTENT_STEPS steps in a row the teacher has given
    fewer than half of the images their class with a named cause (wrong and unsure is how every batch starts)."""
    recent = history[-PERSISTENT_STEPS:]
    if len(recent) < PERSISTENT_STEPS or any(BatchReading.of_step(r).cause() in (None, "unsure") for r in recent):
        return ""
    return note_for_step(recent[-1])
