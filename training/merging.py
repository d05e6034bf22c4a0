"""Model merge operators on state dicts (name -> tensor), each returning a new state dict.

Floating tensors are merged in float64 and cast back to the first dict's dtype; non-floating
tensors (step counters, int buffers) and non-tensor entries come unchanged from the first (base)
dict, since averaging counters or indices has no meaning. Dicts must have the same keys and
shapes: a silent partial merge would load as a model that was never trained.

``interpolate`` is TiC-CLIP's patching (WiSE-FT, Wortsman et al. 2022; PAINT, Ilharco et al.
2022); ``linear`` a weighted average (model soups, Wortsman et al. 2022); ``slerp`` spherical
interpolation per tensor (Shoemake 1985); ``task_arithmetic`` (Ilharco et al. 2023); ``ties``
(TIES-merging, Yadav et al. 2023); ``ema`` the running merge of FoMo-in-Flux's EMA-merge
(Roth et al. 2024).
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def _check(states: list[dict]) -> None:
    if not states:
        raise ValueError("need at least one state dict")
    keys = set(states[0])
    for i, s in enumerate(states[1:], 1):
        if set(s) != keys:
            missing, extra = sorted(keys - set(s)), sorted(set(s) - keys)
            raise ValueError(f"state dict {i} differs in keys from state dict 0: missing {missing}, extra {extra}")
        for k, v in states[0].items():
            if torch.is_tensor(v) and torch.is_tensor(s[k]) and v.shape != s[k].shape:
                raise ValueError(f"state dict {i} key {k!r} has shape {tuple(s[k].shape)}, expected {tuple(v.shape)}")


def _merges(v) -> bool:
    return torch.is_tensor(v) and torch.is_floating_point(v)


def _keep(v):
    return v.clone() if torch.is_tensor(v) else v


def _combine(states: list[dict], weights: list[float]) -> dict:
    out = {}
    for k, v in states[0].items():
        if _merges(v):
            acc = sum(w * s[k].to(torch.float64) for w, s in zip(weights, states))
            out[k] = acc.to(v.dtype)
        else:
            out[k] = _keep(v)
    return out


def linear(states: list[dict], weights: list[float] | None = None) -> dict:
    """Weighted average, weights normalised to sum 1 (uniform by default): a model soup."""
    _check(states)
    w = [1.0] * len(states) if weights is None else [float(x) for x in weights]
    if len(w) != len(states):
        raise ValueError(f"got {len(w)} weights for {len(states)} state dicts")
    total = sum(w)
    if total == 0:
        raise ValueError("weights sum to 0")
    return _combine(states, [x / total for x in w])


def interpolate(a: dict, b: dict, alpha: float) -> dict:
    """(1 - alpha) * a + alpha * b: WiSE-FT / PAINT patching, which keeps part of the previous
    model to limit forgetting; alpha = 0 gives a, alpha = 1 gives b."""
    _check([a, b])
    return _combine([a, b], [1.0 - alpha, alpha])


def slerp(a: dict, b: dict, t: float, eps: float = 1e-8) -> dict:
    """Spherical interpolation of each flattened tensor (Shoemake 1985): keeps the norm of
    same-norm weights, which a linear average of diverged weights shrinks. Falls back to linear
    interpolation when the vectors are (anti)parallel or near zero norm, where the great circle
    is undefined."""
    _check([a, b])
    out = {}
    for k, va in a.items():
        if not _merges(va):
            out[k] = _keep(va)
            continue
        x, y = va.flatten().to(torch.float64), b[k].flatten().to(torch.float64)
        nx, ny = float(x.norm()), float(y.norm())
        r = (1 - t) * x + t * y
        if nx > eps and ny > eps:
            cos = max(-1.0, min(1.0, float(x @ y) / (nx * ny)))
            omega = math.acos(cos)
            so = math.sin(omega)
            if so > eps:
                r = math.sin((1 - t) * omega) / so * x + math.sin(t * omega) / so * y
        out[k] = r.view_as(va).to(va.dtype)
    return out


def _task_vectors(base: dict, finetuned: list[dict]) -> None:
    if not finetuned:
        raise ValueError("need at least one fine-tuned state dict")
    _check([base, *finetuned])


def task_arithmetic(base: dict, finetuned: list[dict], scale: float = 1.0) -> dict:
    """base + scale * sum(ft - base) (Ilharco et al. 2023, "Editing models with task arithmetic")."""
    _task_vectors(base, finetuned)
    out = {}
    for k, v in base.items():
        if not _merges(v):
            out[k] = _keep(v)
            continue
        b = v.to(torch.float64)
        out[k] = (b + scale * sum(f[k].to(torch.float64) - b for f in finetuned)).to(v.dtype)
    return out


def ties(base: dict, finetuned: list[dict], density: float = 0.2, scale: float = 1.0) -> dict:
    """TIES-merging (Yadav et al. 2023): task arithmetic without the interference of small
    updates and sign conflicts. As the reference implementation (``ties_merging`` over
    ``state_dict_to_vector``), each task vector is the concatenation of all floating tensors,
    flattened: (1) trim each task vector to its top ``density`` fraction of entries by
    magnitude over the whole vector (global top-k; at least one entry; entries tied with the
    cut-off are kept), (2) elect each entry's sign as the sign of the sum of the trimmed vectors
    (an entry whose sum is 0 takes the majority sign, the sign of the sum of all elected signs),
    (3) average only the nonzero trimmed entries that agree with it (disjoint mean); return
    base + scale * merged, split back into the tensors."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    _task_vectors(base, finetuned)
    keys = [k for k, v in base.items() if _merges(v)]
    out = {k: _keep(v) for k, v in base.items() if k not in keys}
    if not keys:
        return out
    b = torch.cat([base[k].flatten().to(torch.float64) for k in keys])
    tvs = torch.stack([torch.cat([f[k].flatten().to(torch.float64) for k in keys]) - b for f in finetuned])
    n = tvs.shape[1]
    if n > 0:
        keep = max(1, int(round(density * n)))
        cut = tvs.abs().kthvalue(n - keep + 1, dim=1, keepdim=True).values  # the keep-th largest magnitude
        trimmed = torch.where(tvs.abs() >= cut, tvs, torch.zeros_like(tvs))
        sign = torch.sign(trimmed.sum(0))
        sign[sign == 0] = torch.sign(sign.sum())
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        b = b + scale * (trimmed * agree).sum(0) / agree.sum(0).clamp(min=1)
    offset = 0
    for k in keys:
        v = base[k]
        out[k] = b[offset:offset + v.numel()].view_as(v).to(v.dtype, copy=True)
        offset += v.numel()
    return {k: out[k] for k in base}


def ema(running: dict, new: dict, decay: float) -> dict:
    """decay * running + (1 - decay) * new: EMA-merge (FoMo-in-Flux, Roth et al. 2024) keeps a
    slowly moving average of the models trained on each task."""
    _check([running, new])
    return _combine([running, new], [decay, 1.0 - decay])


MERGERS: dict[str, Callable[..., dict]] = {
    "linear": linear, "interpolate": interpolate, "slerp": slerp, "task_arithmetic": task_arithmetic,
    "ties": ties, "ema": ema,
}
