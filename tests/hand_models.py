"""Shared by several test files: tiny models whose answers are known in closed form, and one finished
distillation job."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from dfkd_core.distill import DistillConfig, DistillJob


class LinearClassifier(nn.Module):
    """f(x) = W·flatten(x) + c, in float64 so the closed forms in the tests hold to ~1e-12."""

    def __init__(self, weight, bias):
        super().__init__()
        self.fc = nn.Linear(len(weight[0]), len(weight)).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(weight, dtype=torch.float64))
            self.fc.bias.copy_(torch.tensor(bias, dtype=torch.float64))

    def forward(self, x):
        return self.fc(x.flatten(1))


def row_images(rows):
    """(B, D) points as (B, 1, 1, D) 'images'."""
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), 1, 1, -1)


def run_distill(teacher, method, store=None, pool=None, **settings):
    """One finished DistillJob on a copy of `teacher` (300 steps unless `settings` say otherwise)."""
    config = DistillConfig(method=method, **{"steps": 300, "eval_every": 100, **settings})
    run = store.create("distill", config.to_dict(), method=method) if store is not None else None
    job = DistillJob(copy.deepcopy(teacher), config, run=run, pool=pool)
    job.run()
    assert job.status == "done", job.error
    return job
