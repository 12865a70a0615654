"""Experiment configs are dataclasses saved as JSON with every run, so a run can be replayed from its config."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="Config")


@dataclasses.dataclass
class Config:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        return cls(**d)

    def require_finite(self) -> None:
        """Refuse NaN and ±inf in every numeric field, nested dicts and lists included (e.g. `synthesis` overrides).

        Why a check of its own: NaN fails every comparison, so a range check like `weight > 0` silently reads a NaN
        weight as "term off" (a DeepInversion run that is really DeepDream). Every `validate()` calls this first.
        """
        for f in dataclasses.fields(self):
            bad = _non_finite(getattr(self, f.name), f.name)
            if bad:
                raise ValueError(f"{bad[0]} must be a finite number, got {bad[1]}")

    def replace(self: T, **changes) -> T:
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        from dfkd_core.runs import atomic_write_text   # runs imports torch: only when a config is saved
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    # What a run's config.json holds beside the settings: where the command found its inputs (a teacher path, the
    # process count, a synthesis's batch count, an imported file's digest). Not settings: `load` leaves them out.
    RUN_FACTS = ("teacher", "processes", "batches", "sha256", "source")

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        """The config a run was made with, from its config.json (run facts beside the settings left out), so
        `DistillJob(teacher, DistillConfig.load(run.path("config.json")))` replays it."""
        values = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_dict({k: v for k, v in values.items() if k in names or k not in cls.RUN_FACTS})


def _non_finite(value: Any, name: str) -> tuple[str, Any] | None:
    """(name, value) of the first NaN/inf number in `value` (a number, dict or list), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else (name, value)
    if isinstance(value, dict):
        for k, v in value.items():
            bad = _non_finite(v, f"{name}.{k}")
            if bad:
                return bad
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            bad = _non_finite(v, f"{name}[{i}]")
            if bad:
                return bad
    return None
