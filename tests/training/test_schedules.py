"""LR schedules against values worked out by hand."""
from __future__ import annotations

import math
import random

import pytest

from training.schedules import META_SCHEDULES, SCHEDULES, constant, cosine, lr_at, rsqrt, task_peak_lr


def test_cosine_warmup_mid_end():
    # total 10, base 1.0, warmup 2: warmup is 1.0 * (step + 1) / 2; decay over es = 10 - 2 = 8 steps
    assert cosine(0, 10, 1.0, warmup_steps=2) == pytest.approx(0.5)  # 1 * 1 / 2
    assert cosine(1, 10, 1.0, warmup_steps=2) == pytest.approx(1.0)  # 1 * 2 / 2
    assert cosine(2, 10, 1.0, warmup_steps=2) == pytest.approx(1.0)  # e = 0: 0.5 * (1 + cos 0)
    assert cosine(6, 10, 1.0, warmup_steps=2) == pytest.approx(0.5)  # e = 4: 0.5 * (1 + cos(pi / 2))
    assert cosine(9, 10, 1.0, warmup_steps=2) == pytest.approx(0.0380602337)  # e = 7: 0.5 * (1 - 0.9238795325)
    assert cosine(10, 10, 1.0, warmup_steps=2) == 0.0
    assert cosine(25, 10, 1.0, warmup_steps=2) == 0.0


def test_cosine_min_lr():
    assert cosine(6, 10, 1.0, warmup_steps=2, min_lr=0.1) == pytest.approx(0.55)  # 0.1 + 0.5 * (1 + 0) * 0.9
    assert cosine(0, 4, 1.0, min_lr=0.1) == pytest.approx(1.0)  # no warmup: e = 0
    assert cosine(4, 4, 1.0, min_lr=0.1) == 0.1


def test_constant():
    assert constant(0, 10, 0.4, warmup_steps=4) == pytest.approx(0.1)  # 0.4 * 1 / 4
    assert constant(3, 10, 0.4, warmup_steps=4) == pytest.approx(0.4)  # 0.4 * 4 / 4
    assert constant(9, 10, 0.4, warmup_steps=4) == 0.4
    assert constant(0, 10, 0.4) == 0.4


def test_rsqrt_before_and_during_cooldown():
    # total 100, base 1.0, warmup 4 (so timescale 4), cooldown over steps 80..99
    kw = dict(warmup_steps=4, cooldown_steps=20)
    assert rsqrt(0, 100, 1.0, **kw) == pytest.approx(0.25)  # 1 * 1 / 4
    assert rsqrt(4, 100, 1.0, **kw) == pytest.approx(1.0)  # sqrt(4) / sqrt(0 + 4)
    assert rsqrt(16, 100, 1.0, **kw) == pytest.approx(0.5)  # sqrt(4) / sqrt(12 + 4) = 2 / 4
    assert rsqrt(79, 100, 1.0, **kw) == pytest.approx(0.2250175802)  # 2 / sqrt(79), before cooldown
    assert rsqrt(80, 100, 1.0, **kw) == pytest.approx(0.2236067977)  # 2 / sqrt(80) * 20 / 20
    assert rsqrt(90, 100, 1.0, **kw) == pytest.approx(0.1054092553)  # 2 / sqrt(90) * 10 / 20 = 0.2108185107 / 2
    assert rsqrt(99, 100, 1.0, **kw) == pytest.approx(0.0100503782)  # 2 / sqrt(99) * 1 / 20 = 0.2010075631 / 20
    assert rsqrt(100, 100, 1.0, **kw) == 0.0


def test_rsqrt_timescale():
    assert rsqrt(12, 100, 1.0, warmup_steps=4, timescale=1) == pytest.approx(1 / 3)  # 1 / sqrt(8 + 1)
    assert rsqrt(3, 100, 1.0) == pytest.approx(0.5)  # no warmup: timescale 1, 1 / sqrt(3 + 1)
    with pytest.raises(ValueError, match="timescale"):
        rsqrt(5, 100, 1.0, timescale=0)


def test_meta_peaks_four_tasks():
    assert [task_peak_lr(t, 1.0, 4, "constant") for t in range(4)] == [1.0] * 4
    cos_peaks = [task_peak_lr(t, 1.0, 4, "cosine-recovery") for t in range(4)]
    # 0.5 * (1 + cos(pi * t / 4)): cos 0 = 1, cos(pi/4) = 0.7071067812, cos(pi/2) = 0, cos(3pi/4) = -0.7071067812
    assert cos_peaks == pytest.approx([1.0, 0.8535533906, 0.5, 0.1464466094])
    rsqrt_peaks = [task_peak_lr(t, 1.0, 4, "rsqrt-recovery") for t in range(4)]
    assert rsqrt_peaks == pytest.approx([1.0, 0.7071067812, 0.5773502692, 0.5])  # 1 / sqrt(t + 1)


def test_lr_at_first_task_warmup_only():
    kw = dict(steps_per_task=10, base_lr=1.0, n_tasks=4, schedule="cosine", meta="rsqrt-recovery",
              warmup_steps=0, first_task_warmup_steps=5)
    assert lr_at(0, 0, **kw) == pytest.approx(0.2)  # peak 1, warmup 5: 1 * 1 / 5
    assert lr_at(0, 4, **kw) == pytest.approx(1.0)  # 1 * 5 / 5
    assert lr_at(0, 5, **kw) == pytest.approx(1.0)  # e = 0
    assert lr_at(1, 0, **kw) == pytest.approx(0.7071067812)  # no warmup: peak 1 / sqrt(2) at e = 0
    assert lr_at(3, 5, **kw) == pytest.approx(0.25)  # peak 1 / sqrt(4) = 0.5, e = 5 of 10: 0.5 * 0.5 * (1 + 0)


def test_lr_at_later_tasks_recover():
    kw = dict(steps_per_task=10, base_lr=1.0, n_tasks=4, meta="cosine-recovery", warmup_steps=2,
              first_task_warmup_steps=None)
    assert lr_at(0, 0, **kw) == pytest.approx(0.5)  # warmup_steps applies to task 0 too: 1 * 1 / 2
    assert lr_at(2, 0, **kw) == pytest.approx(0.25)  # peak 0.5, warming up again: 0.5 * 1 / 2
    assert lr_at(2, 1, **kw) == pytest.approx(0.5)  # back at the peak: 0.5 * 2 / 2
    assert lr_at(2, 10, **kw) == 0.0


def test_lr_at_dispatch():
    assert lr_at(1, 3, steps_per_task=10, base_lr=0.8, n_tasks=4, schedule="constant") == 0.8
    # rsqrt, peak 1 / sqrt(4) = 0.5, no warmup so timescale 1; step 9 is the last of a 2-step cooldown:
    # 0.5 / sqrt(9 + 1) * 1 / 2 = 0.0790569415
    got = lr_at(3, 9, steps_per_task=10, base_lr=1.0, n_tasks=4, schedule="rsqrt", meta="rsqrt-recovery",
                cooldown_steps=2)
    assert got == pytest.approx(0.0790569415)
    assert lr_at(0, 6, steps_per_task=10, base_lr=1.0, n_tasks=1, warmup_steps=2, min_lr=0.1) == pytest.approx(0.55)


def test_unknown_names():
    with pytest.raises(ValueError, match="cosine, constant, rsqrt"):
        lr_at(0, 0, steps_per_task=10, base_lr=1.0, n_tasks=4, schedule="linear")
    with pytest.raises(ValueError, match="constant, cosine-recovery, rsqrt-recovery"):
        lr_at(0, 0, steps_per_task=10, base_lr=1.0, n_tasks=4, meta="step")
    with pytest.raises(ValueError, match="cosine-recovery"):
        task_peak_lr(0, 1.0, 4, "nope")
    assert set(SCHEDULES) == {"cosine", "constant", "rsqrt"}
    assert META_SCHEDULES == ("constant", "cosine-recovery", "rsqrt-recovery")


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("meta", META_SCHEDULES)
def test_pure_function_of_task_and_step(schedule, meta):
    kw = dict(steps_per_task=12, base_lr=0.3, n_tasks=3, schedule=schedule, meta=meta, warmup_steps=2,
              first_task_warmup_steps=4, cooldown_steps=3)
    points = [(t, s) for t in range(3) for s in range(13)]
    forward = {p: lr_at(*p, **kw) for p in points}
    shuffled = points[:]
    random.Random(0).shuffle(shuffled)
    assert {p: lr_at(*p, **kw) for p in shuffled} == forward
    assert {p: lr_at(*p, **kw) for p in points} == forward
    assert all(math.isfinite(v) and 0.0 <= v <= 0.3 for v in forward.values())
