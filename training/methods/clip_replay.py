"""``clip-replay``: CLIP's contrastive loss between images and their class-label texts, over the
current task plus the class-balanced memory (option ``memory``).

With class prompts as texts, several images in a batch share one text, so in-batch CLIP would
count an image's own class prompt as a negative; the loss here is image -> class-text
cross-entropy over the distinct prompts in the batch at the model's learned temperature
(``training.methods.gdro.per_sample_losses`` with ``kind=clip``, unweighted)."""
from __future__ import annotations

from training.methods.base import Method, clip_features
from training.methods.class_memory import ClassMemoryData
from training.methods.gdro import class_keys, per_sample_losses


class ClipReplay(ClassMemoryData, Method):
    name = "clip-replay"

    def loss(self, ctx, model, images, tokens, ids):
        keys, target = class_keys(tokens)
        first = [target.tolist().index(k) for k in range(len(keys))]
        img, txt, scale = clip_features(model, images, tokens[first])
        loss = per_sample_losses(img, txt, target, scale, "clip").mean()
        return loss, {"clip_replay": float(loss.detach())}
