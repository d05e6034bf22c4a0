"""EWC's Fisher from per-sample gradients on a real (tiny, random) open_clip model: independent of
the training batch size, equal to a hand-written per-sample computation, lambda_EWC = 1."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from training.methods import get_method
from training.methods.ewc import EWC


def _data(loaded, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    tokens = loaded.tokenizer([f"a photo of a thing number {i}" for i in range(n)])
    return images, tokens


def _split(images, tokens, b):
    return [(images[i: i + b], tokens[i: i + b]) for i in range(0, len(images), b)]


def test_fisher_does_not_depend_on_the_training_batch_size(loaded):
    model = copy.deepcopy(loaded.model).train()
    images, tokens = _data(loaded)
    fishers = [EWC({"fisher_batch": 8}).estimate_fisher(model, _split(images, tokens, b)) for b in (2, 4, 16)]
    for f in fishers[1:]:
        for n in f:
            assert torch.allclose(f[n], fishers[0][n], rtol=1e-4, atol=1e-12), n
    assert sum(float(v.sum()) for v in fishers[0].values()) > 0


def test_fisher_is_the_mean_of_squared_per_sample_gradients_by_hand(loaded):
    model = copy.deepcopy(loaded.model).train()
    images, tokens = _data(loaded, n=3, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    expected = [torch.zeros_like(p) for p in params]
    for i in range(3):  # sample i live, the other two held fixed (their features detached)
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        keep = torch.arange(3) == i
        img = torch.where(keep[:, None], img, img.detach())
        txt = torch.where(keep[:, None], txt, txt.detach())
        s = model.logit_scale.exp()
        i2t = -torch.log_softmax(s * img[i] @ txt.T, 0)[i]
        t2i = -torch.log_softmax(s * txt[i] @ img.T, 0)[i]
        grads = torch.autograd.grad(0.5 * (i2t + t2i), params, allow_unused=True)
        for e, g in zip(expected, grads):
            if g is not None:
                e += g ** 2 / 3
    fisher = EWC({"fisher_batch": 3}).estimate_fisher(model, [(images, tokens)])
    for n, e in zip(names, expected):
        assert torch.allclose(fisher[n], e, rtol=1e-3, atol=1e-10), n


def test_ewc_defaults_to_lambda_one_and_its_fisher_passes_add_compute(loaded):
    m = get_method("ewc")
    model = copy.deepcopy(loaded.model).train()
    images, tokens = _data(loaded, n=4)
    m.end_step(None, model, [(images, tokens)])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    loss, logs = m.loss(_ctx(), model, images, tokens, None)
    contrastive = logs["contrastive"]
    assert float(loss.detach()) == pytest.approx(contrastive + 0.5 * 1.0 * logs["ewc"], rel=1e-5)  # lambda_EWC = 1
    assert m.overhead_samples(0, 8192) == 512 and m.overhead_samples(0, 96) == 96  # on top of the budget


def _ctx():
    import open_clip

    from training.methods.base import StepContext

    return StepContext(1, 3, [], "cpu", open_clip.ClipLoss(), iterations=4)
