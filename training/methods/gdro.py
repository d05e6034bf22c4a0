"""``gdro``: class-level distributionally robust optimisation of a partial-AUC style loss, in
the compositional KL-DRO form of Zhu et al., "When AUC meets DRO: Optimizing Partial AUC for Deep
Learning with Non-Convex Convergence Guarantee" (ICML 2022; their SOPA-s estimator, LibAUC's
``pAUC_DRO_Loss``), with the DRO's distribution over classes.

In a class-incremental stream with a small memory, old classes are few in every batch and their
loss drifts up unnoticed. For a sample i of class k (its class prompt is its positive text) and
each other class prompt j of the batch (its negatives), the pairwise squared hinge

    l_ij = max(0, margin - (s_ik - s_ij))^2          (s: cosine similarity image -> prompt)

is the surrogate of a mis-ranked pair. Per class k, the inner KL-DRO over its pairs is
L_k = lambda_inner * log E_{i in k, j} exp(l_ij / lambda_inner) (one-way partial AUC by KL-DRO):
its expectation inside the log is tracked by a per-class moving average (the compositional
estimator), u_k <- (1 - gamma) u_k + gamma * mean_{i in k, j} exp(l_ij / lambda_inner) over the
batch's pairs of class k (u_k = the batch mean at the first visit), and the gradient uses the
stop-gradient weights exp(l_ij / lambda_inner) / u_k:  S_k = mean_{i in k, j} [exp(l_ij /
lambda_inner) / u_k] l_ij, whose gradient estimates that of L_k. The outer KL-DRO over classes,
max_p sum_k p_k L_k - lambda KL(p || uniform over the seen classes), has the closed form
p_k = exp(L_k / lambda) / sum_{k' seen} exp(L_k' / lambda), normalised over every class seen so
far (each with its stored L_k), not only the batch's; the batch loss is sum_{k in batch} p_k S_k.

A class is its prompt: every class has one ("a photo of a {name}."), so identical token rows are
one class, and the class key (the prompt's tokens) is stable across batches, tasks and
checkpoints. A batch with a single class has no negatives and gives no loss (and no update).

Options (defaults from LibAUC's ``pAUC_DRO_Loss``, the released code of Zhu et al. 2022):
``margin`` 1.0, ``gamma`` 0.9 (moving-average rate), ``lambda_inner`` 1.0 (KL-DRO temperature over
a class's pairs), ``lambda`` 1.0 (KL-DRO temperature over classes; larger: closer to uniform).
"""
from __future__ import annotations

import math

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


def per_sample_losses(img, class_txt, target, scale) -> torch.Tensor:
    """Image -> class-text cross-entropy per sample over the batch's class prompts (the class-text
    task loss of ``clip-replay`` and the class-stream ``ewc``/``lwf``)."""
    return F.cross_entropy(scale * img @ class_txt.T, target, reduction="none")


def pairwise_hinge(img, class_txt, target, margin: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(l [B, K] = max(0, margin - (s_pos - s_ij))^2, mask of the negatives j != target)."""
    sims = img @ class_txt.T
    pos = sims.gather(1, target[:, None])
    neg = torch.ones_like(sims, dtype=torch.bool).scatter_(1, target[:, None], False)
    return torch.clamp(margin - (pos - sims), min=0.0) ** 2, neg


class ClassDRO:
    """Per-class compositional estimators (log u_k) and the KL-DRO class weights."""

    def __init__(self, lam: float = 1.0, gamma: float = 0.9, lam_inner: float = 1.0):
        if lam <= 0 or lam_inner <= 0 or not 0.0 < gamma <= 1.0:
            raise ValueError(f"need lambda > 0, lambda_inner > 0 and gamma in (0, 1], got {lam}, {lam_inner}, {gamma}")
        self.lam, self.gamma, self.lam_inner = lam, gamma, lam_inner
        self.log_u: dict[tuple, float] = {}

    def loss(self, keys: list[tuple], target: torch.Tensor, pair_loss: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the batch's classes' estimators; (sum_{k in batch} p_k S_k, p over the batch's classes)."""
        z = (pair_loss / self.lam_inner).masked_fill(~neg, -torch.inf)
        zd = z.detach()
        classes = [k for k in range(len(keys)) if bool(neg[target == k].any())]
        lg, l1 = math.log(self.gamma), (math.log1p(-self.gamma) if self.gamma < 1.0 else -math.inf)
        surrogate = {}
        for k in classes:
            rows = target == k
            n_pairs = int(neg[rows].sum())
            log_g = float(torch.logsumexp(zd[rows].flatten(), 0)) - math.log(n_pairs)
            old = self.log_u.get(keys[k])
            log_u = log_g if old is None else float(torch.logaddexp(torch.tensor(l1 + old), torch.tensor(lg + log_g)))
            self.log_u[keys[k]] = log_u
            w = torch.exp(zd[rows] - log_u)  # stop-gradient weights, 0 off the negatives
            surrogate[k] = (w * pair_loss[rows].masked_fill(~neg[rows], 0.0)).sum() / n_pairs
        if not classes:
            return pair_loss.sum() * 0.0, pair_loss.new_zeros(0)
        seen = list(self.log_u)
        L = torch.tensor([self.lam_inner * self.log_u[k] for k in seen], dtype=pair_loss.dtype)
        p_all = torch.softmax(L / self.lam, dim=0).to(pair_loss.device)
        p = torch.stack([p_all[seen.index(keys[k])] for k in classes])
        return sum(p[n] * surrogate[k] for n, k in enumerate(classes)), p

    def state_dict(self) -> dict:
        return {"lam": self.lam, "gamma": self.gamma, "lam_inner": self.lam_inner, "keys": [list(k) for k in self.log_u],
                "log_u": list(self.log_u.values())}

    def load_state_dict(self, state: dict) -> None:
        self.lam, self.gamma = float(state["lam"]), float(state["gamma"])
        self.lam_inner = float(state.get("lam_inner", 1.0))
        self.log_u = {tuple(k): float(v) for k, v in zip(state["keys"], state["log_u"])}


class GDRO(ClassMemoryData, Method):
    name = "gdro"

    def __init__(self, options=None):
        super().__init__(options)
        self.dro = ClassDRO(self.option("lambda", 1.0), self.option("gamma", 0.9), self.option("lambda_inner", 1.0))
        self.margin = self.option("margin", 1.0)

    def loss(self, ctx, model, images, tokens, ids):
        keys, target, prompts = class_prompts(tokens)
        img, txt, _ = clip_features(model, images, prompts)
        pair_loss, neg = pairwise_hinge(img, txt, target, self.margin)
        loss, p = self.dro.loss(keys, target, pair_loss, neg)
        return loss, {"gdro": float(loss.detach()), "max_class_weight": float(p.max()) if len(p) else 0.0}

    def state_dict(self) -> dict:
        return {"dro": self.dro.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.dro.load_state_dict(state["dro"])
