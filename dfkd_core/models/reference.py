"""An untrained model as a reference: the floor a similarity to the teacher is read against.

CKA between a teacher and a network that never saw data is far from 0 at the first layers (both see the same
pixels), so "0.99 at layer 1" says little on its own; the same number for an untrained network of the student's
architecture says how much of it training explains. Anywhere the analyses take a student (`dfkd cka`, `gradcam`,
`boundary` and the Representations page), the reference `untrained:<model>` names such a network: a fresh
`create_model` of that architecture for the teacher's dataset, initialised from a fixed seed.
"""
from __future__ import annotations

import torch

from dfkd_core.models.checkpoint import Checkpoint
from dfkd_core.models.registry import check_from_scratch, create_model

UNTRAINED = "untrained:"   # prefix of a reference to a freshly initialised model
REFERENCE_SEED = 0         # one fixed initialisation: the same reference in every run, app or CLI


def is_untrained(ref: str) -> bool:
    return str(ref).startswith(UNTRAINED)


def untrained_reference(ref: str, teacher: Checkpoint, seed: int = REFERENCE_SEED) -> Checkpoint:
    """The model `ref` ('untrained:bncnn3_w16') names, freshly initialised from `seed` for `teacher`'s dataset
    (classes, channels, image size), in eval mode; its checkpoint path is `ref`. The global RNG is left as it was."""
    name = str(ref)[len(UNTRAINED):]
    check_from_scratch(name, "untrained reference")
    info = teacher.dataset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, num_classes=info.num_classes, in_channels=info.in_channels,
                             image_size=info.image_size)
    return Checkpoint(model.eval(), dict(model.default_cfg), info, {"untrained_seed": seed}, path=str(ref))


__all__ = ["REFERENCE_SEED", "UNTRAINED", "is_untrained", "untrained_reference"]
