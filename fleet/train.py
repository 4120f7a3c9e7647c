"""The local trainer: one flat loop of (quantization-aware) training on a device.

Loss per batch, as in QuaRC (Eq. 9) and ACS:

    L = L_KD(teacher, Q)             (soft-label CE at T = 1; plain CE without a teacher)
      + beta * sum_l KL(Q_l || F_l)  (cascaded layer correction, when beta > 0)
      + lambda(t) * R_b(W)           (QGT grid attraction, when lambda > 0)
      + mu/2 * ||w - w_global||^2    (FedProx proximal term, when mu > 0)

The frozen float reference F is the teacher (the papers' on-device optimum T = F).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fleet.config_schema import TrainConfig

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "train_local", "make_optimizer", "evaluate"]


@dataclass
class TrainResult:
    """What one call of :func:`train_local` did."""

    samples: int  # training samples seen, summed over epochs
    teacher_passes: int  # samples the teacher ran forward on
    steps: int
    loss: float  # mean loss of the last epoch
    kd_clc_ratio: float  # L_KD / (beta * L_CLC) on the first batch (nan when CLC is off)
    beta: float  # the CLC weight actually used


def make_optimizer(model: nn.Module, tc: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """Optimizer with the papers' groups (ACS code): activation step sizes at lr/10, weight decay on conv weights."""
    lr = tc.lr if lr is None else lr
    act_steps, decayed, rest = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "act_quant" in name:
            act_steps.append(p)
        elif p.ndim == 4:
            decayed.append(p)
        else:
            rest.append(p)
    groups = [
        {"params": decayed, "weight_decay": tc.weight_decay},
        {"params": rest, "weight_decay": 0.0},
        {"params": act_steps, "weight_decay": 0.0, "lr": lr / 10},
    ]
    groups = [g for g in groups if g["params"]]
    if tc.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=tc.momentum, nesterov=tc.momentum > 0)


def train_local(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    tc: TrainConfig,
    *,
    gen: torch.Generator,
    teacher: nn.Module | None = None,
    clc_layers: list[str] | None = None,
    qgt_bits: int = 32,
    prox_mu: float = 0.0,
    batch_size: int | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y) for ``tc.local_epochs`` epochs.

    Parameters
    ----------
    teacher : nn.Module, optional
        Frozen float reference: KD teacher, and CLC target when ``clc_layers`` is given.
    clc_layers : list of str, optional
        Block names to correct; CLC is off when None or ``tc.clc_beta == 0``.
    qgt_bits : int
        Target bit-width of the QGT regularizer (off at 32 or ``tc.qgt_lambda == 0``).
    max_steps : int, optional
        Cut training after this many steps (a straggler cut to fit its deadline).
    """
    from fleet import losses  # local: keeps the float-only path light to import

    bs = batch_size or tc.batch_size
    n = len(y)
    steps_per_epoch = math.ceil(n / bs)
    total_steps = steps_per_epoch * tc.local_epochs if max_steps is None else min(
        max_steps, steps_per_epoch * tc.local_epochs)
    use_clc = teacher is not None and bool(clc_layers) and tc.clc_beta != 0.0
    use_qgt = tc.qgt_lambda > 0 and qgt_bits < 32
    beta = 0.0 if not use_clc or tc.clc_beta == "auto" else float(tc.clc_beta)
    ratio = float("nan")
    if teacher is not None:
        teacher.eval()
    opt = make_optimizer(model, tc)
    prox_ref = [p.detach().clone() for p in model.parameters()] if prox_mu > 0 else None
    q_taps = losses.FeatureTaps(model, clc_layers) if use_clc else None
    f_taps = losses.FeatureTaps(teacher, clc_layers) if use_clc and teacher is not None else None
    model.train()
    step = samples = teacher_passes = 0
    epoch_loss = 0.0
    try:
        if q_taps is not None and f_taps is not None:
            q_taps.__enter__()
            f_taps.__enter__()
        for _epoch in range(tc.local_epochs):
            perm = torch.randperm(n, generator=gen)
            epoch_loss, batches = 0.0, 0
            for start in range(0, n, bs):
                if step >= total_steps:
                    break
                idx = perm[start:start + bs]
                xb, yb = x[idx], y[idx]  # (B, C, H, W), (B,)
                logits = model(xb)
                if teacher is not None and tc.kd:
                    with torch.no_grad():
                        t_logits = teacher(xb)
                    teacher_passes += len(idx)
                    loss = losses.kd_loss(logits, t_logits)
                else:
                    if use_clc:
                        with torch.no_grad():
                            teacher(xb)  # type: ignore[misc]
                        teacher_passes += len(idx)
                    loss = F.cross_entropy(logits, yb)
                if use_clc:
                    l_clc = losses.clc_loss(q_taps.features, f_taps.features, mapping=tc.clc_mapping)  # type: ignore[union-attr]
                    if step == 0:
                        if tc.clc_beta == "auto":
                            beta = losses.auto_beta(float(loss.detach()), float(l_clc.detach()), tc.clc_auto_ratio)
                        ratio = float(loss.detach()) / max(beta * float(l_clc.detach()), 1e-30)
                        log.info("CLC start: L_KD=%.4g beta*L_CLC=%.4g ratio L_KD/(beta*L_CLC)=%.3g",
                                 float(loss.detach()), beta * float(l_clc.detach()), ratio)
                    loss = loss + beta * l_clc
                if use_qgt:
                    from fleet import qgt

                    reg, _ = qgt.qgt_regularizer(model, qgt_bits, tc.qgt_form)
                    loss = loss + qgt.qgt_lambda(step, total_steps, tc.qgt_lambda, tc.qgt_warmup) * reg
                if prox_ref is not None:
                    prox = sum(((p - r) ** 2).sum() for p, r in zip(model.parameters(), prox_ref))
                    loss = loss + prox_mu / 2 * prox
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                samples += len(idx)
                epoch_loss += float(loss.detach())
                batches += 1
            epoch_loss /= max(batches, 1)
            if step >= total_steps:
                break
    finally:
        if q_taps is not None and f_taps is not None:
            q_taps.__exit__(None, None, None)
            f_taps.__exit__(None, None, None)
    return TrainResult(samples, teacher_passes, step, epoch_loss, ratio, beta)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y), in eval mode."""
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for s in range(0, len(y), batch_size):
        logits = model(x[s:s + batch_size])
        loss += float(F.cross_entropy(logits, y[s:s + batch_size], reduction="sum"))
        correct += int((logits.argmax(1) == y[s:s + batch_size]).sum())
    model.train(was_training)
    return correct / len(y), loss / len(y)
