"""FoMo-in-Flux update methods on a real (tiny, random) open_clip model: which parameters get
gradients, adapters that start at the base model and fold back exactly, SI/online-EWC state,
and the continual merge schemes' bookkeeping."""
from __future__ import annotations

import open_clip
import pytest
import torch

from training import merging
from training.methods import get_method
from training.methods.base import StepContext
from training.methods.offline_merge import schedule_weights
from training.methods.peft import adapter_sites


@pytest.fixture
def model(loaded):
    import copy

    m = copy.deepcopy(loaded.model)
    m.train()
    return m


def _batch(loaded, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    tokens = loaded.tokenizer([f"a photo of a thing number {i}" for i in range(n)])
    return images, tokens


def _ctx(t=0):
    return StepContext(t, 3, [], "cpu", open_clip.ClipLoss(), iterations=4)


def _grads(method, model, loaded, t=0):
    images, tokens = _batch(loaded)
    ctx = _ctx(t)
    method.begin_step(ctx, model)
    model.zero_grad(set_to_none=True)
    loss, _ = method.loss(ctx, model, images, tokens, None)
    loss.backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}, ctx


def _outputs(model, loaded):
    model.eval()
    with torch.no_grad():
        images, tokens = _batch(loaded, seed=1)
        return model.encode_image(images), model.encode_text(tokens)


def test_lora_starts_at_the_base_trains_only_adapters_and_merges_back(model, loaded):
    before = _outputs(model, loaded)
    base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    lora = get_method("lora", {"rank": 2})
    model.train()
    with_grad, ctx = _grads(lora, model, loaded)
    assert with_grad and all(n.endswith((".A", ".B")) for n in with_grad)
    assert any(n.startswith("visual.") for n in with_grad) and any(n.startswith("transformer.") for n in with_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.05 * sum(p.numel() for p in model.parameters())
    adapted = _outputs(model, loaded)  # B = 0: the adapted model is the base model
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(adapted, before))
    with torch.no_grad():  # a trained adapter
        for n, p in model.named_parameters():
            if n.endswith(".B"):
                p.normal_(0, 0.05)
    model.train()
    trained = _outputs(model, loaded)
    assert not torch.allclose(trained[0], before[0])
    lora.end_step(ctx, model)
    assert set(model.state_dict()) == set(base_sd)  # plain architecture again: checkpoints load anywhere
    merged = _outputs(model, loaded)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(merged, trained))
    assert all(p.requires_grad for p in model.parameters())


def test_lora_targets_and_towers(model):
    sites = {full for _, _, full in adapter_sites(model, ("attn",), ("image",))}
    assert sites and all(s.startswith("visual.") and "attn" in s for s in sites)
    assert any(s.endswith("in_proj_weight") for s in sites)  # q/k/v of nn.MultiheadAttention too


def test_dora_starts_at_the_base_and_trains_magnitudes(model, loaded):
    before = _outputs(model, loaded)
    dora = get_method("dora", {"rank": 2})
    model.train()
    with_grad, ctx = _grads(dora, model, loaded)
    assert any(n.endswith(".magnitude") for n in with_grad)
    assert all(n.endswith((".A", ".B", ".magnitude")) for n in with_grad)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(_outputs(model, loaded), before))
    dora.end_step(ctx, model)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(_outputs(model, loaded), before))


def _mha_pair(batch_first, seed=0):
    """An nn.MultiheadAttention wrapped with trained (random) adapters on q/k/v and out, and a
    copy of it whose weights are the adapted ones: torch's own attention is the oracle."""
    import copy

    from training.methods.peft import LoRA, AdaptedAttention

    torch.manual_seed(seed)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    a_in, a_out = LoRA(mha.in_proj_weight.detach(), 2, 4.0), LoRA(mha.out_proj.weight.detach(), 2, 4.0)
    with torch.no_grad():
        a_in.B.normal_(0, 0.3)
        a_out.B.normal_(0, 0.3)
    oracle = copy.deepcopy(mha)
    with torch.no_grad():
        oracle.in_proj_weight.add_(a_in.scale * a_in.B @ a_in.A)
        oracle.out_proj.weight.add_(a_out.scale * a_out.B @ a_out.A)
    return AdaptedAttention(mha, a_in, a_out).eval(), oracle


@pytest.mark.parametrize("batch_first", [True, False])
def test_adapted_attention_is_the_attention_of_the_adapted_weights(batch_first):
    adapted, oracle = _mha_pair(batch_first)
    g = torch.Generator().manual_seed(1)
    shape = (3, 5, 16) if batch_first else (5, 3, 16)
    x, kv = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    causal = torch.full((5, 5), float("-inf")).triu(1)  # open_clip's text mask
    pad = torch.tensor([[False] * 5, [False, False, False, True, True], [False] * 4 + [True]])
    for args, kw in [((x, x, x), {}), ((x, x, x), {"attn_mask": causal}), ((x, x, x), {"attn_mask": causal.isinf()}),
                     ((x, kv, kv), {"key_padding_mask": pad}), ((x, x, x), {"attn_mask": torch.zeros(12, 5, 5)})]:
        with torch.no_grad():
            got = adapted(*args, need_weights=False, **kw)[0]
            want = oracle(*args, need_weights=False, **kw)[0]
        assert torch.allclose(got, want, atol=1e-5), kw.keys()


def test_dora_output_is_the_decomposed_weight_and_the_base_weight_gets_no_gradient():
    from training.methods.peft import AdaptedLinear, DoRA

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    lin.requires_grad_(False)
    d = DoRA(lin.weight.detach(), 2, 4.0)
    with torch.no_grad():
        d.B.normal_(0, 0.5)
        d.magnitude.mul_(torch.tensor([0.5, 1.0, 2.0, 1.5]))
    layer = AdaptedLinear(lin, d)
    x = torch.randn(7, 6)
    V = lin.weight + 2.0 * d.B @ d.A  # scale alpha / rank = 2
    W = d.magnitude[:, None] * V / V.norm(dim=1, keepdim=True)  # DoRA's weight, by hand
    y = layer(x)
    assert torch.allclose(y, x @ W.T + lin.bias, atol=1e-5)
    y.sum().backward()
    assert lin.weight.grad is None and d.A.grad is not None and d.magnitude.grad is not None
    # the norm is a constant in backward (DoRA Sec. 4.3): dL/dm_i = sum over x of (x V^T)_i / ||V_i||
    assert torch.allclose(d.magnitude.grad, (x @ V.T).sum(0) / V.norm(dim=1), atol=1e-4)


@pytest.mark.parametrize("name,check", [
    ("bitfit", lambda n: n.endswith("bias")),
    ("layernorm-only", lambda n: ".ln_" in n or n.startswith(("ln_", "visual.ln_"))),
    ("lock-image", lambda n: not n.startswith("visual.")),
    ("lock-text", lambda n: n.startswith("visual.") or n == "logit_scale"),
])
def test_selective_methods_train_only_their_parameters(model, loaded, name, check):
    m = get_method(name)
    model.train()
    with_grad, ctx = _grads(m, model, loaded)
    assert with_grad and all(check(n) for n in with_grad), sorted(n for n in with_grad if not check(n))
    assert all(check(n) for n, p in model.named_parameters() if p.requires_grad)
    m.end_step(ctx, model)
    assert all(p.requires_grad for p in model.parameters())


def test_full_ft_trains_everything_that_the_loss_reaches(model, loaded):
    with_grad, _ = _grads(get_method("full-ft"), model, loaded)
    assert "token_embedding.weight" in with_grad and "visual.conv1.weight" in with_grad


def test_si_accumulates_path_importance_and_penalises_moves(model, loaded):
    si = get_method("si", {"weight": 1.0})
    ctx = _ctx(0)
    si.begin_step(ctx, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    images, tokens = _batch(loaded)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss, logs = si.loss(ctx, model, images, tokens, None)
        loss.backward()
        opt.step()
    si.end_step(ctx, model)
    assert si.fisher and all((f >= 0).all() for f in si.fisher.values())
    assert sum(float(f.sum()) for f in si.fisher.values()) > 0
    assert not si._hooks
    ctx1 = _ctx(1)
    si.begin_step(ctx1, model)
    _, logs = si.loss(ctx1, model, images, tokens, None)
    assert logs.get("ewc", 1.0) == pytest.approx(0.0, abs=1e-12)  # at the anchor: no penalty
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    _, logs = si.loss(ctx1, model, images, tokens, None)
    assert logs["ewc"] > 0
    si.end_step(ctx1, model)


def test_online_ewc_decays_the_old_fisher(model, loaded):
    ewc = get_method("online-ewc", {"gamma": 0.5})
    images, tokens = _batch(loaded)
    ewc.end_step(_ctx(0), model, [(images, tokens)])
    first = {n: f.clone() for n, f in ewc.fisher.items()}
    ewc.end_step(_ctx(1), model, [(images, tokens)])  # same model, same batch: F_new == F_old
    n = "visual.proj"
    assert torch.allclose(ewc.fisher[n], 1.5 * first[n], rtol=1e-4, atol=1e-12)


def _sd(v):
    return {"w": torch.tensor([float(v)]), "n": torch.tensor(3)}


class _Model(torch.nn.Module):
    def __init__(self, v=0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([float(v)]))
        self.register_buffer("n", torch.tensor(3))


def _run_scheme(name, trained_values, **options):
    """Simulate the loop: base weight 0; task t's training adds trained_values[t] to its start."""
    m = get_method(name, options)
    model = _Model(0.0)
    starts, evaluated = [], []
    for t, delta in enumerate(trained_values):
        if not m.warm_start:
            model.load_state_dict(_sd(0.0))
        m.begin_step(_ctx(t), model)
        starts.append(float(model.w.detach()))
        with torch.no_grad():
            model.w.add_(delta)
        m.end_step(_ctx(t), model)
        evaluated.append(float(model.w.detach()))
    return starts, evaluated


def test_ema_merge_trains_from_the_running_merge():
    starts, ev = _run_scheme("ema-merge", [4.0, 4.0], decay=0.5)
    # task 0: from base 0 -> 4, merge 0.5*0 + 0.5*4 = 2; task 1: from 2 -> 6, merge 0.5*2 + 0.5*6 = 4
    assert starts == [0.0, 2.0] and ev == [2.0, 4.0]


def test_finetune_merge_trains_from_the_finetuned_weights():
    starts, ev = _run_scheme("finetune-merge", [4.0, 4.0])  # decay mean
    # ft: 4, 8; merge: mean(0, 4) = 2, then (2/3)*2 + (1/3)*8 = 4 (= mean of 0, 4, 8)
    assert starts == [0.0, 4.0] and ev == pytest.approx([2.0, 4.0])


def test_zeroshot_merge_trains_every_task_from_the_base():
    starts, ev = _run_scheme("zeroshot-merge", [3.0, 6.0])
    # task models 3 and 6 from base 0; merge = mean(0, 3) = 1.5, then mean(0, 3, 6) = 3
    assert starts == [0.0, 0.0] and ev == pytest.approx([1.5, 3.0])


def test_offline_merge_of_all_task_checkpoints():
    starts, ev = _run_scheme("offline-merge", [2.0, 2.0, 2.0], weights="linear")
    # checkpoints 2, 4, 6 (each task from the previous checkpoint); linear weights 1, 2, 3
    assert starts == [0.0, 2.0, 4.0]
    assert ev == pytest.approx([2.0, (2 + 2 * 4) / 3, (2 + 8 + 18) / 6])
    assert schedule_weights("exp", 3, 0.5) == [0.25, 0.5, 1.0]
    assert _run_scheme("offline-merge", [2.0, 2.0], weights="uniform")[1] == pytest.approx([2.0, 3.0])


def test_running_merge_slerp_operator():
    m = get_method("ema-merge", {"merge": "slerp", "decay": 0.5})
    a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 1.0])}
    out = m.combine(a, b, 0)
    assert torch.allclose(out["w"], merging.slerp(a, b, 0.5)["w"])
    assert torch.allclose(out["w"], torch.tensor([2 ** -0.5, 2 ** -0.5]), atol=1e-6)


def test_zeroshot_merge_with_task_arithmetic():
    # every task trains from the base 0: task models 4 and 2, task vectors 4 and 2
    starts, ev = _run_scheme("zeroshot-merge", [4.0, 2.0], operator="task_arithmetic")
    assert starts == [0.0, 0.0] and ev == pytest.approx([4.0, 6.0])  # 0 + 1 * (4), 0 + 1 * (4 + 2)
    assert _run_scheme("zeroshot-merge", [4.0, 2.0], operator="task_arithmetic", scale="mean")[1] == pytest.approx([4.0, 3.0])


def test_ema_merge_with_ties():
    # task 0: 0 -> 4, ties of [4] = 4; task 1 from the merge 4 -> 4 - 5 = -1: task vectors 4 and -1,
    # density 1, elected sign + (sum 3), disjoint mean of the agreeing entries: 4
    starts, ev = _run_scheme("ema-merge", [4.0, -5.0], operator="ties", density=1.0)
    assert starts == [0.0, 4.0] and ev == pytest.approx([4.0, 4.0])
    # scale 0.5: 2, then 0.5 * 4 = 2 again (task 1 starts at 2 -> -3: vectors 4, -3, sign +)
    assert _run_scheme("ema-merge", [4.0, -5.0], operator="ties", density=1.0, scale=0.5)[1] == pytest.approx([2.0, 2.0])


def test_offline_merge_with_task_arithmetic():
    # checkpoints 2 and 4 (each task from the previous checkpoint), task vectors against the base 0
    starts, ev = _run_scheme("offline-merge", [2.0, 2.0], operator="task_arithmetic", scale=0.5)
    assert starts == [0.0, 2.0] and ev == pytest.approx([1.0, 3.0])  # 0.5 * 2, 0.5 * (2 + 4)


def test_merge_operator_option_from_the_command_line():
    from training.fomo.__main__ import parse

    cfg, _ = parse(["--method", "ema-merge", "--option", "operator=ties", "--option", "density=0.1"])
    m = get_method(cfg.method, cfg.options)
    assert m.operator == "ties" and m.option("density", 0.2) == 0.1
    assert get_method("offline-merge", {"operator": "task_arithmetic"}).operator == "task_arithmetic"
    with pytest.raises(ValueError, match="operator must be one of ema, slerp, task_arithmetic, ties"):
        get_method("finetune-merge", {"operator": "tie"})
    with pytest.raises(ValueError, match="operator must be one of linear, task_arithmetic, ties"):
        get_method("offline-merge", {"operator": "ema"})
