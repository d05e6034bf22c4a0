"""EWC: elastic weight consolidation (Kirkpatrick et al. 2017) with a diagonal empirical Fisher,
as TiC-CLIP runs it (Garg et al., ICLR 2024, Sec. 4 and Table 2: lambda_EWC = 1, 3.6e18 MACs =
1.2 x Sequential on TiC-DataComp (M)).

After each step the Fisher is estimated on ``fisher_samples`` samples of the step's data
(default 512) from per-sample gradients: F = mean_i (d l_i / d theta)^2, where l_i is sample i's
term of the task loss (``Method.sample_losses``: CLIP's symmetric cross-entropy, or the
class-text cross-entropy in class-incremental streams) against the other samples of its Fisher
group (``fisher_batch`` samples, default 32) held fixed. Each l_i is differentiated on its own
(``torch.func``: ``vmap`` over samples of ``grad`` of a batch of one whose only live features are
sample i's image and positive text), so the estimate does not depend on the training batch size (the squared gradient of a mini-batch mean,
which the previous estimate used, shrinks like 1/B). Later steps add
``weight``/2 * sum F (theta - theta*)^2 to the loss (``weight`` = lambda_EWC, default 1.0).
Fishers of successive steps accumulate (online EWC with gamma = 1; ``online-ewc`` decays them).

Compute: the Fisher's forward/backward passes run after the step's training budget and are
added to the step's MACs (``training.train.measure_end_step``), as TiC-CLIP's table counts them.
"""
from __future__ import annotations

import warnings

import torch

from training.methods.base import Method, clip_features


class EWC(Method):
    name = "ewc"

    def __init__(self, options=None):
        super().__init__(options)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def overhead_samples(self, t, budget):
        return min(self.option("fisher_samples", 512), budget)

    def loss(self, ctx, model, images, tokens, ids):
        contrastive, _ = self.task_loss(ctx, model, images, tokens)
        logs = {"contrastive": float(contrastive.detach())}
        if not self.fisher:
            return contrastive, logs
        params = dict(_named(model))
        penalty = sum((self.fisher[n] * (params[n] - self.anchor[n]) ** 2).sum() for n in self.fisher)
        logs["ewc"] = float(penalty.detach())
        return contrastive + 0.5 * self.option("weight", 1.0) * penalty, logs

    def estimate_fisher(self, model, batches) -> dict[str, torch.Tensor]:
        """Mean over samples of squared per-sample gradients (see the module docstring), computed
        with ``torch.func``: ``vmap`` over samples of ``grad`` of a batch-of-one loss. The model is
        in eval mode meanwhile: a batch-norm layer (the ResNet image tower of ``tic-lit-32``) then
        uses its running statistics, as a sample of one has no batch statistics, and updates
        nothing in place inside the transform; layers without train-time behaviour are unaffected."""
        m = model.module if hasattr(model, "module") else model
        was_training = m.training
        m.eval()
        try:
            return self._fisher(m, batches)
        finally:
            m.train(was_training)

    def _fisher(self, m, batches) -> dict[str, torch.Tensor]:
        from torch.func import functional_call, grad, vmap

        named = _named(m)
        sums = {n: torch.zeros_like(p) for n, p in named}
        if not batches:
            return sums
        params = {n: p.detach() for n, p in named}
        # a locked text tower (tic-lit-32) has no parameters: its features are constants, computed once
        # outside the transform (it looks its outputs up by token ids, which a vmapped tensor has not)
        text_tower = getattr(m, "text", None)
        locked = isinstance(text_tower, torch.nn.Module) and not any(True for _ in text_tower.parameters())
        tokens = torch.cat([b[1] for b in batches])[: self.option("fisher_samples", 512)]
        images = torch.cat([b[0] for b in batches])[: len(tokens)]
        group = max(2, self.option("fisher_batch", 32))
        count = 0
        for lo in range(0, len(images), group):
            img_g, tok_g = images[lo: lo + group], tokens[lo: lo + group]
            if len(img_g) < 2:  # a contrastive term needs a negative
                continue
            texts = self.texts(tok_g)
            rows = torch.tensor([self.sample_text_row(tok_g, i) for i in range(len(img_g))], device=texts.device)
            with torch.no_grad():
                img_f, txt_f, _ = clip_features(m, img_g, texts)
            at_img = torch.arange(len(img_g), device=img_f.device)
            at_txt = torch.arange(len(texts), device=txt_f.device)

            def sample_loss(p, image, text, i, r):
                live_img, live_txt, scale = clip_features(lambda a, b: functional_call(m, p, (a, b)), image[None],
                                                          None if locked else text[None])
                img = torch.where((at_img == i)[:, None], live_img, img_f)  # only sample i's features are live
                txt = txt_f if locked else torch.where((at_txt == r)[:, None], live_txt, txt_f)
                return (self.sample_losses(img, txt, scale, tok_g) * (at_img == i)).sum()

            with warnings.catch_warnings():  # attention has no batching rule yet: a per-sample loop there
                warnings.filterwarnings("ignore", message="There is a performance drop")
                g = vmap(grad(sample_loss), in_dims=(None, 0, 0, 0, 0), chunk_size=self.option("fisher_chunk", 8),
                         randomness="different")(params, img_g, texts[rows], at_img, rows)
            for n in sums:
                sums[n] += (g[n] ** 2).sum(dim=0)
            count += len(img_g)
        return {n: s / max(1, count) for n, s in sums.items()}

    def end_step(self, ctx, model, batches=None):
        if batches is None:
            return
        for n, f in self.estimate_fisher(model, batches).items():
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
