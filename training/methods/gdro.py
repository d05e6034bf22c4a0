"""``gdro``: class-level distributionally robust reweighting of a contrastive loss.

In a class-incremental stream with a small memory, old classes are few in every batch and
their loss drifts up unnoticed. GDRO keeps a moving average of each class's loss and weights
classes by p = softmax(L_k / lambda) (the closed-form solution of max_p sum_k p_k L_k - lambda
KL(p || uniform)), with stop-gradient weights, so classes the model is forgetting get more
weight. Per-sample losses are image -> class-text cross-entropy over the class prompts present
in the batch (``clip``), or the pairwise squared hinge mean_neg max(0, m + s_neg - s_pos)^2
(``hinge``). A sample's class is its prompt: every class has one ("a photo of a {name}."), so
identical token rows are one class, and the class key (the prompt's tokens) is stable across
batches, tasks and checkpoints.

Defaults chosen here (document, then tune per dataset): ``lambda`` 1.0, ``gamma`` 0.9 (the moving
average rate of the GCL estimators), ``margin`` 0.5, ``kind`` clip.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.methods.base import Method, clip_features
from training.methods.class_memory import ClassMemoryData


def class_keys(tokens: torch.Tensor) -> tuple[list[tuple], torch.Tensor]:
    """(unique class keys in first-seen order, class index of every sample) from prompt tokens."""
    rows = [tuple(r) for r in tokens.tolist()]
    keys: dict[tuple, int] = {}
    idx = [keys.setdefault(r, len(keys)) for r in rows]
    return list(keys), torch.tensor(idx, dtype=torch.long, device=tokens.device)


def class_prompts(tokens: torch.Tensor) -> tuple[list[tuple], torch.Tensor, torch.Tensor]:
    """(class keys, class index of every sample, one prompt row per class in key order)."""
    keys, target = class_keys(tokens)
    first = [target.tolist().index(k) for k in range(len(keys))]
    return keys, target, tokens[first]


def per_sample_losses(img, class_txt, target, scale, kind: str = "clip", margin: float = 0.5) -> torch.Tensor:
    logits = img @ class_txt.T  # [B, K] cosine similarities
    if kind == "clip":
        return F.cross_entropy(scale * logits, target, reduction="none")
    if kind == "hinge":
        pos = logits.gather(1, target[:, None])
        neg = torch.ones_like(logits, dtype=torch.bool).scatter_(1, target[:, None], False)
        h = torch.clamp(margin + logits - pos, min=0.0) ** 2
        n_neg = neg.sum(dim=1).clamp(min=1)
        return (h * neg).sum(dim=1) / n_neg
    raise ValueError(f"unknown gdro loss {kind!r}: clip or hinge")


class ClassDRO:
    """Moving-average class losses and their softmax weights."""

    def __init__(self, lam: float = 1.0, gamma: float = 0.9):
        if lam <= 0 or not 0.0 < gamma <= 1.0:
            raise ValueError(f"need lambda > 0 and gamma in (0, 1], got {lam}, {gamma}")
        self.lam, self.gamma = lam, gamma
        self.avg: dict[tuple, float] = {}

    def weights(self, keys: list[tuple], class_losses: torch.Tensor) -> torch.Tensor:
        """Update the averages of the classes in the batch; their weights p (sum 1, no gradient)."""
        for k, v in zip(keys, class_losses.detach().tolist()):
            self.avg[k] = v if k not in self.avg else (1 - self.gamma) * self.avg[k] + self.gamma * v
        avg = torch.tensor([self.avg[k] for k in keys], dtype=class_losses.dtype, device=class_losses.device)
        return torch.softmax(avg / self.lam, dim=0)

    def state_dict(self) -> dict:
        return {"lam": self.lam, "gamma": self.gamma, "keys": [list(k) for k in self.avg], "avg": list(self.avg.values())}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.gamma = float(state["lam"]), float(state["gamma"])
        self.avg = {tuple(k): float(v) for k, v in zip(state["keys"], state["avg"])}


class GDRO(ClassMemoryData, Method):
    name = "gdro"

    def __init__(self, options=None):
        super().__init__(options)
        self.dro = ClassDRO(self.option("lambda", 1.0), self.option("gamma", 0.9))
        self.kind, self.margin = self.option("kind", "clip"), self.option("margin", 0.5)

    def loss(self, ctx, model, images, tokens, ids):
        keys, target, prompts = class_prompts(tokens)
        img, txt, scale = clip_features(model, images, prompts)
        per_sample = per_sample_losses(img, txt, target, scale, self.kind, self.margin)
        class_loss = torch.zeros(len(keys), dtype=per_sample.dtype, device=per_sample.device).index_add(0, target, per_sample)
        class_loss = class_loss / torch.bincount(target, minlength=len(keys)).to(per_sample.dtype)
        p = self.dro.weights(keys, class_loss)
        loss = (p * class_loss).sum()
        return loss, {"gdro": float(loss.detach()), "max_class_weight": float(p.max())}

    def state_dict(self) -> dict:
        return {"dro": self.dro.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.dro.load_state_dict(state["dro"])
