"""Model merge operators on state dicts (name -> tensor); non-float tensors come from the first.

``interpolate`` is TiC-CLIP's patching (WiSE-FT, Wortsman et al. 2022; PAINT, Ilharco et al.
2022); ``linear`` a weighted average (model soups); ``slerp`` spherical interpolation per
tensor; ``task_arithmetic`` (Ilharco et al. 2023); ``ties`` (TIES-merging, Yadav et al. 2023):
trim each task vector to its largest entries, elect a sign per entry, average the agreeing
entries; ``ema`` the running merge of FoMo-in-Flux's EMA-merge.
"""
from __future__ import annotations

import torch


def _check(states: list[dict]) -> None:
    keys = set(states[0])
    for s in states[1:]:
        if set(s) != keys:
            raise ValueError(f"state dicts differ in keys: {sorted(keys ^ set(s))[:5]}")


def _float(t: torch.Tensor) -> bool:
    return torch.is_floating_point(t)


def linear(states: list[dict], weights: list[float] | None = None) -> dict:
    _check(states)
    w = torch.tensor(weights if weights is not None else [1.0] * len(states), dtype=torch.float64)
    if len(w) != len(states) or float(w.sum()) <= 0:
        raise ValueError("need one positive-sum weight per state dict")
    w = (w / w.sum()).tolist()
    out = {}
    for k, v in states[0].items():
        out[k] = sum(wi * s[k].to(torch.float64) for wi, s in zip(w, states)).to(v.dtype) if _float(v) else v.clone()
    return out


def interpolate(a: dict, b: dict, alpha: float) -> dict:
    """(1 - alpha) * a + alpha * b."""
    return linear([a, b], [1.0 - alpha, alpha]) if 0 < alpha < 1 else {k: (b if alpha >= 1 else a)[k].clone() for k in a}


def slerp(a: dict, b: dict, t: float, eps: float = 1e-8) -> dict:
    _check([a, b])
    out = {}
    for k, va in a.items():
        vb = b[k]
        if not _float(va):
            out[k] = va.clone()
            continue
        x, y = va.flatten().double(), vb.flatten().double()
        nx, ny = x.norm(), y.norm()
        if nx < eps or ny < eps:
            out[k] = ((1 - t) * x + t * y).view_as(va).to(va.dtype)
            continue
        cos = torch.clamp((x @ y) / (nx * ny), -1.0, 1.0)
        omega = torch.arccos(cos)
        if omega.abs() < 1e-4 or (torch.pi - omega).abs() < 1e-4:
            r = (1 - t) * x + t * y
        else:
            so = torch.sin(omega)
            r = torch.sin((1 - t) * omega) / so * x + torch.sin(t * omega) / so * y
        out[k] = r.view_as(va).to(va.dtype)
    return out


def task_arithmetic(base: dict, finetuned: list[dict], scale: float = 1.0) -> dict:
    _check([base, *finetuned])
    return {k: (v + scale * sum(f[k] - v for f in finetuned)) if _float(v) else v.clone() for k, v in base.items()}


def ties(base: dict, finetuned: list[dict], density: float = 0.2, scale: float = 1.0) -> dict:
    _check([base, *finetuned])
    out = {}
    for k, v in base.items():
        if not _float(v):
            out[k] = v.clone()
            continue
        tvs = torch.stack([(f[k] - v).flatten().double() for f in finetuned])
        n = tvs.shape[1]
        keep = max(1, int(round(density * n)))
        thresh = tvs.abs().kthvalue(n - keep + 1, dim=1, keepdim=True).values if keep < n else torch.zeros(len(tvs), 1, dtype=tvs.dtype)
        trimmed = torch.where(tvs.abs() >= thresh, tvs, torch.zeros_like(tvs))
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        merged = (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
        out[k] = (v.flatten().double() + scale * merged).view_as(v).to(v.dtype)
    return out


def ema(running: dict, new: dict, decay: float) -> dict:
    return linear([running, new], [decay, 1.0 - decay])


MERGERS = {"linear": linear, "interpolate": interpolate, "slerp": slerp, "task_arithmetic": task_arithmetic,
           "ties": ties, "ema": ema}
