"""A device's data stream with drift: covariate shift, label shift, or both.

The local data is cut into ``tasks`` batches that arrive one after another (the code
reads the target subject's data in ``len(train) // tasks`` batches, §4.1). Drift grows
with the task index ``t``: its level is ``s = severity * t / (tasks - 1)`` (0 for the
first task).

* ``rotation``: every image of task t is rotated by ``45 * s`` degrees.
* ``contrast``: pixel deviations from the image mean are scaled by ``1 - 0.6 * s``.
* ``noise``: additive Gaussian noise with std ``0.3 * s``.
* ``covariate``: the three together (rotation, then contrast, then noise).
* ``label``: class proportions move along a path from the local proportions to a
  Dirichlet(0.5) draw, ``p_t = (1 - s) p_local + s p_end``; task batches are drawn
  without replacement from the remaining pool with those proportions.
* ``both``: label shift, then covariate shift.

Examples
--------
>>> x, y = torch.rand(40, 1, 8, 8), torch.arange(40) % 4
>>> [len(b[1]) for b in make_stream(x, y, 4, "noise", np.random.default_rng(0))]
[10, 10, 10, 10]
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DRIFTS", "make_stream", "rotate", "apply_covariate"]

MAX_ROTATION_DEG = 45.0
MIN_CONTRAST = 0.4
MAX_NOISE_STD = 0.3
LABEL_END_ALPHA = 0.5


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate a batch ``(N, C, H, W)`` about the centre (bilinear, zero padding)."""
    if degrees == 0.0:
        return x
    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                         dtype=x.dtype).expand(len(x), 2, 3)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, align_corners=False)


def _contrast(x: torch.Tensor, level: float) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (N, 1, 1, 1)
    return mean + (1.0 - (1.0 - MIN_CONTRAST) * level) * (x - mean)


def _noise(x: torch.Tensor, level: float, gen: torch.Generator) -> torch.Tensor:
    return x + MAX_NOISE_STD * level * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def apply_covariate(
    x: torch.Tensor, kinds: tuple[str, ...], level: float, gen: torch.Generator
) -> torch.Tensor:
    """Apply the named covariate shifts (subset of rotation/contrast/noise) at ``level``."""
    if level == 0.0:
        return x  # the first task is the undrifted distribution, bit for bit
    if "rotation" in kinds:
        x = rotate(x, MAX_ROTATION_DEG * level)
    if "contrast" in kinds:
        x = _contrast(x, level)
    if "noise" in kinds:
        x = _noise(x, level, gen)
    return x


def _label_shift_order(
    y: np.ndarray, tasks: int, severity: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Index batches whose class proportions drift along a Dirichlet path."""
    classes = np.unique(y)
    pools = {c: list(rng.permutation(np.flatnonzero(y == c))) for c in classes}
    p_start = np.array([len(pools[c]) for c in classes], dtype=np.float64) / len(y)
    p_end = rng.dirichlet(np.full(len(classes), LABEL_END_ALPHA))
    per_task = len(y) // tasks
    batches = []
    for t in range(tasks):
        s = min(1.0, severity * t / max(tasks - 1, 1))
        p = (1 - s) * p_start + s * p_end
        idx = []
        for _ in range(per_task):
            avail = np.array([len(pools[c]) > 0 for c in classes])
            q = p * avail
            # A drained class is skipped; if the path only wants drained classes, fall
            # back to whatever remains so the batch size stays fixed.
            q = q / q.sum() if q.sum() > 0 else avail / avail.sum()
            idx.append(pools[classes[rng.choice(len(classes), p=q)]].pop())
        batches.append(np.array(idx, dtype=np.int64))
    return batches


DRIFTS: dict[str, tuple[bool, tuple[str, ...]]] = {
    # name: (label shift?, covariate kinds)
    "covariate": (False, ("rotation", "contrast", "noise")),
    "rotation": (False, ("rotation",)),
    "contrast": (False, ("contrast",)),
    "noise": (False, ("noise",)),
    "label": (True, ()),
    "both": (True, ("rotation", "contrast", "noise")),
}


def make_stream(
    x: torch.Tensor,
    y: torch.Tensor,
    tasks: int,
    drift: str,
    rng: np.random.Generator,
    severity: float = 1.0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut ``(x, y)`` into ``tasks`` drifting batches ``[(x_t, y_t), ...]``.

    Parameters
    ----------
    x, y : torch.Tensor
        Local data ``(N, C, H, W)`` and labels ``(N,)``.
    tasks : int
        Number of stream batches (each ``N // tasks`` samples; the remainder is unused).
    drift : str
        One of ``DRIFTS``.
    rng : np.random.Generator
        Drives the order, the label path and the noise.
    severity : float
        Drift level reached at the last task (default: 1.0).
    """
    if drift not in DRIFTS:
        raise ValueError(f"unknown drift '{drift}'; valid: {', '.join(DRIFTS)}")
    if not 1 <= tasks <= len(y):
        raise ValueError(f"tasks must be in [1, {len(y)}], got {tasks}")
    label_shift, kinds = DRIFTS[drift]
    if label_shift:
        order = _label_shift_order(y.numpy(), tasks, severity, rng)
    else:
        perm = rng.permutation(len(y))
        per_task = len(y) // tasks
        order = [perm[t * per_task : (t + 1) * per_task] for t in range(tasks)]
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    stream = []
    for t, idx in enumerate(order):
        level = severity * t / max(tasks - 1, 1)
        idx_t = torch.from_numpy(idx)
        stream.append((apply_covariate(x[idx_t], kinds, level, gen), y[idx_t]))
    return stream
