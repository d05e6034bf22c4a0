"""EWC: elastic weight consolidation (Kirkpatrick et al. 2017) with a diagonal Fisher.

After each step, the squared gradients of the task loss (``Method.task_loss``: CLIP's
contrastive loss, or the class-text loss in class-incremental streams) over ``fisher_samples``
samples of the step's data (default 512) estimate the Fisher; later steps add
``weight``/2 * sum F (theta - theta*)^2 (default weight 1000). Fishers of successive steps
accumulate (online EWC with gamma = 1). The Fisher's forward/backward passes are counted in
the step's compute: they are taken from the step's sample budget.
"""
from __future__ import annotations

import torch

from training.methods.base import Method


class EWC(Method):
    name = "ewc"

    def __init__(self, options=None):
        super().__init__(options)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def overhead_samples(self, t, budget):
        return min(self.option("fisher_samples", 512), budget // 4)

    def loss(self, ctx, model, images, tokens, ids):
        contrastive, _ = self.task_loss(ctx, model, images, tokens)
        logs = {"contrastive": float(contrastive.detach())}
        if not self.fisher:
            return contrastive, logs
        params = dict(_named(model))
        penalty = sum((self.fisher[n] * (params[n] - self.anchor[n]) ** 2).sum() for n in self.fisher)
        logs["ewc"] = float(penalty.detach())
        return contrastive + 0.5 * self.option("weight", 1000.0) * penalty, logs

    def end_step(self, ctx, model, batches=None):
        if batches is None:
            return
        sums = {n: torch.zeros_like(p) for n, p in _named(model)}
        count = 0
        for images, tokens in batches:
            model.zero_grad(set_to_none=True)
            self.task_loss(ctx, model, images, tokens)[0].backward()
            for n, p in _named(model):
                if p.grad is not None:
                    sums[n] += p.grad.detach() ** 2
            count += 1
        model.zero_grad(set_to_none=True)
        for n, s in sums.items():
            f = s / max(1, count)
            self.fisher[n] = self.fisher.get(n, torch.zeros_like(f)) + f
        self.anchor = {n: p.detach().clone() for n, p in _named(model)}

    def state_dict(self):
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state):
        self.fisher = dict(state.get("fisher", {}))
        self.anchor = dict(state.get("anchor", {}))


def _named(model):
    m = model.module if hasattr(model, "module") else model
    return [(n, p) for n, p in m.named_parameters() if p.requires_grad]
