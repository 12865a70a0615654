"""How long a running job has left, from its own pace, per kind of step.

A distillation's steps are not alike: on 2 AVX2 cores a Fashion-MNIST inversion iteration (batch 200) takes ~300 ms
and a student step (batch 128) ~170 ms, and `fashion-5min` makes 600 of the first before 2,800 of the second. One
average pace over all steps would promise ~17 minutes at the start of an 11-minute run. So each kind of step is timed
apart, and a kind not seen yet is named with its count instead of being guessed.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TimeLeft:
    """`seconds` for the remaining steps of the kinds already timed; `untimed`: kind → steps still to come of a
    kind whose pace is not known yet (a distillation's student steps while it still synthesizes)."""

    seconds: float
    untimed: dict[str, int]

    def describe(self) -> str:
        """'about 2:30 left', 'about 2:30 left, then 2,800 student steps (not timed yet)', or '2,800 student steps
        to go (not timed yet)'."""
        rest = " and ".join(f"{n:,} {kind}" for kind, n in self.untimed.items())
        # "about 0:00 left, then 400 student steps" read as nearly done where the untimed part was all of the run
        timed = "under a second left" if self.seconds < 0.5 else f"about {clock(self.seconds)} left"
        if not self.untimed:
            return timed
        if self.seconds <= 0:
            return f"{rest} to go (not timed yet)"
        return f"{timed}, then {rest} (not timed yet)"


def estimate_time_left(rows: Sequence[dict], remaining: dict[str, int],
                       kind_of: Callable[[dict, dict], str]) -> TimeLeft:
    """`rows`: the job's step metrics so far, each with `elapsed_s` (seconds since the job started when that step
    ended); `remaining`: kind → steps still to take; `kind_of(previous, row)`: the kind of step `row` was. A kind's
    pace is the median time between a step of that kind and the step before it: the first steps of a kind (kernels
    built for a new shape) were several times slower, and a mean over the first dozen promised 2-3x the real time on
    digits. The job's set-up before its first step is no step's."""
    return time_for(remaining, step_paces(rows, kind_of))


def step_paces(rows: Sequence[dict], kind_of: Callable[[dict, dict], str],
               average: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Kind → seconds per step of that kind in `rows` (see `estimate_time_left`). The median suits a run under
    way (its first steps are slow); a finished run's mean, which spreads its evaluations and snapshots over its
    steps, times a new run of the same settings before it starts (the median promised half the time on digits)."""
    spent: dict[str, list[float]] = {}
    for previous, row in zip(rows, rows[1:]):
        spent.setdefault(kind_of(previous, row), []).append(max(0.0, row["elapsed_s"] - previous["elapsed_s"]))
    return {kind: average(seconds) for kind, seconds in spent.items()}


def time_for(remaining: dict[str, int], paces: dict[str, float]) -> TimeLeft:
    """The time `remaining` (kind → steps) takes at `paces` (kind → seconds per step); kinds without a pace are
    counted, not guessed."""
    seconds, untimed = 0.0, {}
    for kind, count in remaining.items():
        if count <= 0:
            continue
        if kind in paces:
            seconds += count * paces[kind]
        else:
            untimed[kind] = count
    return TimeLeft(seconds, untimed)


def clock(seconds: float) -> str:
    """'0:42', '12:05', '1:02:10'."""
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
