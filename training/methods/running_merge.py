"""Shared piece of the continual merge schemes (FoMo-in-Flux, Roth et al. 2024): a running merge
of the models trained on each task, starting from the base model, and the operator that
updates it (``training.merging``). The schemes differ only in where each task's training
starts (``start``) and the evaluated checkpoint of every task is the running merge.

Options: ``merge`` (``ema``: decay * merge + (1 - decay) * new; ``slerp``: spherical, new with
weight 1 - decay), ``decay`` (a number, or ``mean`` for the uniform running average of the base
and every task's model, decay = (t + 1) / (t + 2)).
"""
from __future__ import annotations

import torch

from training import merging
from training.methods.base import Method


def _clone(sd: dict) -> dict:
    return {k: v.detach().clone() if torch.is_tensor(v) else v for k, v in sd.items()}


class RunningMerge(Method):
    default_decay: float | str = 0.5
    start = "merge"  # merge | finetuned | base: where each task's training starts

    def __init__(self, options=None):
        super().__init__(options)
        self.merged: dict | None = None
        self.finetuned: dict | None = None

    @property
    def warm_start(self) -> bool:
        return self.start != "base"

    def decay(self, t: int) -> float:
        d = self.options.get("decay", self.default_decay)
        return (t + 1) / (t + 2) if d == "mean" else float(d)

    def combine(self, merged: dict, new: dict, t: int) -> dict:
        op, d = self.options.get("merge", "ema"), self.decay(t)
        if op == "ema":
            return merging.ema(merged, new, d)
        if op == "slerp":
            return merging.slerp(merged, new, 1.0 - d)
        raise ValueError(f"{self.name}: merge must be ema or slerp, got {op!r}")

    def begin_step(self, ctx, model):
        if self.merged is None:  # the first task: the running merge is the base model
            self.merged = _clone(model.state_dict())
        if self.start == "finetuned" and self.finetuned is not None:
            model.load_state_dict(self.finetuned)

    def end_step(self, ctx, model, batches=None):
        trained = _clone(model.state_dict())
        if self.start == "finetuned":
            self.finetuned = trained
        self.merged = self.combine(self.merged, trained, ctx.t)
        model.load_state_dict(self.merged)

    def state_dict(self):
        return {"merged": self.merged, "finetuned": self.finetuned}

    def load_state_dict(self, state):
        self.merged = state.get("merged")
        self.finetuned = state.get("finetuned")
