"""Turning per-sample scores into a coreset: normalisation and top-k budgets.

Selection keeps the highest scores, as ACS and QuaRC do (ALGORITHMS.md §1.4, §2.1).
Budgets follow ACS's ``round(fraction * n)`` (Python's round-half-to-even), floored at
one sample so that a tiny class or device never contributes nothing.

Examples
--------
>>> top_k(np.array([0.1, 0.9, 0.5, 0.7]), np.array([0, 0, 1, 1]), 0.5, balanced=True)
array([1, 3])
>>> top_k(np.array([0.1, 0.9, 0.5, 0.7]), np.array([0, 0, 1, 1]), 0.5, balanced=False)
array([1, 3])
>>> normalize(np.array([3.0, 1.0, 2.0, 2.0]), "rank")
array([1. , 0. , 0.5, 0.5])
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCORE_NORMS", "budget", "check_fraction", "normalize", "top_k"]

SCORE_NORMS = ("none", "rank", "zscore")


def check_fraction(fraction: float) -> None:
    """Raise ValueError unless ``0 < fraction <= 1``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")


def budget(n: int, fraction: float) -> int:
    """Return how many of ``n`` samples to keep: ``max(1, round(fraction * n))``."""
    return min(n, max(1, round(fraction * n)))


def normalize(scores: np.ndarray, how: str) -> np.ndarray:
    """Normalise one score term over the device's data.

    Parameters
    ----------
    scores : np.ndarray
        Shape ``(N,)``.
    how : str
        ``"none"`` (as is, the papers' choice), ``"rank"`` (average rank scaled to
        [0, 1]; ties share a rank) or ``"zscore"`` (``(s - mean) / std``; all zeros
        when the std is 0).
    """
    s = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return s
    if how == "rank":
        _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
        ends = np.cumsum(counts)
        avg = (ends - counts + ends - 1) / 2.0  # 0-based average rank per unique value
        return avg[inv] / max(len(s) - 1, 1)
    if how == "zscore":
        std = s.std()
        return (s - s.mean()) / std if std > 0 else np.zeros_like(s)
    raise ValueError(f"unknown score_norm '{how}'; valid: {', '.join(SCORE_NORMS)}")


def _descending(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``idx`` ordered by descending score; ties (and NaNs, last) by ascending index."""
    s = np.nan_to_num(scores[idx], nan=-np.inf)
    return idx[np.lexsort((idx, -s))]


def top_k(
    scores: np.ndarray, y: np.ndarray, fraction: float, balanced: bool = True
) -> np.ndarray:
    """Return the indices of the top-scoring samples, sorted ascending (int64).

    Parameters
    ----------
    scores : np.ndarray
        Shape ``(N,)``; higher = keep.
    y : np.ndarray
        Labels, shape ``(N,)``; only used when ``balanced``.
    fraction : float
        Fraction in (0, 1].
    balanced : bool
        Per class top ``max(1, round(fraction * n_c))`` over the classes present;
        otherwise global top ``max(1, round(fraction * N))`` (default: True).
    """
    check_fraction(fraction)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    all_idx = np.arange(n, dtype=np.int64)
    if not balanced:
        keep = _descending(scores, all_idx)[: budget(n, fraction)]
    else:
        y = np.asarray(y)
        parts = []
        for c in np.unique(y):  # classes with no samples never appear here
            idx_c = all_idx[y == c]
            parts.append(_descending(scores, idx_c)[: budget(len(idx_c), fraction)])
        keep = np.concatenate(parts)
    return np.sort(keep).astype(np.int64)
