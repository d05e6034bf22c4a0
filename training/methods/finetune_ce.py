"""``finetune-ce``: cross-entropy on the current task only (the baseline of memory-efficient CL
with CLIP): logits = image features x text embeddings of all the current task's class prompts,
at the model's learned temperature. No memory. The runner gives the method each task's class
prompts (``task_prompts``: one token tensor [K_t, L] per task)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from training.methods.base import Method, clip_features


class FinetuneCE(Method):
    name = "finetune-ce"
    task_prompts: list[torch.Tensor] | None = None

    def loss(self, ctx, model, images, tokens, ids):
        if self.task_prompts is None:
            raise ValueError("finetune-ce needs the stream's class prompts (python -m training.incremental sets them)")
        prompts = self.task_prompts[ctx.t].to(tokens.device)
        match = (tokens[:, None, :] == prompts[None, :, :]).all(dim=2)  # [B, K]: the sample's class prompt
        if not bool(match.any(dim=1).all()):
            raise ValueError("a sample's text is not one of the current task's class prompts")
        target = match.float().argmax(dim=1)
        img, txt, scale = clip_features(model, images, prompts)
        loss = F.cross_entropy(scale * img @ txt.T, target)
        return loss, {"ce": float(loss.detach())}
