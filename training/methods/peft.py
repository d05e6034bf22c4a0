"""Shared pieces of the parameter-efficient update methods: which parameters train, and
low-rank adapters on weight matrices.

A method chooses its trainable parameters in ``begin_step`` (before the loop builds the
optimizer, which takes only parameters that require grad) and gives every parameter back its
gradient in ``end_step``, so the next method, the merge or the evaluation sees a plain model.
Adapters are ``torch.nn.utils.parametrize`` parametrizations of the weight (W' = f(W, A, B)),
so they reach weights that are not ``nn.Linear`` modules, such as
``nn.MultiheadAttention.in_proj_weight`` (open_clip's q/k/v projection), and are folded back
into W at the end of each task: checkpoints hold the plain architecture, which every loader and
merge operator reads, and the next task trains fresh adapters on the updated weights (as
FoMo-in-Flux's continual LoRA does).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

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
    """W + (alpha / rank) * B @ A (Hu et al. 2022). B starts at zero, so the adapted model
    starts equal to the base model; A is Kaiming-uniform as in the reference implementation."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__()
        out_f, in_f = weight.shape
        self.scale = alpha / rank
        self.A = nn.Parameter(torch.empty(rank, in_f, dtype=weight.dtype, device=weight.device))
        self.B = nn.Parameter(torch.zeros(out_f, rank, dtype=weight.dtype, device=weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return W + self.delta()


class DoRA(LoRA):
    """Weight-decomposed LoRA (Liu et al. 2024): m * (W + BA) / ||W + BA||, the norm taken per
    output feature (each row of the [out, in] matrix, as PEFT does); the magnitude m starts at
    ||W|| so the adapted model starts equal to the base model, and trains with the adapter."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float):
        super().__init__(weight, rank, alpha)
        self.magnitude = nn.Parameter(weight.detach().norm(dim=1).clone())

    def forward(self, W: torch.Tensor) -> torch.Tensor:
        V = W + self.delta()
        return (self.magnitude / V.norm(dim=1).clamp(min=1e-12))[:, None] * V


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


def add_adapters(model: nn.Module, kind: type[LoRA], rank: int, alpha: float, targets, towers) -> int:
    """Freeze the model and attach a fresh adapter to each target weight; returns trainable elements."""
    sites = adapter_sites(model, targets, towers)
    set_trainable(model, lambda *_: False)
    for mod, pn, _ in sites:
        parametrize.register_parametrization(mod, pn, kind(getattr(mod, pn).detach(), rank, alpha), unsafe=True)
    return sum(p.numel() for p in unwrap(model).parameters() if p.requires_grad)


def merge_adapters(model: nn.Module) -> int:
    """Fold every adapter into its weight (W <- W'), leaving the plain architecture; returns how many."""
    n = 0
    for mod in list(unwrap(model).modules()):
        if parametrize.is_parametrized(mod):
            for pn in list(mod.parametrizations.keys()):
                parametrize.remove_parametrizations(mod, pn, leave_parametrized=True)
                n += 1
    unfreeze(model)
    return n


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
