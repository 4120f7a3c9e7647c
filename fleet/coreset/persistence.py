"""Keeping a coreset between re-selections (docs/methods.md (ACS, QuaRC): reuse D_S(t-1)).

A device selects at its first participation and then every ``reselect_every``
participations; in between it reuses the indices it stored in its own state dict
under ``CORESET_KEY``, spending no scoring passes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from fleet.coreset.base import CoresetResult, SelectionContext, Selector, SelectorState

__all__ = ["CORESET_KEY", "select_or_reuse", "should_reselect"]

CORESET_KEY = "coreset-indices"


def should_reselect(participation: int, reselect_every: int) -> bool:
    """Return True at participation 0 and every ``reselect_every`` ones after.

    Examples
    --------
    >>> [should_reselect(p, 2) for p in range(5)]
    [True, False, True, False, True]
    """
    if reselect_every < 1:
        raise ValueError(f"reselect_every must be >= 1, got {reselect_every}")
    if participation < 0:
        raise ValueError(f"participation must be >= 0, got {participation}")
    return participation % reselect_every == 0


def select_or_reuse(
    selector: Selector,
    x: torch.Tensor,
    y: torch.Tensor,
    fraction: float,
    ctx: SelectionContext,
    state: SelectorState,
    participation: int,
    reselect_every: int,
) -> CoresetResult:
    """Select when due (or when nothing usable is stored), else reuse stored indices.

    The returned state carries the selector's state plus ``CORESET_KEY``.
    A stored selection that no longer fits the data (an index >= N) is redone.
    """
    stored = state.get(CORESET_KEY)
    fits = (
        stored is not None and len(stored) > 0 and int(stored.max()) < int(x.shape[0])
    )
    if fits and not should_reselect(participation, reselect_every):
        return CoresetResult(
            np.asarray(stored, dtype=np.int64).copy(), None, 0, dict(state)
        )
    result = selector.select(x, y, fraction, ctx, state)
    return replace(result, state={**result.state, CORESET_KEY: result.indices})
