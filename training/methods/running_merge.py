"""Shared piece of the continual merge schemes (FoMo-in-Flux, Roth et al. 2024): a running merge
of the models trained on each task, starting from the base model, and the operator that
updates it (``training.merging``). The schemes differ only in where each task's training
starts (``start``) and the evaluated checkpoint of every task is the running merge.

Options: ``operator`` (``ema``: decay * merge + (1 - decay) * new; ``slerp``: spherical, new
with weight 1 - decay; ``task_arithmetic``: base + scale * sum of every task model's task vector
(task model - base; Ilharco et al. 2023); ``ties``: TIES-merging of those task vectors with
``density`` (default 0.2) and ``scale``; ``merge`` is the option's older name), ``decay`` (ema
and slerp: a number, or ``mean`` for the uniform running average of the base and every task's
model, decay = (t + 1) / (t + 2)), ``scale`` (task_arithmetic and ties: a number, default 1.0
as TIES' lambda, or ``mean`` for 1 / number of task models). The task-vector operators keep
every task's model (in the method's checkpointed state) and merge them all after each task.
"""
from __future__ import annotations

import torch

from training import merging
from training.methods.base import Method

OPERATORS = ("ema", "slerp", "task_arithmetic", "ties")
VECTOR_OPERATORS = ("task_arithmetic", "ties")


def _clone(sd: dict) -> dict:
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in sd.items()}


def merge_operator(method: Method, default: str, allowed: tuple[str, ...]) -> str:
    """The ``operator`` option (older name ``merge``), checked against ``allowed``."""
    op = str(method.options.get("operator", method.options.get("merge", default)))
    if op not in allowed:
        raise ValueError(f"{method.name}: operator must be one of {', '.join(allowed)}, got {op!r}")
    return op


def merge_task_vectors(method: Method, op: str, base: dict, models: list[dict]) -> dict:
    """``task_arithmetic`` or ``ties`` of ``models``' task vectors against ``base``."""
    scale = method.options.get("scale", 1.0)
    scale = 1.0 / len(models) if scale == "mean" else float(scale)
    if op == "task_arithmetic":
        return merging.task_arithmetic(base, models, scale)
    return merging.ties(base, models, method.option("density", 0.2), scale)


class RunningMerge(Method):
    default_decay: float | str = 0.5
    start = "merge"  # merge | finetuned | base: where each task's training starts

    def __init__(self, options=None):
        super().__init__(options)
        self.operator = merge_operator(self, "ema", OPERATORS)
        self.merged: dict | None = None
        self.finetuned: dict | None = None
        self.base: dict | None = None  # task-vector operators: the base model and every task's model
        self.task_models: list[dict] = []

    @property
    def warm_start(self) -> bool:
        return self.start != "base"

    def decay(self, t: int) -> float:
        d = self.options.get("decay", self.default_decay)
        return (t + 1) / (t + 2) if d == "mean" else float(d)

    def combine(self, merged: dict, new: dict, t: int) -> dict:
        """The running merge after task ``t`` from the last one and the new task model."""
        if self.operator in VECTOR_OPERATORS:
            self.task_models.append(new)
            return merge_task_vectors(self, self.operator, self.base, self.task_models)
        d = self.decay(t)
        if self.operator == "ema":
            return merging.ema(merged, new, d)
        return merging.slerp(merged, new, 1.0 - d)

    def begin_step(self, ctx, model):
        if self.merged is None:  # the first task: the running merge is the base model
            self.merged = _clone(model.state_dict())
            if self.operator in VECTOR_OPERATORS:
                self.base = _clone(self.merged)
        if self.start == "finetuned" and self.finetuned is not None:
            model.load_state_dict(self.finetuned)

    def end_step(self, ctx, model, batches=None):
        trained = _clone(model.state_dict())
        if self.start == "finetuned":
            self.finetuned = trained
        self.merged = self.combine(self.merged, trained, ctx.t)
        model.load_state_dict(self.merged)

    def state_dict(self):
        return {"merged": self.merged, "finetuned": self.finetuned, "base": self.base, "task_models": self.task_models}

    def load_state_dict(self, state):
        self.merged = state.get("merged")
        self.finetuned = state.get("finetuned")
        self.base = state.get("base")
        self.task_models = list(state.get("task_models") or [])
