"""Margin selector (DeepCore's "Margin", after Scheffer et al. 2001): the samples the model is least sure of.

Score (higher = keep): ``-(p_1 - p_2)``, minus the gap between the received quantized model's two largest
softmax probabilities. It needs no float reference and no state, one forward pass per sample, so it is
the cheapest uncertainty baseline beside EVS (which needs the label) and QuaRC's RES (which needs the
reference). Added as the worked example of docs/architecture.md: one file plus one registry line.
"""

from __future__ import annotations

import numpy as np
import torch

from fleet.coreset.base import SelectionContext, Selector, SelectorState
from fleet.coreset.budget import normalize
from fleet.coreset.scores import logits_of

__all__ = ["MarginSelector", "margin_scores"]


def margin_scores(logits: torch.Tensor) -> torch.Tensor:
    """``-(p_1 - p_2)`` per row of ``logits`` ``(N, K)``; a one-class model scores 0.

    Examples
    --------
    >>> margin_scores(torch.tensor([[1.0, 0.0, -100.0], [3.0, 1.0, 1.0]])).round(decimals=3)
    tensor([-0.4620, -0.6800])
    """
    if logits.shape[1] < 2:
        return torch.zeros(logits.shape[0])
    top = logits.softmax(dim=1).topk(2, dim=1).values  # (N, 2)
    return -(top[:, 0] - top[:, 1])


class MarginSelector(Selector):
    """Keep the ``fraction`` of samples with the smallest top-2 margin of the received model."""

    name = "margin"

    def score(self, x: torch.Tensor, y: torch.Tensor, ctx: SelectionContext,
              state: SelectorState) -> tuple[np.ndarray, int, SelectorState]:
        """One forward pass of ``ctx.qmodel`` over ``x``."""
        if ctx.qmodel is None:
            raise ValueError("the margin selector needs ctx.qmodel")
        scores = margin_scores(logits_of(ctx.qmodel, x, ctx.batch_size)).numpy()
        return normalize(scores, ctx.score_norm), int(x.shape[0]), state
