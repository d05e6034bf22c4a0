"""Continual-learning metrics from an evaluation matrix, each in one documented function.

Convention: ``E[i, j]`` is the score (accuracy or recall in [0, 1]) of the model after time
step / task ``i`` on the data of step ``j``; a square, non-empty T x T array. NaN cells (not
evaluated) are left out of every mean; a mean over no cells is NaN.
"""
from __future__ import annotations

import numpy as np


def _square(E) -> np.ndarray:
    E = np.asarray(E, dtype=np.float64)
    if E.ndim != 2 or E.shape[0] != E.shape[1] or E.size == 0:
        raise ValueError(f"an evaluation matrix must be square and non-empty, got shape {E.shape}")
    return E


def _nanmean(values: np.ndarray, axis=None):
    """Mean of the non-NaN entries, NaN where there are none (without numpy's empty-slice warning)."""
    valid = ~np.isnan(values)
    total = np.where(valid, values, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(mean) if axis is None else mean


def in_distribution(E) -> float:
    """mean_i E[i, i]: each model on its own time step (TiC-CLIP "ID" performance; CLEAR)."""
    return _nanmean(np.diag(_square(E)))


def backward_transfer(E) -> float:
    """mean_{j < i} E[i, j]: models on past time steps (TiC-CLIP "backward transfer"); NaN if T == 1."""
    E = _square(E)
    return _nanmean(E[np.tril_indices(len(E), -1)])


def forward_transfer(E) -> float:
    """mean_{j > i} E[i, j]: models on future time steps (TiC-CLIP "forward transfer"); NaN if T == 1."""
    E = _square(E)
    return _nanmean(E[np.triu_indices(len(E), 1)])


def transfer_metrics(E) -> dict:
    """TiC-CLIP's three summaries of a model-time x data-time matrix."""
    return {"in_distribution": in_distribution(E), "backward_transfer": backward_transfer(E),
            "forward_transfer": forward_transfer(E)}


def final_average_accuracy(R) -> float:
    """(1/T) sum_j R[T-1, j]: the final model on every task (standard CL "average accuracy")."""
    return _nanmean(_square(R)[-1])


def average_incremental_accuracy(R) -> float:
    """iCaRL (Rebuffi et al. 2017): (1/T) sum_k (1/(k+1)) sum_{j<=k} R[k, j]."""
    R = _square(R)
    seen = np.where(np.tri(len(R), dtype=bool), R, np.nan)
    return _nanmean(_nanmean(seen, axis=1))


def bwt_lopez_paz(R) -> float:
    """GEM (Lopez-Paz & Ranzato 2017): (1/(T-1)) sum_{i<T-1} (R[T-1, i] - R[i, i]); NaN if T == 1."""
    R = _square(R)
    if len(R) < 2:
        return float("nan")
    return _nanmean(R[-1, :-1] - np.diag(R)[:-1])


def forgetting(R) -> float:
    """Chaudhry et al. 2018 (RWalk): f_j = max_{l in [j, T-2]} R[l, j] - R[T-1, j], averaged over
    j < T-1; NaN if T == 1."""
    R = _square(R)
    if len(R) < 2:
        return float("nan")
    past = R[:-1, :-1]
    usable = np.tri(len(past), dtype=bool) & ~np.isnan(past)
    best = np.where(usable, past, -np.inf).max(axis=0)
    best = np.where(usable.any(axis=0), best, np.nan)
    return _nanmean(best - R[-1, :-1])


def continual_metrics(R) -> dict:
    """The usual task-incremental summaries of an accuracy matrix R."""
    return {"final_average_accuracy": final_average_accuracy(R),
            "average_incremental_accuracy": average_incremental_accuracy(R),
            "bwt": bwt_lopez_paz(R), "forgetting": forgetting(R)}


def geometric_mean(a: float, b: float) -> float:
    """sqrt(max(a, 0) * max(b, 0)): FoMo-in-Flux's single number for accumulation and retention."""
    return float(np.sqrt(max(a, 0.0) * max(b, 0.0)))
