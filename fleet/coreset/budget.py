"""Turning per-sample scores into a coreset: normalisation and top-k budgets.

Selection keeps the highest scores, as ACS and QuaRC do (docs/methods.md (ACS, QuaRC)).
The coreset is the fraction asked: a device keeps ``max(1, round(fraction * N))`` samples
(Python's round-half-to-even), and a class-balanced selection spreads that total over the
classes present in proportion to their counts by largest remainder (ties to the smaller
class id). ACS's per-class ``max(1, round(fraction * n_c))`` floors every class at one sample,
which at 10% of a device holding 12 samples of 7 classes keeps 7, not 1.

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

__all__ = ["SCORE_NORMS", "budget", "class_budgets", "check_fraction", "normalize", "top_k"]

SCORE_NORMS = ("none", "rank", "zscore")


def check_fraction(fraction: float) -> None:
    """Raise ValueError unless ``0 < fraction <= 1``."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")


def budget(n: int, fraction: float) -> int:
    """Return how many of ``n`` samples to keep: ``max(1, round(fraction * n))``."""
    return min(n, max(1, round(fraction * n)))


def class_budgets(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Per-class budgets summing to ``budget(sum(counts), fraction)``, by largest remainder.

    Examples
    --------
    >>> class_budgets(np.array([5, 3, 2]), 0.5).tolist()  # total 5; quotas 2.5, 1.5, 1.0
    [3, 1, 1]
    >>> class_budgets(np.array([2, 2, 2, 2, 2, 2, 1]), 0.1).tolist()  # total 1, not 7
    [1, 0, 0, 0, 0, 0, 0]
    """
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return np.zeros_like(counts)
    total = budget(n, fraction)
    quota = total * counts / n  # (C,)
    out = np.floor(quota).astype(np.int64)
    left = total - int(out.sum())
    order = np.lexsort((np.arange(len(counts)), -(quota - out)))  # largest remainder, then class id
    out[order[:left]] += 1
    return np.minimum(out, counts)


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
        Per class top ``k_c`` over the classes present, the ``k_c`` from :func:`class_budgets`;
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
        classes, counts = np.unique(y, return_counts=True)  # classes with no samples never appear here
        parts = [_descending(scores, all_idx[y == c])[:k] for c, k in zip(classes, class_budgets(counts, fraction))]
        keep = np.concatenate(parts)
    return np.sort(keep).astype(np.int64)
