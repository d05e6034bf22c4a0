"""Continual-learning metrics from an evaluation matrix, each in one documented function.

Convention: ``E[i, j]`` is the score (accuracy or recall in [0, 1]) of the model after time
step / task ``i`` on the data of step ``j``; a square T x T array; NaN cells (not evaluated)
are ignored.
"""
from __future__ import annotations

import numpy as np


def _square(E) -> np.ndarray:
    E = np.asarray(E, dtype=np.float64)
    if E.ndim != 2 or E.shape[0] != E.shape[1] or E.size == 0:
        raise ValueError(f"an evaluation matrix must be square and non-empty, got shape {E.shape}")
    return E


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def in_distribution(E) -> float:
    """Mean of the diagonal: each model on its own time step (TiC-CLIP "ID"; CLEAR)."""
    return _nanmean(np.diag(_square(E)))


def backward_transfer(E) -> float:
    """Mean of the strictly lower triangle (j < i): models on past time steps (TiC-CLIP)."""
    E = _square(E)
    return _nanmean(E[np.tril_indices(len(E), -1)])


def forward_transfer(E) -> float:
    """Mean of the strictly upper triangle (j > i): models on future time steps (TiC-CLIP)."""
    E = _square(E)
    return _nanmean(E[np.triu_indices(len(E), 1)])


def transfer_metrics(E) -> dict:
    return {"in_distribution": in_distribution(E), "backward_transfer": backward_transfer(E),
            "forward_transfer": forward_transfer(E)}


def final_average_accuracy(R) -> float:
    """Mean of the last row: the final model on every task, (1/T) sum_j R[T-1, j]."""
    R = _square(R)
    return _nanmean(R[-1])


def average_incremental_accuracy(R) -> float:
    """iCaRL (Rebuffi et al. 2017): (1/T) sum_k mean_{j<=k} R[k, j]."""
    R = _square(R)
    T = len(R)
    tri = np.where(np.tril(np.ones((T, T), dtype=bool)), R, np.nan)
    with np.errstate(invalid="ignore"):
        rows = np.nanmean(tri, axis=1)
    return _nanmean(rows)


def bwt_lopez_paz(R) -> float:
    """GEM (Lopez-Paz & Ranzato 2017): (1/(T-1)) sum_{i<T-1} (R[T-1, i] - R[i, i])."""
    R = _square(R)
    if len(R) < 2:
        return float("nan")
    return _nanmean(R[-1, :-1] - np.diag(R)[:-1])


def forgetting(R) -> float:
    """Chaudhry et al. 2018: f_j = max_{l in [j, T-2]} R[l, j] - R[T-1, j]; mean over j < T-1."""
    R = _square(R)
    T = len(R)
    if T < 2:
        return float("nan")
    past = np.where(np.triu(np.ones((T - 1, T - 1), dtype=bool)).T, R[:-1, :-1], np.nan)  # rows l >= j
    with np.errstate(invalid="ignore"):
        best = np.nanmax(np.where(np.isnan(past), -np.inf, past), axis=0)
    best = np.where(np.isinf(best), np.nan, best)
    return _nanmean(best - R[-1, :-1])


def continual_metrics(R) -> dict:
    return {"final_average_accuracy": final_average_accuracy(R),
            "average_incremental_accuracy": average_incremental_accuracy(R),
            "bwt": bwt_lopez_paz(R), "forgetting": forgetting(R)}


def geometric_mean(a: float, b: float) -> float:
    """sqrt(a * b), inputs clipped at 0: FoMo-in-Flux's accumulation/retention summary."""
    return float(np.sqrt(max(a, 0.0) * max(b, 0.0)))
