"""The selector contract: context in, ``CoresetResult`` out, state kept by the device.

Selectors are cheap, stateless objects (STYLE.md pitfall 8). Everything that must
survive between rounds (a kept random draw, forgetting records) lives in a small
``dict[str, np.ndarray]`` that the device owns and passes back on the next call.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fleet.coreset.budget import SCORE_NORMS, check_fraction, top_k
from fleet.coreset.schedules import SCHEDULES

__all__ = ["CoresetResult", "SelectionContext", "Selector", "SelectorState"]

SelectorState = dict[str, np.ndarray]


@dataclass(frozen=True)
class SelectionContext:
    """Read-only inputs of one selection.

    Parameters
    ----------
    qmodel : nn.Module or None
        Current quantized model (scored in eval mode, restored afterwards).
    fpmodel : nn.Module or None
        Frozen FP reference of the same architecture (DS, RES, moderate features).
    epoch : int
        Current epoch ``t`` of the schedule.
    total_epochs : int
        Horizon ``T`` of the schedule.
    rng : np.random.Generator
        Explicit randomness (random selector, forgetting tie-breaks).
    num_classes : int
        Number of classes of the task.
    batch_size : int
        Scoring batch size (default: 256).
    balanced : bool
        Per-class budgets (ACS's default) or a global top-k (default: True).
    score_norm : str
        ``"none"`` (the papers), ``"rank"`` or ``"zscore"``, applied to each score term
        over the device's data before mixing (default: "none").
    schedule : str
        Weight on EVS, a key of ``SCHEDULES`` (default: "paper").
    fp_key : hashable or None
        Names (fpmodel, the data scored) within the process, so the frozen reference's outputs on a
        device's fixed data are computed once (``score_pass``); None: computed at every selection.
    """

    qmodel: nn.Module | None
    fpmodel: nn.Module | None
    epoch: int
    total_epochs: int
    rng: np.random.Generator
    num_classes: int
    batch_size: int = 256
    balanced: bool = True
    score_norm: str = "none"
    schedule: str = "paper"
    fp_key: Hashable | None = None

    def __post_init__(self) -> None:
        """Validate the names and sizes once, before any scoring."""
        if self.score_norm not in SCORE_NORMS:
            valid = ", ".join(SCORE_NORMS)
            raise ValueError(f"unknown score_norm '{self.score_norm}'; valid: {valid}")
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule '{self.schedule}'; valid: {', '.join(SCHEDULES)}"
            )
        if self.total_epochs < 1 or self.batch_size < 1:
            raise ValueError("total_epochs and batch_size must be >= 1")


@dataclass(frozen=True)
class CoresetResult:
    """Outcome of a selection.

    Parameters
    ----------
    indices : np.ndarray
        Selected sample indices, sorted ascending, int64.
    scores : np.ndarray or None
        Per-sample scores ``(N,)`` the selection ranked by (None if not score-based).
    scoring_passes : int
        Samples x forward passes spent on scoring.
    state : dict of str to np.ndarray
        Selector state for the device to keep until the next call.
    """

    indices: np.ndarray
    scores: np.ndarray | None
    scoring_passes: int
    state: SelectorState = field(default_factory=dict)


class Selector:
    """Base selector: score every sample, keep the top ``fraction`` (template method).

    Subclasses override ``score``; ``full`` and ``random`` override ``select``.
    Stateful selectors also override ``observe``.
    """

    name = "base"
    uses_float_model = False  # whether scoring runs the float reference (the server then sends it)

    def select(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        fraction: float,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> CoresetResult:
        """Select a coreset of ``x`` (``(N, ...)``) with labels ``y`` (``(N,)``)."""
        check_fraction(fraction)
        scores, passes, new_state = self.score(x, y, ctx, dict(state))
        idx = top_k(scores, y.cpu().numpy(), fraction, balanced=ctx.balanced)
        return CoresetResult(idx, scores, passes, new_state)

    def score(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> tuple[np.ndarray, int, SelectorState]:
        """Per-sample scores ``(N,)``, passes spent and the updated state."""
        raise NotImplementedError

    def observe(
        self, indices: np.ndarray, correct: np.ndarray, state: SelectorState
    ) -> SelectorState:
        """Record training outcomes; stateless selectors return the state unchanged."""
        return dict(state)
