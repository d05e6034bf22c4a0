"""Learning-rate schedules: pure functions of (task, step), no optimizer state.

Within a time step (task): linear warmup (open_clip's ``_warmup_lr``: base * (step + 1) /
warmup), then cosine decay to ``min_lr`` (open_clip's ``cosine_lr``), a constant LR, or
rsqrt with a linear cooldown (Zhai et al. 2022, "Scaling Vision Transformers"). Across tasks,
a meta-schedule sets each task's peak: ``constant`` (TiC-CLIP: a fresh cosine per step with
the same peak), or FoMo-in-Flux's autoregressive schedules whose peak decays over tasks and
to which each task warms up again: ``cosine-recovery`` (the peak follows one cosine over all
tasks) and ``rsqrt-recovery`` (peak / sqrt(task + 1)).
"""
from __future__ import annotations

import math


def _warmup(step: int, base_lr: float, warmup_steps: int) -> float:
    return base_lr * (step + 1) / warmup_steps


def cosine(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return _warmup(step, base_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    e, es = step - warmup_steps, max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * e / es)) * (base_lr - min_lr)


def constant(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    return _warmup(step, base_lr, warmup_steps) if step < warmup_steps else base_lr


def rsqrt(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, cooldown_steps: int = 0,
          timescale: int | None = None, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return _warmup(step, base_lr, warmup_steps)
    if step >= total_steps:
        return 0.0
    ts = timescale or max(1, warmup_steps)
    lr = base_lr * math.sqrt(ts) / math.sqrt(step - warmup_steps + ts)
    cool_start = total_steps - cooldown_steps
    if cooldown_steps and step >= cool_start:
        lr *= (total_steps - step) / cooldown_steps
    return lr


SCHEDULES = {"cosine": cosine, "constant": constant, "rsqrt": rsqrt}
META_SCHEDULES = ("constant", "cosine-recovery", "rsqrt-recovery")


def task_peak_lr(task: int, base_lr: float, n_tasks: int, kind: str = "constant") -> float:
    """Peak LR of task ``task`` (0-based); within the task the LR warms up ("recovers") to it."""
    if kind == "constant":
        return base_lr
    if kind == "cosine-recovery":
        return base_lr * 0.5 * (1 + math.cos(math.pi * task / max(1, n_tasks)))
    if kind == "rsqrt-recovery":
        return base_lr / math.sqrt(task + 1)
    raise ValueError(f"unknown meta-schedule {kind!r}; known: {', '.join(META_SCHEDULES)}")


def lr_at(task: int, step: int, *, steps_per_task: int, base_lr: float, n_tasks: int, schedule: str = "cosine",
          meta: str = "constant", warmup_steps: int = 0, first_task_warmup_steps: int | None = None,
          cooldown_steps: int = 0, min_lr: float = 0.0) -> float:
    """The LR the trainer uses at ``step`` of ``task``: the one entry point."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    peak = task_peak_lr(task, base_lr, n_tasks, meta)
    warmup = first_task_warmup_steps if task == 0 and first_task_warmup_steps is not None else warmup_steps
    if schedule == "rsqrt":
        return rsqrt(step, steps_per_task, peak, warmup, cooldown_steps, min_lr=min_lr)
    return SCHEDULES[schedule](step, steps_per_task, peak, warmup, min_lr)
