"""open_clip_train's scale options in the bundled loop: gradient accumulation equals the large
batch, bf16 and gradient checkpointing train on CPU, accounting stays exact, refusals are clear."""
from __future__ import annotations

import copy
import os

import open_clip
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipelines.models import load_model
from training import scale
from training.methods import get_method
from training.methods.base import StepContext, clip_features
from training.train import TrainConfig, train

TINY = dict(samples_per_step=96, workers=0, buffer=32, checkpoint_every=0, warmup=2, max_steps=1)
FP32 = scale.Precision.resolve("fp32", "cpu")


def _batch(loaded, n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, loaded.image_size, loaded.image_size, generator=g)
    words = ["red", "green", "blue", "circle", "square", "cat", "car", "tree", "house", "boat"]
    texts = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (4,), generator=g)) for _ in range(n)]
    return images, loaded.tokenizer(texts), torch.arange(n)


def _grads(model, micro, method_name="sequential"):
    method = get_method(method_name)
    ctx = StepContext(0, 1, [], "cpu", open_clip.ClipLoss())
    model.zero_grad(set_to_none=True)
    loss, _ = scale.iteration_backward(method, ctx, model, micro, FP32, lambda l: l.backward())
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulation_equals_the_large_batch(loaded):
    images, tokens, ids = _batch(loaded)
    big, acc = copy.deepcopy(loaded.model), copy.deepcopy(loaded.model)
    # the oracle: open_clip's own ClipLoss on the whole batch of 16, one backward pass
    ref_loss = open_clip.ClipLoss()(*clip_features(big, images, tokens))
    ref_loss.backward()
    ref = {n: p.grad.clone() for n, p in big.named_parameters() if p.grad is not None}
    for k in (2, 4):  # 2 x 8 and 4 x 4
        micro = [(images[i::k], tokens[i::k], ids[i::k]) for i in range(k)]
        loss, grads = _grads(acc, micro)
        # the accumulated batch is the same 16 samples in another order: same loss, same gradients
        assert loss == pytest.approx(float(ref_loss.detach()), rel=1e-5)
        assert set(grads) == set(ref)
        for n in ref:
            torch.testing.assert_close(grads[n], ref[n], rtol=1e-4, atol=1e-6, msg=n)
    assert float(ref["logit_scale"].abs()) > 0  # the temperature's gradient counted once, not k times

    # and one AdamW step lands on the same weights
    cfg = TrainConfig()  # the loop's AdamW settings (eps 1e-6 keeps near-zero gradients from amplifying rounding)
    opt_a = torch.optim.AdamW(big.parameters(), lr=1e-3, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    opt_b = torch.optim.AdamW(acc.parameters(), lr=1e-3, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    opt_a.step()
    _grads(acc, [(images[i::2], tokens[i::2], ids[i::2]) for i in range(2)])
    opt_b.step()
    for (n, a), (_, b) in zip(big.named_parameters(), acc.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


def test_accumulated_macs_are_the_large_batch_plus_one_forward(loaded):
    images, tokens, ids = _batch(loaded)
    model = copy.deepcopy(loaded.model)
    method, ctx = get_method("sequential"), StepContext(0, 1, [], "cpu", open_clip.ClipLoss())

    def macs(fn):
        c = FlopCounterMode(display=False)
        with c:
            fn()
        model.zero_grad(set_to_none=True)
        return c.get_total_flops() / 2

    plain = macs(lambda: scale.iteration_backward(method, ctx, model, [(images, tokens, ids)], FP32, lambda l: l.backward()))
    with torch.no_grad():
        forward = macs(lambda: model(images, tokens))
    micro = [(images[i::2], tokens[i::2], ids[i::2]) for i in range(2)]
    accum = macs(lambda: scale.iteration_backward(method, ctx, model, micro, FP32, lambda l: l.backward()))
    # the cached-feature pass is one more forward of the 16 samples (the loss's 16x16 logits, tiny, run twice)
    assert accum == pytest.approx(plain + forward, rel=0.01)


def test_accumulated_run_matches_the_large_batch_run(tiny_benchmark, tmp_path):
    big = train(TrainConfig(data_dir=tiny_benchmark, run_dir=str(tmp_path / "big"), batch_size=16, **TINY))
    acc = train(TrainConfig(data_dir=tiny_benchmark, run_dir=str(tmp_path / "acc"), batch_size=8, accum_freq=2, **TINY))
    (b,), (a,) = big["steps"], acc["steps"]
    assert a["iterations"] == b["iterations"] == 6 and a["samples_seen"] == b["samples_seen"] == 96
    assert a["macs"] > b["macs"]  # the cached-feature pass is counted
    wa = torch.load(tmp_path / "acc" / "checkpoints" / "step_0.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "big" / "checkpoints" / "step_0.pt", weights_only=True)["state_dict"]
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4, msg=k)
    init = load_model("tic-tiny-32").model.state_dict()
    moved = max(float((wb[k] - init[k]).abs().max()) for k in wb if wb[k].is_floating_point())
    assert moved > 1e-3  # six steps of real training happened


def test_global_batch_divides_over_ranks_and_micro_batches():
    assert scale.micro_batch_size(128, 4096, 8, 4) == 128
    assert scale.micro_batch_size(64, 0, 8, 4) == 64
    with pytest.raises(ValueError, match="not a multiple"):
        scale.micro_batch_size(128, 4096, 3, 1)


def test_methods_with_their_own_loss_terms_are_refused_under_accumulation(tiny_benchmark, tmp_path):
    from training.methods.gcl import GCL
    from training.methods.gdro import GDRO

    for method in (*(get_method(n) for n in ("lwf", "ewc", "si", "online-ewc")), GCL(), GDRO()):
        assert not scale.accumulates(method)
    for name in ("sequential", "cumulative-all", "oracle", "patching", "cumulative-exp", "lora", "full-ft"):
        assert scale.accumulates(get_method(name))
    with pytest.raises(ValueError, match="--accum-freq 2: method 'lwf'"):
        train(TrainConfig(protocol="lwf", data_dir=tiny_benchmark, run_dir=str(tmp_path / "lwf"), accum_freq=2, **TINY))
    assert not (tmp_path / "lwf" / "config.json").exists()  # refused before the run dir is written
    with pytest.raises(ValueError, match="needs a GPU"):
        scale.Precision.resolve("amp", "cpu")


def test_bf16_autocast_and_pure_bf16_train_on_cpu(tiny_benchmark, tmp_path, loaded):
    images, tokens, _ = _batch(loaded, 4)
    with scale.Precision.resolve("amp_bf16", "cpu").autocast():
        img, _, _ = clip_features(loaded.model, images, tokens)
    assert img.dtype == torch.bfloat16  # the towers really ran in bfloat16
    cfg = dict(data_dir=tiny_benchmark, batch_size=16, **{**TINY, "samples_per_step": 48})
    for precision in ("amp_bf16", "pure_bf16"):
        s = train(TrainConfig(run_dir=str(tmp_path / precision), precision=precision, **cfg))
        assert s["steps"][0]["iterations"] == 3 and all(v == v for v in s["steps"][0]["final_loss"].values())  # finite
        sd = torch.load(tmp_path / precision / "checkpoints" / "step_0.pt", weights_only=True)["state_dict"]
        dtype = sd["visual.conv1.weight"].dtype
        assert dtype == (torch.bfloat16 if precision == "pure_bf16" else torch.float32)
        init = loaded.model.state_dict()
        assert float((sd["visual.conv1.weight"].float() - init["visual.conv1.weight"]).abs().max()) > 1e-3
        m = load_model(f"tic-tiny-32:{tmp_path / precision / 'checkpoints' / 'step_0.pt'}")  # the evaluator's loader reads it
        assert m.model.visual.conv1.weight.dtype == torch.float32


def test_grad_checkpointing_recomputes_and_gives_the_same_gradients(tiny_benchmark, tmp_path, loaded):
    images, tokens, ids = _batch(loaded, 8)
    plain, ckpt = copy.deepcopy(loaded.model), copy.deepcopy(loaded.model)
    ckpt.set_grad_checkpointing(True)
    calls = []
    ckpt.visual.transformer.resblocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
    _, g_plain = _grads(plain, [(images, tokens, ids)])
    _, g_ckpt = _grads(ckpt, [(images, tokens, ids)])
    assert len(calls) == 2  # the block's forward ran again in the backward pass
    for n in g_plain:
        torch.testing.assert_close(g_ckpt[n], g_plain[n], rtol=1e-5, atol=1e-7, msg=n)
    s = train(TrainConfig(data_dir=tiny_benchmark, run_dir=str(tmp_path / "gc"), batch_size=16, grad_checkpointing=True,
                          accum_freq=2, **{**TINY, "samples_per_step": 64}))
    assert s["steps"][0]["iterations"] == 2 and s["steps"][0]["samples_seen"] == 64
    assert os.path.exists(tmp_path / "gc" / "checkpoints" / "step_0.pt")
