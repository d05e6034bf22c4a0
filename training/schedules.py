"""Learning-rate schedules: pure functions of (task, step), no optimizer state, so a resumed run
gets the same LR from the same (task, step) without restoring a scheduler.

Within a time step (task): linear warmup (open_clip's ``_warmup_lr``: base * (step + 1) /
warmup), then cosine decay to ``min_lr`` (open_clip's ``cosine_lr``), a constant LR, or rsqrt
with a linear cooldown (Zhai et al. 2022, "Scaling Vision Transformers"). Across tasks, a
meta-schedule sets each task's peak: ``constant`` (TiC-CLIP: a fresh cosine per time step with
the same peak), or FoMo-in-Flux's autoregressive schedules (Roth et al. 2024), whose peak decays
over tasks and to which each task warms up again ("recovers"): ``cosine-recovery`` (the peaks
follow one cosine over all tasks) and ``rsqrt-recovery`` (peak / sqrt(task + 1)).
"""
from __future__ import annotations

import math


def _warmup(step: int, base_lr: float, warmup_steps: int) -> float:
    return base_lr * (step + 1) / warmup_steps


def cosine(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """Warmup, then half a cosine from ``base_lr`` to ``min_lr`` at ``total_steps`` (open_clip's
    ``cosine_lr``, Loshchilov & Hutter 2017, without restarts)."""
    if step < warmup_steps:
        return _warmup(step, base_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    e, es = step - warmup_steps, total_steps - warmup_steps
    return min_lr + 0.5 * (1 + math.cos(math.pi * e / es)) * (base_lr - min_lr)


def constant(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Warmup, then ``base_lr``: the baseline the decaying schedules are compared with."""
    return _warmup(step, base_lr, warmup_steps) if step < warmup_steps else base_lr


def rsqrt(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, cooldown_steps: int = 0,
          timescale: int | None = None) -> float:
    """Warmup, then base_lr * sqrt(timescale / (step - warmup + timescale)), decayed linearly to 0
    over the last ``cooldown_steps`` (Zhai et al. 2022): the decay does not depend on the run's
    length, so only the cooldown has to know where a task ends."""
    if step < warmup_steps:
        return _warmup(step, base_lr, warmup_steps)
    if step >= total_steps:
        return 0.0
    ts = max(1, warmup_steps) if timescale is None else timescale
    if ts <= 0:
        raise ValueError(f"timescale must be positive, got {ts}")
    lr = base_lr * math.sqrt(ts) / math.sqrt(step - warmup_steps + ts)
    if cooldown_steps > 0 and step >= total_steps - cooldown_steps:
        lr *= (total_steps - step) / cooldown_steps
    return lr


SCHEDULES = {"cosine": cosine, "constant": constant, "rsqrt": rsqrt}
META_SCHEDULES = ("constant", "cosine-recovery", "rsqrt-recovery")


def task_peak_lr(task: int, base_lr: float, n_tasks: int, kind: str = "constant") -> float:
    """Peak LR of task ``task`` (0-based). Within the task the LR warms up again ("recovers") to
    this peak and decays from it (FoMo-in-Flux's autoregressive meta-schedules, Roth et al. 2024):
    a lower peak for later tasks trades plasticity for less forgetting."""
    if kind == "constant":
        return base_lr
    if kind == "cosine-recovery":
        return base_lr * 0.5 * (1 + math.cos(math.pi * task / max(1, n_tasks)))
    if kind == "rsqrt-recovery":
        return base_lr / math.sqrt(task + 1)
    raise ValueError(f"unknown meta-schedule {kind!r}; valid: {', '.join(META_SCHEDULES)}")


def lr_at(task: int, step: int, *, steps_per_task: int, base_lr: float, n_tasks: int, schedule: str = "cosine",
          meta: str = "constant", warmup_steps: int = 0, first_task_warmup_steps: int | None = None,
          cooldown_steps: int = 0, min_lr: float = 0.0) -> float:
    """The LR at ``step`` of ``task``: the trainer's single entry point. The first task may warm
    up for longer (from random or pretrained init) than the later ones, which start from the
    previous task's weights."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    peak = task_peak_lr(task, base_lr, n_tasks, meta)
    warmup = first_task_warmup_steps if task == 0 and first_task_warmup_steps is not None else warmup_steps
    if schedule == "cosine":
        return cosine(step, steps_per_task, peak, warmup_steps=warmup, min_lr=min_lr)
    if schedule == "rsqrt":
        return rsqrt(step, steps_per_task, peak, warmup_steps=warmup, cooldown_steps=cooldown_steps)
    return constant(step, steps_per_task, peak, warmup_steps=warmup)
