"""The step of post-training round-to-nearest: how a tensor's grid is chosen when nothing will learn it.

QAT learns each step (LSQ) from the initial value ``2 mean|x| / sqrt(Qp)``; that value is a starting point
for gradient descent, not a good grid by itself. At 2 bits (``Qp = 1``) it puts the largest positive level at
twice the mean magnitude and rounds every weight below the mean to zero. Round-to-nearest
(``train.qgt-mode = "ptq"``, :mod:`fleet.quant.ptq`) uses one of :data:`PTQ_STEPS` (``train.ptq-step``):

- ``mse`` (default): the step that minimises the mean squared rounding error of the tensor, the clipping search
  of standard PTQ (PyTorch's MSE/histogram observers, ACIQ/OCS-style clipping): a search over
  :data:`SEARCH_POINTS` steps ``f * max|x| / Qp``, ``f`` in ``(0, 1]`` (per output channel for a per-channel
  weight quantizer; tensors above :data:`MAX_SAMPLES` elements are searched on an even stride of them);
- ``lsq-init``: LSQ's initial step (:meth:`fleet.quant.quantizers.LsqQuantizer.initial_step`), the rule before
  this choice existed.

Examples
--------
>>> x = torch.linspace(-1, 1, 201)  # uniform on [-1, 1], 2 bits: levels -2s, -s, 0, s
>>> mse_step(x, -2, 1), LsqQuantizer(bits=2).initial_step(x)
(tensor([0.5500]), tensor([1.0050]))
>>> rounding_mse(x, torch.tensor(0.55), -2, 1) < rounding_mse(x, torch.tensor(1.005), -2, 1)
tensor(True)
"""

from __future__ import annotations

import torch

from fleet.quant.quantizers import LsqQuantizer

__all__ = ["MAX_SAMPLES", "PTQ_STEPS", "SEARCH_POINTS", "mse_step", "rounding_mse", "rtn_step"]

PTQ_STEPS = ("mse", "lsq-init")  # train.ptq-step
SEARCH_POINTS = 100  # candidate steps per tensor (or channel): a 1% resolution of the clipping range
MAX_SAMPLES = 1 << 16  # a larger tensor is searched on an even stride of this many of its elements
_EPS = 1e-8
_CHUNK_ELEMENTS = 1 << 22  # elements of one batch of candidate errors (16 MB of float32)


def rounding_mse(x: torch.Tensor, step: torch.Tensor, qmin: int, qmax: int, dim: int | None = None) -> torch.Tensor:
    """Mean squared error of round-to-nearest of ``x`` on the grid ``step * [qmin, qmax]`` (over ``dim``)."""
    err = torch.div(x, step).round_().clamp_(qmin, qmax).mul_(step).sub_(x).square_()  # in place: fewer allocations
    return err.mean() if dim is None else err.mean(dim)


def _rows(x: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``x`` as ``(rows, samples)``: one row per output channel, or one row, strided to :data:`MAX_SAMPLES`."""
    rows = x.detach().flatten(1) if per_channel else x.detach().reshape(1, -1)
    stride = -(-rows.shape[1] // MAX_SAMPLES)
    return rows[:, ::stride].float()


@torch.no_grad()
def mse_step(x: torch.Tensor, qmin: int, qmax: int, per_channel: bool = False) -> torch.Tensor:
    """The step (one, or one per slice of dim 0 with ``per_channel``) minimising :func:`rounding_mse` of ``x``.

    Candidates are ``f * max|x| / qmax`` for ``f`` = 1/:data:`SEARCH_POINTS`, ..., 1 (the largest puts
    ``max|x|`` on the top level); ties go to the larger step. Returns shape ``(rows,)``; at least 1e-8.
    """
    rows = _rows(x, per_channel)  # (R, N)
    top = rows.abs().amax(1) / max(qmax, 1)  # (R,)
    fractions = torch.arange(SEARCH_POINTS, 0, -1, dtype=rows.dtype) / SEARCH_POINTS  # largest first
    chunk = max(1, _CHUNK_ELEMENTS // max(rows.numel(), 1))
    errors = []
    for start in range(0, SEARCH_POINTS, chunk):  # (chunk, R, 1) candidate steps at a time, memory bounded
        steps = (fractions[start:start + chunk, None] * top[None, :]).clamp_min(_EPS)[..., None]
        errors.append(rounding_mse(rows[None], steps, qmin, qmax, dim=2))
    best = torch.cat(errors).argmin(0)  # the first minimum: the larger step on a tie
    return (fractions[best] * top).clamp_min(_EPS)


def rtn_step(quantizer: LsqQuantizer, x: torch.Tensor, rule: str) -> torch.Tensor:
    """The step ``rule`` (one of :data:`PTQ_STEPS`) gives ``quantizer`` for ``x``, shaped as its ``step``."""
    if rule == "lsq-init":
        return quantizer.initial_step(x)
    if rule != "mse":
        raise ValueError(f"unknown PTQ step rule '{rule}'; valid: {', '.join(PTQ_STEPS)}")
    per_channel = quantizer.per_channel and quantizer.is_weight
    return mse_step(x, quantizer.qmin, quantizer.qmax, per_channel).reshape(quantizer.step.shape)
