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


def _by_hand(model, images, tokens) -> dict[str, torch.Tensor]:
    """Mean over samples of squared gradients of sample i's symmetric contrastive loss, sample i's
    features live and the others' detached, one autograd pass per sample."""
    n = len(images)
    named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    expected = {k: torch.zeros_like(p) for k, p in named}
    for i in range(n):
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(tokens), dim=-1)
        keep = torch.arange(n) == i
        img = torch.where(keep[:, None], img, img.detach())
        txt = torch.where(keep[:, None], txt, txt.detach())
        s = model.logit_scale.exp()
        i2t = -torch.log_softmax(s * img[i] @ txt.T, 0)[i]
        t2i = -torch.log_softmax(s * txt[i] @ img.T, 0)[i]
        grads = torch.autograd.grad(0.5 * (i2t + t2i), [p for _, p in named], allow_unused=True)
        for (k, _), g in zip(named, grads):
            if g is not None:
                expected[k] += g ** 2 / n
    return expected


def test_fisher_is_the_mean_of_squared_per_sample_gradients_by_hand(loaded):
    model = copy.deepcopy(loaded.model).train()
    images, tokens = _data(loaded, n=3, seed=1)
    expected = _by_hand(model, images, tokens)
    fisher = EWC({"fisher_batch": 3}).estimate_fisher(model, [(images, tokens)])
    for n, e in expected.items():
        assert torch.allclose(fisher[n], e, rtol=1e-3, atol=1e-10), n


def test_fisher_of_a_batch_norm_image_tower_uses_running_statistics_and_changes_nothing():
    # tic-lit-32's ResNet has batch norm: per-sample gradients in eval mode (a sample of one has no
    # batch statistics), equal to the hand computation in eval mode; running statistics and the
    # model's mode are as before
    from pipelines.models import load_model

    lit = load_model("tic-lit-32")
    model = lit.model.train()
    images, tokens = _data(lit, n=3, seed=2)
    model(images, tokens)  # one training forward: running statistics that differ from the initial ones
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    assert buffers
    fisher = EWC({"fisher_batch": 3}).estimate_fisher(model, [(images, tokens)])
    assert model.training
    for k, v in model.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k]), k
    expected = _by_hand(copy.deepcopy(model).eval(), images, tokens)
    assert set(fisher) == set(expected) and sum(float(v.sum()) for v in fisher.values()) > 0
    for n, e in expected.items():
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
