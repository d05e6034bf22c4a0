"""Offline merge: tasks train one after the other from the fine-tuned weights; the evaluated
model after task t is ``training.merging.linear`` of every task checkpoint so far with
``weights``: ``uniform`` (a model soup), ``linear`` (w_k ∝ k + 1: later tasks count more) or
``exp`` (w_k ∝ ``gamma`` ** (t - k), default gamma 0.5). With ``base=true`` the base model joins
the merge with weight of a task at index -1. ``operator=task_arithmetic`` or ``operator=ties``
(options ``scale``, ``density`` as in ``running_merge``) merges the task vectors of every task
checkpoint against the base model instead of averaging the checkpoints. Task checkpoints are
held in the method's state."""
from __future__ import annotations

from training import merging
from training.methods.base import Method
from training.methods.running_merge import VECTOR_OPERATORS, _clone, merge_operator, merge_task_vectors

WEIGHTS = ("uniform", "linear", "exp")


def schedule_weights(kind: str, n: int, gamma: float = 0.5) -> list[float]:
    """Weights of n checkpoints (oldest first), before normalisation."""
    if kind == "uniform":
        return [1.0] * n
    if kind == "linear":
        return [float(k + 1) for k in range(n)]
    if kind == "exp":
        return [gamma ** (n - 1 - k) for k in range(n)]
    raise ValueError(f"unknown merge weights {kind!r}; valid: {', '.join(WEIGHTS)}")


class OfflineMerge(Method):
    name = "offline-merge"

    def __init__(self, options=None):
        super().__init__(options)
        self.operator = merge_operator(self, "linear", ("linear", *VECTOR_OPERATORS))
        self.checkpoints: list[dict] = []
        self.base: dict | None = None

    def begin_step(self, ctx, model):
        if self.base is None:
            self.base = _clone(model.state_dict())
        if self.checkpoints:
            model.load_state_dict(self.checkpoints[-1])

    def end_step(self, ctx, model, batches=None):
        self.checkpoints.append(_clone(model.state_dict()))
        if self.operator in VECTOR_OPERATORS:
            model.load_state_dict(merge_task_vectors(self, self.operator, self.base, self.checkpoints))
            return
        states = ([self.base] if self.option("base", False) else []) + self.checkpoints
        w = schedule_weights(self.options.get("weights", "uniform"), len(states), self.option("gamma", 0.5))
        model.load_state_dict(merging.linear(states, w))

    def state_dict(self):
        return {"checkpoints": self.checkpoints, "base": self.base}

    def load_state_dict(self, state):
        self.checkpoints = list(state.get("checkpoints", []))
        self.base = state.get("base")
