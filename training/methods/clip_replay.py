"""``clip-replay``: CLIP's contrastive loss between images and their class-label texts, over the
current task plus the class-balanced memory (option ``memory``).

With class prompts as texts, several images in a batch share one text, so in-batch CLIP would
count an image's own class prompt as a negative; the loss here is image -> class-text
cross-entropy over the distinct prompts in the batch at the model's learned temperature
(``training.methods.gdro.per_sample_losses``, unweighted)."""
from __future__ import annotations

from training.methods.base import Method
from training.methods.class_memory import ClassMemoryData
from training.methods.gdro import class_keys, class_prompts, per_sample_losses


class ClassTextLoss:
    """Mixin for ``Method`` subclasses: the task loss is image -> class-text cross-entropy over the
    distinct class prompts of the batch. Regularisers built on ``Method.task_loss`` (EWC, LwF)
    pick it up unchanged, which is how the class-incremental ``ewc``/``lwf`` reuse the TiC ones."""

    def texts(self, tokens):
        return class_prompts(tokens)[2]

    def contrastive(self, ctx, img, txt, scale, tokens):
        return self.sample_losses(img, txt, scale, tokens).mean()

    def sample_losses(self, img, txt, scale, tokens):
        _, target = class_keys(tokens)
        return per_sample_losses(img, txt, target, scale)

    def sample_text_row(self, tokens, i):
        return int(class_keys(tokens)[1][i])


class ClipReplay(ClassMemoryData, ClassTextLoss, Method):
    name = "clip-replay"

    def loss(self, ctx, model, images, tokens, ids):
        loss, _ = self.task_loss(ctx, model, images, tokens)
        return loss, {"clip_replay": float(loss.detach())}


def for_class_streams(method: type) -> type:
    """A TiC method (EWC, LwF, ...) for class/domain-incremental streams: the class-balanced memory
    as data and the class-text loss as task loss; its own regulariser and state unchanged."""
    return type(method.__name__ + "ForClasses", (ClassMemoryData, ClassTextLoss, method), {"name": method.name})
