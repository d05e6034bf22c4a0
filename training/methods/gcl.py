"""``gcl``: CLIP's contrastive loss with global partition-sum estimators (SogCLR: Yuan et al.,
"Provable Stochastic Optimization for Global Contrastive Learning: Small Batch Does Not Harm
Performance", ICML 2022), on labels.

CLIP normalises each anchor's positive against the negatives of its mini-batch only; with small
batches (and small memories) that normaliser is a poor estimate of the dataset-wide one. GCL
keeps, per sample id and per direction (image->text, text->image), a moving average u_i of the
batch estimate of the negative partition sum

    g_i = 1/|N_i| sum_{j in N_i} exp((s_ij - s_ii) / tau),   u_i <- (1 - gamma) u_i + gamma g_i

(gamma = 1 the first time a sample is seen), held in log space with the log-sum-exp shift so
that large similarities cannot overflow. The loss uses stop-gradient weights
w_ij = exp((s_ij - s_ii)/tau) / u_i:  L_i = 1/|N_i| sum_{j in N_i} w_ij (s_ij - s_ii)/tau, whose
gradient is that of tau-scaled log(global mean of exp) estimated with u (SogCLR's Algorithm 1).
The state is indexed by sample id and carried across tasks (and into checkpoints).

Negatives on labels: N_i holds the samples whose text differs from sample i's. In class- and
domain-incremental streams every text is a class prompt, so two samples of one class carry the
same prompt; each same-class (image, prompt) pair is then a positive pair (the anchor of one of
them), never a negative of any anchor, and an image is never pushed away from its own class
prompt. With distinct captions (TiC's web data) N_i is every other sample of the batch, as in
SogCLR. A sample whose batch holds no other class adds nothing and leaves its estimator as it is.

Temperature: ``tau`` (default 0.1, fixed, as SogCLR's objective is defined and its released
code's default ``--t 0.1``); ``tau=learned`` uses the model's learned temperature 1/logit_scale
(CLIP's). ``gamma`` 0.9 (SogCLR's released default).
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

    def loss(self, img: torch.Tensor, txt: torch.Tensor, ids, inv_tau, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Both directions' global contrastive loss. ``tokens``: the texts' token rows; samples
        with identical rows are positives of each other and never negatives (None: all distinct)."""
        ids = [int(i) for i in (ids.tolist() if torch.is_tensor(ids) else ids)]
        B = img.shape[0]
        if B < 2:
            raise ValueError("the global contrastive loss needs at least 2 samples in a batch")
        sim = img @ txt.T
        pos = sim.diagonal()
        if tokens is None:
            neg = ~torch.eye(B, dtype=torch.bool, device=sim.device)
        else:
            t = tokens.reshape(B, -1)
            neg = ~(t[:, None, :] == t[None, :, :]).all(dim=-1).to(sim.device)
        n_neg = neg.sum(dim=1)
        has = n_neg > 0
        total = sim.sum() * 0.0  # keeps the graph when no sample has a negative
        for direction, h in enumerate(((sim - pos[:, None]) * inv_tau, (sim.T - pos[:, None]) * inv_tau)):
            hd = h.detach().masked_fill(~neg, -torch.inf)
            if not bool(has.any()):
                break
            rows = has.nonzero().flatten().tolist()
            log_g = torch.logsumexp(hd[has], dim=1) - torch.log(n_neg[has].to(hd.dtype))
            log_u = torch.full((B,), torch.inf, dtype=hd.dtype, device=hd.device)
            log_u[has] = self.update([ids[r] for r in rows], log_g, direction)
            w = torch.exp(hd - log_u[:, None])  # stop-gradient weights, 0 off the negatives
            per = (w * h.masked_fill(~neg, 0.0)).sum(dim=1) / n_neg.clamp(min=1)
            total = total + per.mean()
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
        tau = self.options.get("tau", 0.1)
        if tau != "learned" and not float(tau) > 0:
            raise ValueError(f"gcl: tau must be > 0 or 'learned', got {tau!r}")
        self.tau = tau

    def loss(self, ctx, model, images, tokens, ids):
        img, txt, scale = clip_features(model, images, tokens)
        inv_tau = scale if self.tau == "learned" else 1.0 / float(self.tau)
        loss = self.estimator.loss(img, txt, ids, inv_tau, tokens)
        return loss, {"gcl": float(loss.detach())}

    def state_dict(self) -> dict:
        return {"estimator": self.estimator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.estimator.load_state_dict(state["estimator"])
