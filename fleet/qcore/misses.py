"""Quantization misses: per-sample forgetting events across bit-widths, and QCore sampling.

docs/methods.md (Quantization misses and the core). A *quantization miss* is a correct -> incorrect transition between
two consecutive recordings of a quantized copy's prediction on a sample (Toneva et
al.'s forgetting events, counted per bit-width and summed). The QCore is drawn with
probability proportional to the count, without replacement.

Examples
--------
>>> rec = np.array([[[1, 1]], [[0, 1]], [[1, 1]], [[0, 1]]], dtype=bool)  # (R=4, B=1, N=2)
>>> count_misses(rec).tolist()
[2, 0]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fleet.qcore.quant import SUPPORTED_BITS, to_qcore
from fleet.quant.spec import check_bits

__all__ = [
    "NEVER_LEARNED_COUNT",
    "count_misses",
    "record_misses",
    "sample_core",
    "train_float_recording",
    "update_core",
]

NEVER_LEARNED_COUNT = 50  # the code's ``npresentations``

ModelFn = Callable[[torch.Tensor], torch.Tensor]


def count_misses(
    records: np.ndarray, never_learned_count: int = NEVER_LEARNED_COUNT, per_width: bool = False
) -> np.ndarray:
    """Count correct -> incorrect transitions per sample.

    Parameters
    ----------
    records : np.ndarray
        Booleans ``(R, B, N)``: recording r, bit-width b, sample n was classified correctly.
    never_learned_count : int
        Count given, per bit-width, to a sample never correct at that width
        (default: 50, the code's ``npresentations``).
    per_width : bool
        Return ``(B, N)`` counts instead of their sum over widths ``(N,)`` (default: False).
    """
    rec = np.asarray(records, dtype=bool)
    if rec.ndim != 3 or rec.shape[0] < 1:
        raise ValueError(f"records must be (R, B, N) with R >= 1, got shape {rec.shape}")
    forgot = rec[:-1] & ~rec[1:]  # (R-1, B, N)
    counts = forgot.sum(axis=0).astype(np.int64)  # (B, N)
    counts[~rec.any(axis=0)] = never_learned_count
    return counts if per_width else counts.sum(axis=0)


@torch.no_grad()
def record_misses(
    model_fns: Sequence[ModelFn], x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> np.ndarray:
    """One recording: which samples each model classifies correctly, ``(B, N)`` booleans.

    ``model_fns`` are typically the quantized copies at each bit-width.
    """
    out = np.zeros((len(model_fns), len(y)), dtype=bool)
    for b, fn in enumerate(model_fns):
        for i in range(0, len(y), batch_size):
            pred = fn(x[i : i + batch_size]).argmax(dim=1)  # (n,)
            out[b, i : i + batch_size] = (pred == y[i : i + batch_size]).numpy()
    return out


def sample_core(counts: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``size`` distinct indices with probability proportional to ``counts``.

    Sequential weighted sampling without replacement (as ``numpy``'s and pandas'
    ``replace=False``). Zero-count samples are never drawn while non-zero ones remain.
    If fewer than ``size`` counts are non-zero, all of them are taken and the rest is
    filled *uniformly without replacement* from the zero-count samples: the released
    code instead re-draws with replacement, which can return duplicates and a core
    smaller than ``size`` in distinct samples; we keep the core size exact.

    Examples
    --------
    >>> sorted(sample_core(np.array([0, 3, 0, 1]), 2, np.random.default_rng(0)).tolist())
    [1, 3]
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D array of non-negative numbers")
    if not 0 < size <= len(counts):
        raise ValueError(f"core size {size} must be in [1, {len(counts)}]")
    nonzero = np.flatnonzero(counts > 0)
    if len(nonzero) <= size:
        zeros = np.flatnonzero(counts == 0)
        fill = rng.choice(zeros, size=size - len(nonzero), replace=False)
        return np.concatenate([nonzero, fill]).astype(np.int64)
    p = counts[nonzero] / counts[nonzero].sum()
    return nonzero[rng.choice(len(nonzero), size=size, replace=False, p=p)]


def train_float_recording(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    rng: torch.Generator,
    *,
    lr: float = 0.01,
    batch_size: int = 128,
    record_every: int = 5,
    core_bits: tuple[int, ...] = SUPPORTED_BITS,
) -> np.ndarray:
    """Train the float model (Adam, CE) and record quantization misses along the way.

    Every ``record_every`` epochs (after the epoch), quantized copies at each of
    ``core_bits`` (activation ranges fixed on the first ``batch_size`` samples)
    classify every training sample. The code also records a 32-bit copy but drops it
    from the sum, so we do not record it.

    Parameters
    ----------
    model : nn.Module
        Float model, trained in place.
    x, y : torch.Tensor
        Training data ``(N, C, H, W)`` and labels ``(N,)``.
    epochs : int
        Training epochs (the code: 50).
    rng : torch.Generator
        Shuffling generator.
    lr, batch_size, record_every, core_bits
        Adam learning rate (default: 0.01), batch size (default: 128), recording period
        in epochs (default: 5), bit-widths of the copies (default: (2, 3, 4, 5, 8)).

    Returns
    -------
    np.ndarray
        Records ``(R, B, N)`` for ``count_misses``.
    """
    for b in core_bits:
        check_bits(b, SUPPORTED_BITS)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    records: list[np.ndarray] = []
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(y), generator=rng)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if epoch % record_every == 0 or (epoch == epochs and not records):
            model.eval()
            copies = [to_qcore(model, b, x[:batch_size]) for b in core_bits]
            records.append(record_misses(copies, x, y))
    model.eval()
    return np.stack(records)  # (R, B, N)


@torch.no_grad()
def _train_mode_recordings(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, recordings: int, batch_size: int,
    rng: torch.Generator,
) -> np.ndarray:
    """``(R, 1, N)`` correctness of train-mode forward passes over shuffled mini-batches.

    Train mode makes BatchNorm use batch statistics, so the shuffled batch composition
    is the only source of variation between passes (the code's forward-only "epochs").
    The code runs 50 passes and records every 5th; the passes in between change
    nothing (no weight update, and running statistics are not used in train mode), so
    we only run the recorded ones. Running statistics are restored afterwards.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    out = np.zeros((recordings, 1, len(y)), dtype=bool)
    for r in range(recordings):
        perm = torch.randperm(len(y), generator=rng)
        # Equal-sized chunks: a trailing 1-sample batch would break BatchNorm.
        for idx in perm.tensor_split(max(1, -(-len(y) // batch_size))):
            out[r, 0, idx.numpy()] = (model(x[idx]).argmax(dim=1) == y[idx]).numpy()
    model.load_state_dict(saved)
    model.train(was_training)
    return out


def update_core(
    model: nn.Module,
    core: tuple[torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor],
    rng: np.random.Generator,
    *,
    recordings: int = 10,
    batch_size: int = 32,
    never_learned_count: int = NEVER_LEARNED_COUNT,
    size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """QCore update for one stream batch (§4.5 step 2), keeping the core size fixed.

    Miss counting runs separately on the current core and on the new batch (as the
    code does, so each set's BatchNorm batches are drawn from itself), the two count
    vectors are pooled, and ``len(core)`` samples are re-drawn with ``sample_core``.
    Old samples compete with new ones, so they can stay (limits forgetting).

    Parameters
    ----------
    model : nn.Module
        The deployed quantized model (its bit-width only).
    core, new : tuple of torch.Tensor
        ``(x, y)`` of the current core and of the new stream batch.
    rng : np.random.Generator
        Drives the shuffles and the re-sampling.
    recordings, batch_size, never_learned_count
        Recorded forward passes per set (default: 10, the code's 50 passes / 5),
        mini-batch size of the passes (default: 32), count of never-correct samples
        (default: 50).
    size : int, optional
        Core size to draw (default: None, ``len(core)``; pass it to build a first
        core from an empty one).

    Returns
    -------
    tuple
        ``(x_core, y_core, samples_forwarded)``; the caller turns the last into FLOPs.
    """
    size = len(core[1]) if size is None else size
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    counts = [
        count_misses(_train_mode_recordings(model, xs, ys, recordings, batch_size, gen),
                     never_learned_count)
        for xs, ys in (core, new) if len(ys) > 0
    ]
    pool_x = torch.cat([core[0], new[0]])  # (size + M, C, H, W)
    pool_y = torch.cat([core[1], new[1]])
    idx = torch.from_numpy(sample_core(np.concatenate(counts), size, rng))
    return pool_x[idx], pool_y[idx], recordings * len(pool_y)
