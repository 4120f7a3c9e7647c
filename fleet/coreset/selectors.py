"""Coreset selectors for on-device QAT and the ``SELECTORS`` registry.

=============  ==============================================================  ======
name           score (higher = keep)                                           passes
=============  ==============================================================  ======
``full``       all samples                                                     0
``random``     uniform draw (class-balanced when ``ctx.balanced``)             0
``evs``        ``||p_Q - onehot(y)||``  (ACS)                                  N
``ds``         ``||p_Q - p_F||``  (ACS)                                        2N
``res``        ``KL(p_Q || p_F)``  (QuaRC)                                     2N
``evs+res``    ``EVS + RES`` (QuaRC Table IV's pairs; ``ds+res`` likewise)       2N
``acs``        ``w(t) EVS + (1 - w(t)) DS``,  ``w = SCHEDULES[ctx.schedule]``  2N
``quarc``      ``w(t) EVS + (1 - w(t)) DS + RES``  (QuaRC Eq. 6)               2N
``forgetting`` Toneva forgetting events from the device's records              0
``moderate``   ``-| d_i - median_c(d) |``, ``d_i`` = distance of the FP        N
               penultimate feature to its class's median feature (Xia 2023)
=============  ==============================================================  ======

Each score term is normalised by ``ctx.score_norm`` over the device's data before
mixing; ``"none"`` is the papers' form (docs/methods.md (ACS, QuaRC; Small-scale notes) on why RES then
dominates). Choices where the sources are silent are listed in the class docstrings.

Examples
--------
>>> import torch
>>> ctx = SelectionContext(None, None, 0, 10, np.random.default_rng(0), num_classes=2)
>>> x, y = torch.zeros(4, 1), torch.tensor([0, 0, 1, 1])
>>> build_selector("full").select(x, y, 0.5, ctx, {}).indices
array([0, 1, 2, 3])
>>> len(build_selector("random").select(x, y, 0.5, ctx, {}).indices)
2
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from fleet.coreset.base import CoresetResult, SelectionContext, Selector, SelectorState
from fleet.coreset.budget import check_fraction, normalize, top_k
from fleet.coreset.forgetting import ForgettingSelector
from fleet.coreset.margin import MarginSelector
from fleet.coreset.schedules import SCHEDULES
from fleet.coreset.scores import score_pass

__all__ = [
    "SELECTORS",
    "FullSelector",
    "MixSelector",
    "ModerateSelector",
    "RandomSelector",
    "TermSelector",
    "build_selector",
    "moderate_scores",
]


class FullSelector(Selector):
    """All samples, no scoring (the full-data QAT reference)."""

    name = "full"

    def select(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        fraction: float,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> CoresetResult:
        """Return every index; ``fraction`` is only validated."""
        check_fraction(fraction)
        return CoresetResult(
            np.arange(int(x.shape[0]), dtype=np.int64), None, 0, dict(state)
        )


class RandomSelector(Selector):
    """Uniform random coreset, class-balanced when ``ctx.balanced``.

    Parameters
    ----------
    redraw : bool
        Draw anew at every call, or draw once and keep it in ``state["random-indices"]``
        as the papers' Random baseline does (default: False). A kept draw is redrawn
        if it no longer fits the data (an index >= N); otherwise it is reused as is,
        whatever ``fraction`` the later call asks for.
    """

    name = "random"
    KEY = "random-indices"

    def __init__(self, redraw: bool = False) -> None:
        self.redraw = redraw

    def select(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        fraction: float,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> CoresetResult:
        """Draw (or reuse) a random coreset; no scoring passes."""
        check_fraction(fraction)
        n = int(x.shape[0])
        kept = state.get(self.KEY)
        if not self.redraw and kept is not None and (len(kept) == 0 or kept.max() < n):
            return CoresetResult(
                np.asarray(kept, dtype=np.int64).copy(), None, 0, dict(state)
            )
        # Top-k of i.i.d. uniform keys = a uniform draw without replacement (per class).
        idx = top_k(ctx.rng.random(n), y.cpu().numpy(), fraction, balanced=ctx.balanced)
        new_state = dict(state)
        if not self.redraw:
            new_state[self.KEY] = idx
        return CoresetResult(idx, None, 0, new_state)


def _require(model: torch.nn.Module | None, what: str) -> torch.nn.Module:
    if model is None:
        raise ValueError(f"this selector needs ctx.{what}")
    return model


class TermSelector(Selector):
    """One score term alone (``"evs"``, ``"ds"`` or ``"res"``), or a sum of them (``"evs+res"``: QuaRC's
    Table IV pairs, each normalised by ``ctx.score_norm`` before adding, as :class:`MixSelector` does).

    EVS needs only the quantized model (N passes); DS and RES need both (2N).
    """

    def __init__(self, term: str) -> None:
        self.terms = term.split("+")
        if not self.terms or any(t not in ("evs", "ds", "res") for t in self.terms):
            raise ValueError(f"unknown score term '{term}'; valid: evs, ds, res, or a sum such as evs+res")
        self.name = term
        self.uses_float_model = self.terms != ["evs"]

    def score(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> tuple[np.ndarray, int, SelectorState]:
        """Score with the current Q (and F for DS/RES)."""
        q = _require(ctx.qmodel, "qmodel")
        f = _require(ctx.fpmodel, "fpmodel") if self.uses_float_model else None
        out = score_pass(q, f, x, y, ctx.batch_size, fp_key=ctx.fp_key)
        parts = [normalize(out[t].numpy(), ctx.score_norm) for t in self.terms]  # type: ignore[literal-required]
        return np.sum(parts, axis=0), out["passes"], state


class MixSelector(Selector):
    """ACS's ``w(t) EVS + (1 - w(t)) DS``, plus RES for QuaRC.

    ``w`` is ``SCHEDULES[ctx.schedule](ctx.epoch, ctx.total_epochs)`` (default
    ``"paper"``: ``cos(pi t / 2T)``). With ``score_norm="none"`` the terms are added
    as they are, as in QuaRC Eq. 6.

    Parameters
    ----------
    with_res : bool
        Add RES (QuaRC) or not (ACS).
    """

    uses_float_model = True  # DS (and RES) compare against the float reference

    def __init__(self, with_res: bool) -> None:
        self.with_res = with_res
        self.name = "quarc" if with_res else "acs"

    def score(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> tuple[np.ndarray, int, SelectorState]:
        """Mix the normalised terms with the schedule's weight at ``ctx.epoch``."""
        q, f = _require(ctx.qmodel, "qmodel"), _require(ctx.fpmodel, "fpmodel")
        out = score_pass(q, f, x, y, ctx.batch_size, fp_key=ctx.fp_key)
        w = SCHEDULES[ctx.schedule](ctx.epoch, ctx.total_epochs)
        s = w * normalize(out["evs"].numpy(), ctx.score_norm)
        s = s + (1 - w) * normalize(out["ds"].numpy(), ctx.score_norm)
        if self.with_res:
            s = s + normalize(out["res"].numpy(), ctx.score_norm)
        return s, out["passes"], state


def moderate_scores(features: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Moderate-coreset scores: ``-|d_i - median(d over class)|``, ``(N,)``.

    ``d_i = ||f_i - m_c||_2`` with ``m_c`` the element-wise median feature of the
    sample's class ``c``.

    Examples
    --------
    >>> f = np.array([[0.0], [1.0], [2.0], [4.0], [10.0]])  # class median 2
    >>> moderate_scores(f, np.zeros(5, dtype=int))  # d = 2,1,0,2,8; median d = 2
    array([-0., -1., -2., -0., -6.])
    """
    features = np.asarray(features, dtype=np.float64)  # (N, D)
    scores = np.zeros(len(features))
    for c in np.unique(y):
        mask = y == c
        m_c = np.median(features[mask], axis=0)  # (D,)
        d = np.linalg.norm(features[mask] - m_c, axis=1)  # (n_c,)
        scores[mask] = -np.abs(d - np.median(d))
    return scores


class ModerateSelector(Selector):
    """Moderate coreset (Xia et al., ICLR 2023): keep samples at the median distance.

    Features are the FP model's penultimate features (input of its last
    ``nn.Linear``). The class median is taken over the classes present on the
    device. Note: ACS's DeepCore fork sorts distances descending (farthest first);
    this follows Xia et al.'s rule instead. With ``balanced=False`` the per-class
    scores are ranked globally.
    """

    uses_float_model = True  # features come from the float reference

    name = "moderate"

    def score(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        ctx: SelectionContext,
        state: SelectorState,
    ) -> tuple[np.ndarray, int, SelectorState]:
        """Score from one FP pass with a feature hook."""
        out = score_pass(
            None, _require(ctx.fpmodel, "fpmodel"), x, y, ctx.batch_size, True, fp_key=ctx.fp_key
        )
        s = moderate_scores(out["features_f"].numpy(), y.cpu().numpy())
        return normalize(s, ctx.score_norm), out["passes"], state


SELECTORS: dict[str, Callable[..., Selector]] = {
    "full": FullSelector,
    "random": RandomSelector,
    "evs": lambda: TermSelector("evs"),
    "ds": lambda: TermSelector("ds"),
    "res": lambda: TermSelector("res"),
    "evs+res": lambda: TermSelector("evs+res"),
    "ds+res": lambda: TermSelector("ds+res"),
    "acs": lambda: MixSelector(with_res=False),
    "quarc": lambda: MixSelector(with_res=True),
    "forgetting": ForgettingSelector,
    "moderate": ModerateSelector,
    "margin": MarginSelector,
}


def uses_float_model(name: str) -> bool:
    """Whether the selector registered as ``name`` scores with the float reference."""
    return build_selector(name).uses_float_model


def build_selector(name: str, **options: Any) -> Selector:
    """Build a selector by registry name; options go to its constructor.

    Raises ValueError listing the valid names for an unknown ``name``.
    """
    if name not in SELECTORS:
        raise ValueError(f"unknown selector '{name}'; valid: {', '.join(SELECTORS)}")
    return SELECTORS[name](**options)
