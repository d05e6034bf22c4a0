"""``gcl``: CLIP's contrastive loss with global partition-sum estimators (SogCLR, Yuan et al. 2022).

CLIP normalises each anchor's positive against the negatives of its mini-batch only; with small
batches (and small memories) that normaliser is a poor estimate of the dataset-wide one. GCL
keeps, per sample id and per direction (image->text, text->image), a moving average u_i of the
batch estimate of the negative partition sum

    g_i = 1/(B-1) sum_{j != i} exp((s_ij - s_ii) / tau),   u_i <- (1 - gamma) u_i + gamma g_i

(gamma = 1 the first time a sample is seen), held in log space with the log-sum-exp shift so
that large similarities cannot overflow. The loss uses stop-gradient weights
w_ij = exp((s_ij - s_ii)/tau) / u_i:  L_i = 1/(B-1) sum_{j != i} w_ij (s_ij - s_ii)/tau, whose
gradient is that of log(global mean of exp) estimated with u. The state is indexed by sample id
and carried across tasks (and into checkpoints).

Defaults: ``gamma`` 0.9 (SogCLR's released default); the temperature is the model's own learned
one (1 / logit_scale), as CLIP trains it.
"""
from __future__ import annotations

import math

import torch

from training.methods.base import Method, clip_features
from training.methods.class_memory import ClassMemoryData


class GlobalContrastiveEstimator:
    """Per-id moving averages of log partition sums, two directions."""

    def __init__(self, gamma: float = 0.9):
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma
        self.log_u: dict[int, list[float]] = {}  # id -> [image->text, text->image]

    def update(self, ids: list[int], log_g: torch.Tensor, direction: int) -> torch.Tensor:
        """Fold batch estimates ``log_g`` (log g_i) into the state; returns log u_i for the batch."""
        out = []
        lg = math.log(self.gamma)
        l1 = math.log1p(-self.gamma) if self.gamma < 1.0 else -math.inf
        for i, v in zip(ids, log_g.tolist()):
            state = self.log_u.setdefault(int(i), [math.nan, math.nan])
            old = state[direction]
            new = v if math.isnan(old) else float(torch.logaddexp(torch.tensor(l1 + old), torch.tensor(lg + v)))
            state[direction] = new
            out.append(new)
        return torch.tensor(out, dtype=log_g.dtype, device=log_g.device)

    def loss(self, img: torch.Tensor, txt: torch.Tensor, ids, inv_tau: torch.Tensor) -> torch.Tensor:
        ids = [int(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)]
        B = img.shape[0]
        if B < 2:
            raise ValueError("the global contrastive loss needs at least 2 samples in a batch")
        sim = img @ txt.T
        pos = sim.diagonal()
        off = ~torch.eye(B, dtype=torch.bool, device=sim.device)
        total = 0.0
        for direction, h in enumerate(((sim - pos[:, None]) * inv_tau, (sim.T - pos[:, None]) * inv_tau)):
            hd = h.detach().masked_fill(~off, -torch.inf)
            log_g = torch.logsumexp(hd, dim=1) - math.log(B - 1)  # shifted: logsumexp subtracts the row max
            log_u = self.update(ids, log_g, direction)
            w = torch.exp(hd - log_u[:, None])  # stop-gradient weights, 0 on the diagonal
            total = total + ((w * h.masked_fill(~off, 0.0)).sum(dim=1) / (B - 1)).mean()
        return total

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "ids": list(self.log_u), "log_u": [self.log_u[i] for i in self.log_u]}

    def load_state_dict(self, state: dict) -> None:
        self.gamma = float(state["gamma"])
        self.log_u = {int(i): list(v) for i, v in zip(state["ids"], state["log_u"])}


class GCL(ClassMemoryData, Method):
    name = "gcl"

    def __init__(self, options=None):
        super().__init__(options)
        self.estimator = GlobalContrastiveEstimator(self.option("gamma", 0.9))

    def loss(self, ctx, model, images, tokens, ids):
        img, txt, scale = clip_features(model, images, tokens)
        loss = self.estimator.loss(img, txt, ids, scale)
        return loss, {"gcl": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.estimator.load_state_dict(state["estimator"])
