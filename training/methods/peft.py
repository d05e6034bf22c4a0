"""Shared pieces of the parameter-efficient update methods: which parameters train, and
low-rank adapters on weight matrices.

A method chooses its trainable parameters in ``begin_step`` (before the loop builds the
optimizer, which takes only parameters that require grad) and gives every parameter back its
gradient in ``end_step``, so the next method, the merge or the evaluation sees a plain model.

Adapters are separate low-rank products added to the frozen layer's output, as in the LoRA
reference implementation and PEFT: ``y = x W^T + b + s (x A^T) B^T``, never a
reparametrisation ``W' = W + s B A`` of the weight, so the full-size weight ``W`` gets no
gradient and a training iteration costs fewer FLOPs than full fine-tuning (no ``dL/dW`` matmul
for any adapted weight), which the MAF accounting (``training.fomo.maf``) measures. Adapted
layers are wrapped in place: ``nn.Linear`` (open_clip's MLP ``c_fc``/``c_proj``) by
``AdaptedLinear``, ``nn.MultiheadAttention`` (q/k/v ``in_proj_weight`` and ``out_proj``, which
the module uses as raw weights) by ``AdaptedAttention``, the same attention computed with the
adapters in its projections. At the end of each task the adapters are folded into W and the
original modules put back: checkpoints hold the plain architecture, which every loader and merge
operator reads, and the next task trains fresh adapters on the updated weights (as
FoMo-in-Flux's continual LoRA does).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from training.methods.base import Method

TOWERS = ("image", "text")
# parameter names (last component) the adapters can target, by layer kind
TARGETS = {"attn": ("in_proj_weight", "out_proj.weight"), "mlp": ("c_fc.weight", "c_proj.weight")}


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def tower_of(name: str) -> str:
    """"image" for open_clip's ``visual.*`` parameters, "shared" for the temperature, else "text"."""
    if name.startswith("visual."):
        return "image"
    return "shared" if name in ("logit_scale", "logit_bias") else "text"


def set_trainable(model: nn.Module, keep) -> int:
    """requires_grad = keep(name, param, module); returns the number of trainable elements."""
    m = unwrap(model)
    owner = {f"{mn}.{pn}" if mn else pn: mod for mn, mod in m.named_modules() for pn, _ in mod.named_parameters(recurse=False)}
    n = 0
    for name, p in m.named_parameters():
        p.requires_grad_(bool(keep(name, p, owner.get(name))))
        n += p.numel() if p.requires_grad else 0
    return n


def unfreeze(model: nn.Module) -> None:
    for p in unwrap(model).parameters():
        p.requires_grad_(True)


class SelectiveMethod(Method):
    """Trains only the parameters ``trainable`` selects; the rest of the model stays fixed."""

    def trainable(self, name: str, param: torch.Tensor, module: nn.Module | None) -> bool:
        return True

    def begin_step(self, ctx, model):
        if set_trainable(model, self.trainable) == 0:
            raise ValueError(f"{self.name}: no parameter left to train")

    def end_step(self, ctx, model, batches=None):
        unfreeze(model)


# ---------------------------------------------------------------------------- adapters

class LoRA(nn.Module):
    """Adds ``(alpha / rank) * (x A^T) B^T`` to a frozen linear map ``x W^T + b`` (Hu et al.
    2022). B starts at zero, so the adapted model starts equal to the base model; A is
    Kaiming-uniform as in the reference implementation. ``rows`` selects output rows (the q, k
    or v block of a packed attention projection)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out_f, in_f = weight.shape
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_f, dtype=weight.dtype, device=weight.device))
        self.B = nn.Parameter(torch.zeros(out_f, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)

    def merged_weight(self, W: torch.Tensor) -> torch.Tensor:
        """The plain weight equal to the adapted map (what ``fold`` writes into W)."""
        return W + self.delta()

    def low_rank(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        return self.scale * F.linear(F.linear(x, self.A), self.B[rows])

    def forward(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, rows: slice = slice(None)) -> torch.Tensor:
        return F.linear(x, W[rows], None if b is None else b[rows]) + self.low_rank(x, rows)


class DoRA(LoRA):
    """Weight-decomposed LoRA (Liu et al. 2024): the adapted weight is m * (W + sBA) / ||W + sBA||,
    the norm per output feature (each row of the [out, in] matrix, as PEFT does); the magnitude
    m starts at ||W|| so the adapted model starts equal to the base model, and trains with the
    adapter. Computed as PEFT does, on the layer's output: ``g * (x W^T + s (x A^T) B^T) + b``
    with ``g = m / ||W + sBA||`` and the norm treated as a constant in backward (DoRA's Sec. 4.3:
    "we treat ||V + ΔV||_c as a constant", which PEFT implements with ``detach``), so W gets no
    gradient here either."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__(weight, rank, alpha)
        self.magnitude = nn.Parameter(weight.detach().norm(dim=1).clone())

    def merged_weight(self, W: torch.Tensor) -> torch.Tensor:
        V = W + self.delta()
        return (self.magnitude / V.norm(dim=1).clamp(min=1e-12))[:, None] * V

    def forward(self, x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None, rows: slice = slice(None)) -> torch.Tensor:
        with torch.no_grad():
            norm = (W + self.delta()).norm(dim=1)[rows].clamp(min=1e-12)
        g = self.magnitude[rows] / norm
        y = g * (F.linear(x, W[rows]) + self.low_rank(x, rows))
        return y if b is None else y + b[rows]


class AdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` plus an adapter on its output."""

    def __init__(self, base: nn.Linear, adapter: LoRA):
        super().__init__()
        self.base, self.adapter = base, adapter

    # what code reading the layer expects of an nn.Linear (open_clip reads ``mlp.c_fc.weight.dtype``)
    weight = property(lambda self: self.base.weight)
    bias = property(lambda self: self.base.bias)
    in_features = property(lambda self: self.base.in_features)
    out_features = property(lambda self: self.base.out_features)

    def forward(self, x):
        return self.adapter(x, self.base.weight, self.base.bias)

    def fold(self) -> nn.Module:
        with torch.no_grad():
            self.base.weight.copy_(self.adapter.merged_weight(self.base.weight))
        return self.base


class AdaptedAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (packed q/k/v projection, scaled dot-product attention,
    output projection) with adapters on the q/k/v projection (``in_adapter``) and the output
    projection (``out_adapter``), each ``None`` for none. Same call signature and masks as the
    module it wraps (2-D or (N * heads)-batched 3-D ``attn_mask``, float or boolean;
    ``key_padding_mask``); attention weights are not returned (open_clip never asks)."""

    def __init__(self, mha: nn.MultiheadAttention, in_adapter: LoRA | None, out_adapter: LoRA | None):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("adapters support nn.MultiheadAttention with a packed in_proj_weight, no bias_k/v, "
                             "no add_zero_attn")
        self.mha, self.in_adapter, self.out_adapter = mha, in_adapter, out_adapter

    # what code reading the layer expects of an nn.MultiheadAttention
    in_proj_weight = property(lambda self: self.mha.in_proj_weight)
    in_proj_bias = property(lambda self: self.mha.in_proj_bias)
    out_proj = property(lambda self: self.mha.out_proj)
    embed_dim = property(lambda self: self.mha.embed_dim)
    num_heads = property(lambda self: self.mha.num_heads)
    batch_first = property(lambda self: self.mha.batch_first)

    def _project(self, x, block: int):
        m, E = self.mha, self.mha.embed_dim
        rows = slice(block * E, (block + 1) * E)
        if self.in_adapter is None:
            b = None if m.in_proj_bias is None else m.in_proj_bias[rows]
            return F.linear(x, m.in_proj_weight[rows], b)
        return self.in_adapter(x, m.in_proj_weight, m.in_proj_bias, rows)

    @staticmethod
    def _additive(mask, dtype):
        if mask is None or mask.dtype != torch.bool:
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            raise ValueError("adapted attention does not return attention weights (call with need_weights=False)")
        m = self.mha
        if not m.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        N, L, E = query.shape
        S, h = key.shape[1], m.num_heads
        if query is key and key is value:
            if self.in_adapter is None:
                qkv = F.linear(query, m.in_proj_weight, m.in_proj_bias)
            else:
                qkv = self.in_adapter(query, m.in_proj_weight, m.in_proj_bias)
            q, k, v = qkv.chunk(3, dim=-1)
        else:
            q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        q, k, v = (t.reshape(N, -1, h, E // h).transpose(1, 2) for t in (q, k, v))
        mask = self._additive(attn_mask, q.dtype)
        if mask is not None:
            mask = mask.view(N, h, L, S) if mask.dim() == 3 else mask.view(1, 1, L, S)
        kpm = self._additive(key_padding_mask, q.dtype)
        if kpm is not None:
            kpm = kpm.view(N, 1, 1, S)
            mask = kpm if mask is None else mask + kpm
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=m.dropout if self.training else 0.0,
                                             is_causal=is_causal and mask is None)
        out = out.transpose(1, 2).reshape(N, L, E)
        if self.out_adapter is None:
            out = m.out_proj(out)
        else:
            out = self.out_adapter(out, m.out_proj.weight, m.out_proj.bias)
        return (out if m.batch_first else out.transpose(0, 1)), None

    def fold(self) -> nn.Module:
        with torch.no_grad():
            if self.in_adapter is not None:
                self.mha.in_proj_weight.copy_(self.in_adapter.merged_weight(self.mha.in_proj_weight))
            if self.out_adapter is not None:
                self.mha.out_proj.weight.copy_(self.out_adapter.merged_weight(self.mha.out_proj.weight))
        return self.mha


def adapter_sites(model: nn.Module, targets=("attn", "mlp"), towers=TOWERS) -> list[tuple[nn.Module, str, str]]:
    """(module, parameter name, full name) of every 2-D weight the adapters attach to."""
    suffixes = tuple(s for t in targets for s in TARGETS[t])
    out = []
    for mn, mod in unwrap(model).named_modules():
        for pn, p in mod.named_parameters(recurse=False):
            full = f"{mn}.{pn}" if mn else pn
            if p.ndim == 2 and full.endswith(suffixes) and tower_of(full) in towers:
                out.append((mod, pn, full))
    if not out:
        raise ValueError(f"no weight matches adapter targets {targets} in towers {towers}")
    return out


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


def add_adapters(model: nn.Module, kind: type[LoRA], rank: int, alpha: float, targets, towers) -> int:
    """Freeze the model and wrap each target layer with a fresh adapter; returns trainable elements."""
    root = unwrap(model)
    sites = {full for _, _, full in adapter_sites(model, targets, towers)}
    set_trainable(model, lambda *_: False)
    for mn, mod in list(root.named_modules()):
        if isinstance(mod, nn.MultiheadAttention):
            a_in = kind(mod.in_proj_weight.detach(), rank, alpha) if f"{mn}.in_proj_weight" in sites else None
            a_out = kind(mod.out_proj.weight.detach(), rank, alpha) if f"{mn}.out_proj.weight" in sites else None
            if a_in is not None or a_out is not None:
                _replace(root, mn, AdaptedAttention(mod, a_in, a_out))
        elif isinstance(mod, nn.Linear) and f"{mn}.weight" in sites and not mn.endswith("out_proj"):
            _replace(root, mn, AdaptedLinear(mod, kind(mod.weight.detach(), rank, alpha)))
    return sum(p.numel() for p in root.parameters() if p.requires_grad)


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its weight and put the plain layer back; returns how many layers."""
    root = unwrap(model)
    wrapped = [(mn, mod) for mn, mod in root.named_modules() if isinstance(mod, (AdaptedLinear, AdaptedAttention))]
    for mn, mod in wrapped:
        _replace(root, mn, mod.fold())
    unfreeze(model)
    return len(wrapped)


class AdapterMethod(Method):
    """Low-rank adapters per task, merged into the weights when the task ends. Options: ``rank``
    (default 4), ``alpha`` (scale numerator, default 2 x rank), ``targets`` (comma list of
    attn, mlp; default both), ``towers`` (image, text; default both)."""

    adapter: type[LoRA] = LoRA

    def begin_step(self, ctx, model):
        rank = self.option("rank", 4)
        alpha = float(self.options.get("alpha", 2 * rank))
        targets = tuple(str(self.options.get("targets", "attn,mlp")).split(","))
        towers = tuple(str(self.options.get("towers", "image,text")).split(","))
        unknown = [t for t in targets if t not in TARGETS] + [t for t in towers if t not in TOWERS]
        if unknown:
            raise ValueError(f"{self.name}: unknown targets/towers {unknown}; targets: {list(TARGETS)}, towers: {list(TOWERS)}")
        add_adapters(model, self.adapter, rank, alpha, targets, towers)

    def end_step(self, ctx, model, batches=None):
        merge_adapters(model)
