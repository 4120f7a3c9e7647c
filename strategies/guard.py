"""Stateless validation of decoded updates before they reach the inner strategy.

Two layers, both pure functions:

1. Absolute checks on one update (`check_update`): same keys as the global model,
   same shapes, a floating dtype, every value finite. A single NaN would poison
   every aggregate (FedAvg, FedAdam's moments, Krum's distances), so it is caught
   before aggregation rather than after.
2. A relative check on the round (`norm_outliers`): an update whose delta norm
   ``||local - global||_2`` exceeds ``factor`` times the round's *median* delta norm
   is rejected as an outlier (a diverged device, a codec bug, a poisoned update).

Why the median: it is a robust scale estimate. One huge update cannot move it,
whereas it inflates the mean by ``X / n`` and the standard deviation by about
``X / sqrt(n)``; with ``n`` updates a z-score can never exceed ``(n - 1) / sqrt(n)``,
so a mean/std test cannot flag a lone outlier in a small round at all. A ratio to
the median is also scale-free: it follows the learning-rate schedule and the model
size without an absolute threshold to tune. With fewer than 3 updates the median is
the mean of at most two norms (which the outlier drags up with it: ``b > 10 (a + b)
/ 2`` never holds), so the relative check is skipped and only the absolute checks
apply.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MIN_UPDATES_FOR_NORM_CHECK = 3


@dataclass(frozen=True)
class RejectedUpdate:
    """An update the guard kept out of aggregation.

    Parameters
    ----------
    device : int
        Device index (the reply's ``device`` metric).
    reason : str
        One-line human-readable reason.
    """

    device: int
    reason: str


def check_update(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> str | None:
    """Return why a decoded update is unusable, or None if it passes.

    Parameters
    ----------
    arrays : Mapping[str, np.ndarray]
        The decoded update (float arrays keyed like the global model).
    reference : Mapping[str, np.ndarray]
        The global model the update was trained from.

    Returns
    -------
    str | None
        The first problem found (keys, then per-tensor dtype, shape, finiteness),
        or None.

    Examples
    --------
    >>> ref = {"w": np.zeros(2, np.float32)}
    >>> check_update({"w": np.array([1.0, np.nan], np.float32)}, ref)
    "'w': 1 non-finite value(s) (NaN/Inf)"
    >>> check_update({"w": np.ones(2, np.float32)}, ref) is None
    True
    """
    missing = [k for k in reference if k not in arrays]
    if missing:
        return f"missing keys: {missing}"
    extra = [k for k in arrays if k not in reference]
    if extra:
        return f"extra keys: {extra}"
    for key, ref in reference.items():
        arr = np.asarray(arrays[key])
        if not np.issubdtype(arr.dtype, np.floating):
            return f"'{key}': dtype {arr.dtype} is not floating (was it decoded?)"
        if arr.shape != np.shape(ref):
            return f"'{key}': shape {arr.shape} != expected {np.shape(ref)}"
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            return f"'{key}': {bad} non-finite value(s) (NaN/Inf)"
    return None


def delta_norm(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> float:
    """Global L2 norm of ``arrays - reference`` over all tensors, in float64.

    Examples
    --------
    >>> delta_norm({"a": np.array([3.0]), "b": np.array([1.0, 4.0])},
    ...            {"a": np.array([0.0]), "b": np.array([1.0, 0.0])})
    5.0
    """
    sq = 0.0
    for key, ref in reference.items():
        diff = np.asarray(arrays[key], np.float64) - np.asarray(ref, np.float64)
        sq += float(np.sum(diff * diff))
    return float(np.sqrt(sq))


def norm_outliers(deltas_norms: Sequence[float], factor: float = 10.0) -> list[bool]:
    """Flag delta norms above ``factor`` times the round's median.

    Parameters
    ----------
    deltas_norms : Sequence[float]
        ``||local - global||_2`` of each update in the round.
    factor : float (default: 10.0)
        Rejection threshold as a multiple of the median; must be > 1 (at 1 about
        half of the honest updates would be rejected).

    Returns
    -------
    list[bool]
        True where the update is an outlier. All False with fewer than 3 updates
        (see the module docstring) or when the median is 0 (no scale to compare
        to). Non-finite norms are always flagged and excluded from the median.

    Examples
    --------
    >>> norm_outliers([1.0, 2.0, 3.0, 100.0])
    [False, False, False, True]
    >>> norm_outliers([1.0, 1000.0])
    [False, False]
    """
    if factor <= 1.0:
        raise ValueError(f"factor must be > 1, got {factor}")
    norms = np.asarray(deltas_norms, dtype=np.float64)  # (K,)
    finite = np.isfinite(norms)
    flags = ~finite
    if norms.size < MIN_UPDATES_FOR_NORM_CHECK or not finite.any():
        return [bool(f) for f in flags]
    median = float(np.median(norms[finite]))
    if median > 0.0:
        # strict ">": an update exactly at the threshold is kept
        flags = flags | (finite & (norms > factor * median))
    return [bool(f) for f in flags]


def screen_updates(
    updates: Mapping[int, Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    factor: float = 10.0,
) -> tuple[list[int], list[RejectedUpdate]]:
    """Run both checks on one round's decoded updates.

    Parameters
    ----------
    updates : Mapping[int, Mapping[str, np.ndarray]]
        Decoded full local models keyed by device index.
    reference : Mapping[str, np.ndarray]
        The global model of this round.
    factor : float (default: 10.0)
        See `norm_outliers`; computed only over updates that pass `check_update`.

    Returns
    -------
    tuple[list[int], list[RejectedUpdate]]
        Accepted device indices (input order) and the rejections.
    """
    rejected: list[RejectedUpdate] = []
    passed: list[int] = []
    for device, arrays in updates.items():
        reason = check_update(arrays, reference)
        if reason is None:
            passed.append(device)
        else:
            rejected.append(RejectedUpdate(device, reason))
    norms = [delta_norm(updates[d], reference) for d in passed]
    flags = norm_outliers(norms, factor)
    median = float(np.median(norms)) if norms else 0.0
    accepted: list[int] = []
    for device, norm, flag in zip(passed, norms, flags, strict=True):
        if flag:
            rejected.append(
                RejectedUpdate(
                    device,
                    f"delta norm {norm:.4g} > {factor:g} x round median {median:.4g}",
                )
            )
        else:
            accepted.append(device)
    return accepted, rejected
