import math

import pytest
import torch

from dfkd_core.stats import (Interval, accuracy_interval, mean_interval, wilson_interval,
                             paired_difference_interval, paired_ratio_difference_interval, ratio_interval,
                             resample_counts)


def test_resample_counts_draw_n_units_per_resample():
    counts = resample_counts(7, 50, torch.Generator().manual_seed(0))
    assert counts.shape == (50, 7) and torch.all(counts.sum(1) == 7)


def test_accuracy_interval_matches_the_binomial_spread():
    correct = torch.zeros(1000)
    correct[:900] = 1
    ci = accuracy_interval(correct)
    assert ci.estimate == 0.9 and ci.units == 1000
    # Normal approximation: 0.9 ± 1.96 · sqrt(0.9 · 0.1 / 1000) = 0.9 ± 0.0186
    assert ci.low == pytest.approx(0.9 - 0.0186, abs=0.004) and ci.high == pytest.approx(0.9 + 0.0186, abs=0.004)


def test_ratio_interval_is_the_weighted_mean_over_groups():
    # Two groups: (Σ w·v, Σ w) = (0.5, 1.0) and (3.0, 3.0): estimate 3.5 / 4 by hand.
    ci = ratio_interval([0.5, 3.0], [1.0, 3.0])
    assert ci.estimate == 0.875 and ci.low <= ci.estimate <= ci.high
    # Resamples are {g1, g1} → 0.5, {g1, g2} → 0.875, {g2, g2} → 1.0: the interval cannot leave [0.5, 1].
    assert 0.5 <= ci.low and ci.high <= 1.0


def test_constant_values_give_a_zero_width_interval_and_one_unit_none():
    ci = mean_interval([0.3] * 20)
    assert ci.low == pytest.approx(0.3) and ci.high == pytest.approx(0.3)
    one = mean_interval([0.7])
    assert one.estimate == 0.7 and not one.defined and "1 unit" in one.format()


def test_nan_units_are_left_out_and_counted():
    ci = mean_interval([1.0, float("nan"), 0.0, 1.0])
    assert ci.units == 3 and ci.estimate == pytest.approx(2 / 3)


def test_paired_difference_is_tighter_than_separate_intervals():
    g = torch.Generator().manual_seed(0)
    hard = torch.rand(2000, generator=g)            # per-image difficulty shared by both students
    a = (hard > 0.10).double()
    b = (hard > 0.12).double()                      # b misses every image a misses, and 2% more
    diff = paired_difference_interval(a, b)
    assert diff.estimate == pytest.approx(float(a.mean() - b.mean()))
    assert diff.low > 0                             # the paired comparison resolves the 2-point gap
    sa, sb = accuracy_interval(a), accuracy_interval(b)
    assert sa.low < sb.high                         # the two separate intervals overlap


def test_paired_ratio_difference_of_identical_students_is_exactly_zero():
    num, den = torch.rand(50, dtype=torch.float64), torch.rand(50, dtype=torch.float64) + 0.1
    ci = paired_ratio_difference_interval(num, den, num, den)
    assert ci.estimate == 0 and ci.low == 0 and ci.high == 0


def test_interval_round_trips_and_formats():
    ci = Interval(0.5, 0.4, 0.6, 10)
    assert Interval.from_dict(ci.to_dict()) == ci
    assert ci.format(".1%") == "50.0% [40.0%, 60.0%]" and ci.half_width == pytest.approx(0.1)
    assert math.isnan(ratio_interval([0.0], [0.0]).estimate)


def test_an_accuracy_where_every_image_agrees_gets_a_wilson_interval_not_a_zero_width_one():
    # 360 of 360 right: a bootstrap can only redraw 1s ([1, 1], which reads as certainty); Wilson's bound at
    # p = 1 is n / (n + z²) = 360 / (360 + 1.95996²) = 0.98944.
    interval = accuracy_interval(torch.ones(360))
    assert interval.estimate == 1.0 and interval.high == 1.0
    assert interval.low == pytest.approx(360 / (360 + 1.959964 ** 2), abs=1e-6)
    assert "Wilson" in interval.method and interval.resamples == 0
    none = accuracy_interval(torch.zeros(10, dtype=torch.bool))
    assert (none.low, none.estimate) == (0.0, 0.0) and none.high == pytest.approx(1 - 10 / (10 + 1.959964 ** 2))
    assert accuracy_interval(torch.tensor([1.0, 0.0, 1.0, 1.0])).method == "percentile bootstrap"


def test_wilson_interval_by_hand():
    """30 of 36 at 95% (z = 1.959964): centre (p + z²/2n)/(1 + z²/n), half z/(1 + z²/n)·√(p(1−p)/n + z²/4n²),
    computed by hand: p = 0.83333, z²/n = 0.10671, centre 0.80119, half 0.12010."""
    i = wilson_interval(30, 36)
    assert i.estimate == pytest.approx(30 / 36) and i.units == 36 and i.method == "Wilson score"
    assert (i.low, i.high) == (pytest.approx(0.68109, abs=1e-4), pytest.approx(0.92130, abs=1e-4))
    assert wilson_interval(36, 36).low == pytest.approx(36 / (36 + 1.959964 ** 2))   # the all-right case
    assert wilson_interval(0, 36).low == 0.0 and math.isnan(wilson_interval(0, 0).estimate)
