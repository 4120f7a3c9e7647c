"""Plain PyTorch anchor of the benchmark recipes, written without any project code.

The benchmark compares edgefleet's accuracy with this module, which re-implements the
same recipe from scratch using only ``torch`` and ``numpy``: a small CNN, LSQ fake
quantization, float pre-training, QuaRC-style single-device QAT with a class-balanced
random coreset and knowledge distillation, and plain FedAvg of a quantized model.

All functions take already-loaded, standardised tensors (``x`` float32 ``(N, C, H, W)``,
``y`` int64 ``(N,)``) and, for FedAvg, a list of per-device index arrays, so the project
and the anchor see identical data. Nothing here imports ``fleet``, ``strategies`` or
``simulations``.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PlainCNN", "Lsq", "QConv", "QLinear", "quantize_plain", "train_float", "evaluate",
    "class_budgets", "balanced_random_coreset", "qat_single_device", "fedavg_plain",
]

_EPS = 1e-8
_INIT_SAMPLES = 256


class PlainCNN(nn.Module):
    """Three conv blocks and a linear head (state_dict keys equal the project's SmallCNN).

    Parameters
    ----------
    in_channels : int
        Number of input channels ``C``.
    num_classes : int
        Number of output classes.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.block1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.block2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.block3 = nn.ReLU()
        self.pool3 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for images ``x`` ``(N, C, H, W)``."""
        x = self.block1(self.bn1(self.conv1(x)))
        x = self.pool2(self.block2(self.bn2(self.conv2(x))))
        x = self.pool3(self.block3(self.bn3(self.conv3(x))))
        return self.classifier(self.flatten(x))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient in the backward pass."""
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``x`` unchanged in the forward pass with its gradient multiplied by ``scale``."""
    y = x * scale
    return (x - y).detach() + y


class Lsq(nn.Module):
    """LSQ fake quantizer with one learnable step (Esser et al., 2020).

    Parameters
    ----------
    bits : int
        Bit width; ``bits >= 32`` makes the quantizer the identity.
    signed : bool
        Signed range ``[-2^(b-1), 2^(b-1)-1]`` (weights) or unsigned ``[0, 2^b-1]``
        (post-ReLU activations).
    is_weight : bool
        Gradient-scale ``numel`` is the whole tensor for weights, features per sample
        for activations.

    Notes
    -----
    The step is initialised on the first training-mode forward as
    ``s = 2 * mean|x| / sqrt(Qp)``.
    """

    initialized: torch.Tensor  # buffer registered in __init__

    def __init__(self, bits: int, signed: bool, is_weight: bool = False) -> None:
        super().__init__()
        self.bits, self.signed, self.is_weight = bits, signed, is_weight
        if signed:
            self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        else:
            self.qmin, self.qmax = 0, 2**bits - 1
        self.step = nn.Parameter(torch.ones(1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, is_weight={self.is_weight}"

    @torch.no_grad()
    def init_step(self, x: torch.Tensor) -> None:
        """Set ``step = 2 * mean|x| / sqrt(Qp)`` and mark the quantizer initialised."""
        value = (2.0 * x.detach().abs().mean() / math.sqrt(self.qmax)).clamp_min(_EPS)
        self.step.copy_(value.reshape(1))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (initialising the step on the first training forward)."""
        if self.bits >= 32:
            return x
        if self.training and not bool(self.initialized):
            self.init_step(x)
        numel = x.numel() if (self.is_weight or x.ndim <= 1) else x[0].numel()
        s = grad_scale(self.step, 1.0 / math.sqrt(numel * self.qmax))
        return round_ste(torch.clamp(x / s, self.qmin, self.qmax)) * s


class QConv(nn.Conv2d):
    """``nn.Conv2d`` whose input (unsigned) and weight (signed) are LSQ-quantized."""

    def __init__(self, conv: nn.Conv2d, wbits: int, abits: int) -> None:
        # torch types the stored sizes as tuple[int, ...]; Conv2d's __init__ wants int | tuple[int, int]
        super().__init__(conv.in_channels, conv.out_channels,
                         conv.kernel_size, conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                         conv.groups, conv.bias is not None, conv.padding_mode)
        self.load_state_dict(conv.state_dict())
        self.act_q = Lsq(abits, signed=False)
        self.weight_q = Lsq(wbits, signed=True, is_weight=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve the quantized input with the quantized weight."""
        return self._conv_forward(self.act_q(x), self.weight_q(self.weight), self.bias)


class QLinear(nn.Linear):
    """``nn.Linear`` whose input (unsigned) and weight (signed) are LSQ-quantized."""

    def __init__(self, linear: nn.Linear, wbits: int, abits: int) -> None:
        super().__init__(linear.in_features, linear.out_features, linear.bias is not None)
        self.load_state_dict(linear.state_dict())
        self.act_q = Lsq(abits, signed=False)
        self.weight_q = Lsq(wbits, signed=True, is_weight=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the linear map with quantized input and weight."""
        return F.linear(self.act_q(x), self.weight_q(self.weight), self.bias)


def quantize_plain(fp_model: PlainCNN, wbits: int, abits: int) -> nn.Module:
    """Return a deep copy of ``fp_model`` with ``conv2`` and ``conv3`` LSQ-quantized.

    ``conv1`` and ``classifier`` stay in float (first and last layers, as in ACS). When
    both bit widths are ``>= 32`` a plain float copy is returned.
    """
    model = copy.deepcopy(fp_model)
    if wbits >= 32 and abits >= 32:
        return model
    model.conv2 = QConv(model.conv2, wbits, abits)
    model.conv3 = QConv(model.conv3, wbits, abits)
    return model


def _seeded_generator(*keys: int) -> torch.Generator:
    """Return a ``torch.Generator`` seeded deterministically from integer ``keys``."""
    seed = int(np.random.default_rng(list(keys)).integers(2**62))
    return torch.Generator().manual_seed(seed)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffle ``range(n)`` with ``gen`` and split it into batches (last one may be short)."""
    return list(torch.randperm(n, generator=gen).split(batch_size))


def train_float(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                epochs: int, lr: float, batch_size: int, seed: int) -> None:
    """Train ``model`` in place with Adam, per-step cosine lr decay and cross-entropy.

    Parameters
    ----------
    model : nn.Module
        Model to train (modified in place).
    x, y : torch.Tensor
        Training images ``(N, C, H, W)`` and labels ``(N,)``.
    epochs, lr, batch_size, seed : int, float, int, int
        Epochs, initial lr (cosine-decayed per step to 0), batch size, shuffling seed.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    total = max(1, epochs * math.ceil(len(y) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    model.train()
    for _ in range(epochs):
        for idx in _batches(len(y), batch_size, gen):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Return the accuracy of ``model`` on ``(x, y)`` in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(y), batch_size):
        pred = model(x[start:start + batch_size]).argmax(1)
        correct += int((pred == y[start:start + batch_size]).sum())
    return correct / max(1, len(y))


def class_budgets(counts: np.ndarray, fraction: float) -> np.ndarray:
    """Split ``max(1, round(fraction * N))`` (Python's half-to-even round) over classes.

    Largest remainder: each class gets ``floor(fraction * n_c)``; the leftover units go to
    the classes with the largest fractional parts, ties by class position (lower first).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = max(1, int(round(fraction * int(counts.sum()))))
    raw = fraction * counts.astype(np.float64)
    shares = np.floor(raw).astype(np.int64)
    order = sorted(range(len(counts)), key=lambda c: (-(raw[c] - shares[c]), c))
    for c in order[: max(0, total - int(shares.sum()))]:
        shares[c] += 1
    return np.minimum(shares, counts)


def balanced_random_coreset(y: torch.Tensor | np.ndarray, fraction: float,
                            rng: np.random.Generator) -> np.ndarray:
    """Draw a class-balanced uniform random coreset.

    Parameters
    ----------
    y : torch.Tensor or np.ndarray
        Labels ``(N,)``.
    fraction : float
        Fraction of the data to keep; the budget is split by :func:`class_budgets`.
    rng : np.random.Generator
        Source of randomness (each class's share is drawn without replacement).

    Returns
    -------
    np.ndarray
        Sorted int64 indices into ``y``.
    """
    labels = y.cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    classes, counts = np.unique(labels, return_counts=True)
    picks = []
    for cls, share in zip(classes, class_budgets(counts, fraction)):
        members = np.flatnonzero(labels == cls)
        picks.append(rng.choice(members, size=int(share), replace=False))
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _select(y: torch.Tensor, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """All indices when ``fraction >= 1``, else a balanced random coreset."""
    if fraction >= 1.0:
        return np.arange(len(y), dtype=np.int64)
    return balanced_random_coreset(y, fraction, rng)


def _coreset_size(n: int, fraction: float) -> int:
    """Size of the coreset :func:`_select` returns for ``n`` samples."""
    return n if fraction >= 1.0 else max(1, int(round(fraction * n)))


def _init_quantizers(model: nn.Module, x: torch.Tensor, seed: int) -> None:
    """Initialise LSQ steps with one train-mode forward of 256 samples, keeping BN stats.

    The samples are the first 256 of a permutation of ``x`` seeded by ``seed``.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [copy.deepcopy(bn.state_dict()) for bn in bns]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:_INIT_SAMPLES]
    model.train()
    with torch.no_grad():
        model(x[idx])
    for bn, state in zip(bns, saved):
        bn.load_state_dict(state)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy from the teacher at temperature 1 (no hard-label term)."""
    soft = F.softmax(teacher_logits, dim=1)
    return -(soft * F.log_softmax(student_logits, dim=1)).sum(1).mean()


def _kd_step(student: nn.Module, teacher: nn.Module, opt: torch.optim.Optimizer,
             xb: torch.Tensor) -> None:
    """One optimizer step of KD from the frozen ``teacher`` on batch ``xb``."""
    with torch.no_grad():
        target = teacher(xb)
    loss = kd_loss(student(xb), target)
    opt.zero_grad()
    loss.backward()
    opt.step()


def qat_single_device(
    fp_model: PlainCNN, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
    wbits: int, abits: int, epochs: int, reselect_every: int, fraction: float, lr: float, batch_size: int, seed: int,
) -> dict:
    """QuaRC Algorithm 1 with a class-balanced random coreset and KD from ``fp_model``.

    One Adam over all parameters (weights, BN, LSQ steps) with per-step cosine decay over
    all steps; a new coreset every ``reselect_every`` epochs (``fraction >= 1``: all data).

    Returns
    -------
    dict
        ``{"accuracy": final test accuracy, "steps": optimizer steps,
        "coreset_size": coreset size}``.
    """
    teacher = copy.deepcopy(fp_model).eval()
    student = quantize_plain(fp_model, wbits, abits)
    _init_quantizers(student, x, seed)
    size = _coreset_size(len(y), fraction)
    total = max(1, epochs * math.ceil(size / batch_size))
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    steps, subset = 0, np.arange(0)
    for epoch in range(epochs):
        if epoch % max(1, reselect_every) == 0:
            subset = _select(y, fraction, rng)
        student.train()
        for b in _batches(len(subset), batch_size, gen):
            _kd_step(student, teacher, opt, x[torch.from_numpy(subset[b.numpy()])])
            sched.step()
            steps += 1
    return {"accuracy": evaluate(student, x_test, y_test), "steps": steps, "coreset_size": size}


def _local_update(global_model: nn.Module, teacher: nn.Module, x: torch.Tensor,
                  y: torch.Tensor, part: np.ndarray, *, fraction: float, epochs: int,
                  lr: float, batch_size: int, keys: tuple[int, int, int]) -> dict:
    """Train a copy of ``global_model`` on device ``part``; return its state_dict."""
    model = copy.deepcopy(global_model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    part = np.asarray(part, dtype=np.int64)
    subset = part[_select(y[torch.from_numpy(part)], fraction, np.random.default_rng(list(keys)))]
    gen = _seeded_generator(*keys, 1)
    model.train()
    for _ in range(epochs):
        for b in _batches(len(subset), batch_size, gen):
            _kd_step(model, teacher, opt, x[torch.from_numpy(subset[b.numpy()])])
    return model.state_dict()


def average_states(states: list[dict], weights: list[float]) -> dict:
    """Weighted average of every floating-point entry; other entries copied from the first."""
    total = float(sum(weights))
    out: dict = {}
    for key, first in states[0].items():
        if not torch.is_floating_point(first):
            out[key] = first.clone()
            continue
        out[key] = sum(s[key] * (w / total) for s, w in zip(states, weights))
    return out


def fedavg_plain(
    fp_model: PlainCNN, parts: list[np.ndarray], x: torch.Tensor, y: torch.Tensor,
    x_test: torch.Tensor, y_test: torch.Tensor, *, wbits: int, abits: int, rounds: int, per_round: int,
    local_epochs: int, fraction: float, lr: float, batch_size: int, seed: int,
) -> list[float]:
    """Plain FedAvg of a quantized copy of ``fp_model`` with local KD on random coresets.

    Each round samples ``per_round`` devices (``np.random.default_rng([seed, round])``);
    each trains a copy of the global model with a fresh constant-lr Adam on a new
    class-balanced random coreset of its data; the server averages every floating-point
    state entry weighted by the device's local data size ``len(part)``.

    Returns
    -------
    list of float
        Central test accuracy after each round (length ``rounds``).
    """
    teacher = copy.deepcopy(fp_model).eval()
    global_model = quantize_plain(fp_model, wbits, abits)
    _init_quantizers(global_model, x, seed)
    history: list[float] = []
    for rnd in range(rounds):
        chosen = np.random.default_rng([seed, rnd]).choice(len(parts), size=min(per_round, len(parts)), replace=False)
        states, weights = [], []
        for dev in chosen:
            if len(parts[int(dev)]) == 0:
                continue  # an empty device contributes nothing (weight 0)
            states.append(_local_update(global_model, teacher, x, y, parts[int(dev)], fraction=fraction,
                                        epochs=local_epochs, lr=lr, batch_size=batch_size, keys=(seed, rnd, int(dev))))
            weights.append(float(len(parts[int(dev)])))
        if states:
            global_model.load_state_dict(average_states(states, weights))
        history.append(evaluate(global_model, x_test, y_test))
    return history
