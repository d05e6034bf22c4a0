"""The common interface of continual methods: the training loop calls only these hooks.

A method decides (1) which data a time step trains on (``data``: sources with weights, so
replay buffers and mixtures are data, not loop flags), (2) where the step starts from
(``warm_start``: the previous step's weights, or a fresh model), (3) the loss of a batch
(``loss``: CLIP's contrastive loss by default; regularisers add terms; per-sample state such
as global contrastive estimators is indexed by the batch's sample ids), (4) what happens
after the step (``end_step``: weight interpolation, Fisher information, merging), and (5) how
much compute it spends (``trains_at``, ``compute_multiplier``, ``overhead_samples``). Its
own state (Fisher, estimators, buffers) goes into every checkpoint through
``state_dict``/``load_state_dict``, so a resumed run continues exactly.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from training.data import Source


@dataclass
class StepContext:
    t: int  # index of the time step being trained
    n_steps: int
    sources: list[Source]  # every time step's data, in order
    device: str
    clip_loss: Any  # open_clip ClipLoss configured for the world size
    iterations: int = 0
    prev_model: torch.nn.Module | None = None  # frozen copy of the model the step started from
    extra: dict = field(default_factory=dict)


def clip_features(model, images, tokens):
    out = model(images, tokens)
    if isinstance(out, dict):
        return out["image_features"], out["text_features"], out["logit_scale"]
    return out[0], out[1], out[2]


class Method:
    name = "base"
    warm_start = True
    needs_prev_model = False

    def __init__(self, options: dict | None = None):
        self.options = dict(options or {})

    def option(self, key: str, default):
        v = self.options.get(key, default)
        return type(default)(v) if default is not None and v is not None else v

    # -- compute and data -------------------------------------------------------------
    def trains_at(self, t: int, n_steps: int) -> bool:
        return True

    def compute_multiplier(self, t: int, n_steps: int) -> float:
        return 1.0

    def overhead_samples(self, t: int, budget: int) -> int:
        """Samples drawn after the step's gradient steps for the method's own extra passes (e.g. EWC's
        Fisher), handed to ``end_step``; their MACs are added to the step's compute, on top of the budget."""
        return 0

    def data(self, t: int, sources: list[Source]) -> list[Source]:
        return [sources[t]]

    # -- the step ---------------------------------------------------------------------
    def begin_step(self, ctx: StepContext, model: torch.nn.Module) -> None:
        """Called before the step's optimizer is built: freeze towers, add adapters, reset state."""

    def loss(self, ctx: StepContext, model: torch.nn.Module, images, tokens, ids) -> tuple[torch.Tensor, dict]:
        loss, _ = self.task_loss(ctx, model, images, tokens)
        return loss, {"contrastive": float(loss.detach())}

    # -- the task's own loss, which regularisers (EWC, LwF, ...) add to ----------------
    def texts(self, tokens: torch.Tensor) -> torch.Tensor:
        """The texts a batch's images are contrasted with (default: the batch's own captions)."""
        return tokens

    def contrastive(self, ctx: StepContext, img, txt, scale, tokens) -> torch.Tensor:
        """The task loss on features of ``images`` and ``self.texts(tokens)`` (default: CLIP's)."""
        return ctx.clip_loss(img, txt, scale)

    def sample_losses(self, img, txt, scale, tokens) -> torch.Tensor:
        """Per-sample terms of the task loss on local features (mean = the task loss): CLIP's
        symmetric cross-entropy, row i = (CE(image i -> texts) + CE(text i -> images)) / 2."""
        logits = scale * img @ txt.T
        target = torch.arange(len(img), device=img.device)
        ce = torch.nn.functional.cross_entropy
        return 0.5 * (ce(logits, target, reduction="none") + ce(logits.T, target, reduction="none"))

    def sample_text_row(self, tokens, i: int) -> int:
        """The row of ``self.texts(tokens)`` that is sample i's positive text."""
        return i

    def task_loss(self, ctx: StepContext, model: torch.nn.Module, images, tokens):
        """(loss, (image features, text features, logit scale)) of the task loss."""
        feats = clip_features(model, images, self.texts(tokens))
        return self.contrastive(ctx, *feats, tokens), feats

    def end_step(self, ctx: StepContext, model: torch.nn.Module, batches=None) -> None:
        pass

    # -- checkpointed state -----------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    m = copy.deepcopy(model)
    m.eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m
