"""Forgetting-event selector (Toneva et al., ICLR 2019), from the device's own records.

A forgetting event is a transition of one sample from correctly to incorrectly
classified between two consecutive observations. The device reports, after each
of its local epochs (or batches), which samples it trained on and whether the
quantized model classified them correctly; ``observe`` folds that into three small
arrays that the device keeps in its state dict between rounds:

- ``forgetting-prev`` (int8): last outcome, -1 = never observed, 0 = wrong, 1 = right;
- ``forgetting-count`` (int32): forgetting events so far;
- ``forgetting-learned`` (bool): classified correctly at least once.

Score (higher = keep), choices where the paper is silent for a device that only
sees part of its data:

- observed, never learned: ``max(count) + 1`` (Toneva treat these as forgotten the
  most);
- observed, learned: its count (0 = "unforgettable", the first to drop);
- never observed: a random value in [0.25, 0.75) from ``ctx.rng``, i.e. ranked below
  any sample forgotten at least once but above unforgettable ones, with random order
  among themselves (so the first selection, with no records, is a random draw).

Arrays grow to the largest index observed and are padded to ``N`` at selection.
"""

from __future__ import annotations

import numpy as np
import torch

from fleet.coreset.base import SelectionContext, Selector, SelectorState

__all__ = ["ForgettingSelector", "forgetting_scores"]

PREV, COUNT, LEARNED = "forgetting-prev", "forgetting-count", "forgetting-learned"


def _padded(state: SelectorState, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    prev = state.get(PREV, np.zeros(0, dtype=np.int8))
    count = state.get(COUNT, np.zeros(0, dtype=np.int32))
    learned = state.get(LEARNED, np.zeros(0, dtype=bool))
    pad = n - len(prev)
    if pad > 0:
        prev = np.concatenate([prev, np.full(pad, -1, dtype=np.int8)])
        count = np.concatenate([count, np.zeros(pad, dtype=np.int32)])
        learned = np.concatenate([learned, np.zeros(pad, dtype=bool)])
    return prev.copy(), count.copy(), learned.copy()


def forgetting_scores(
    state: SelectorState, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Scores ``(n,)`` from the records in ``state`` (see module docstring)."""
    prev, count, learned = _padded(state, n)
    prev, count, learned = prev[:n], count[:n], learned[:n]
    observed = prev >= 0
    scores = count.astype(np.float64)
    top = float(count[observed].max()) if observed.any() else 0.0
    scores[observed & ~learned] = top + 1.0
    # Draw for every sample so the RNG stream does not depend on what was observed.
    unseen = 0.25 + 0.5 * rng.random(n)
    scores[~observed] = unseen[~observed]
    return scores


class ForgettingSelector(Selector):
    """Keep the samples forgotten most often (Toneva et al. 2019, arXiv 1812.05159)."""

    name = "forgetting"

    def score(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> tuple[np.ndarray, int, SelectorState]:
        """Scores from the stored records; no forward passes are spent."""
        return forgetting_scores(state, int(x.shape[0]), ctx.rng), 0, state

    def observe(
        self, indices: np.ndarray, correct: np.ndarray, state: SelectorState
    ) -> SelectorState:
        """Fold one observation (each index at most once) into the records.

        Parameters
        ----------
        indices : np.ndarray
            Sample indices into the device's data, shape ``(B,)``.
        correct : np.ndarray
            Whether Q classified each of them correctly, shape ``(B,)``.
        state : dict of str to np.ndarray
            Current state; not modified.
        """
        idx = np.asarray(indices, dtype=np.int64)
        ok = np.asarray(correct, dtype=bool)
        if idx.shape != ok.shape:
            raise ValueError(
                f"indices {idx.shape} and correct {ok.shape} differ in shape"
            )
        if len(np.unique(idx)) != len(idx):
            raise ValueError("observe() needs each index at most once per call")
        if len(idx) and idx.min() < 0:
            raise ValueError("indices must be non-negative")
        n = max(len(state.get(PREV, ())), int(idx.max()) + 1 if len(idx) else 0)
        prev, count, learned = _padded(state, n)
        count[idx] += (prev[idx] == 1) & ~ok  # correct -> incorrect = one event
        learned[idx] |= ok
        prev[idx] = ok.astype(np.int8)
        return {**state, PREV: prev, COUNT: count, LEARNED: learned}
