"""The local trainer: one flat loop of (quantization-aware) training on a device.

``train.qgt-mode = "qat"`` (default) trains the fake-quantized model (LSQ, STE); ``"ptq"``
(QGT's own mode, docs/methods.md (QGT)) trains the same model with its quantizers switched
off, in float, and rounds it to nearest at the end (``fleet.quant.ptq``).

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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fleet.config.schema import TrainConfig
from fleet.quant import ptq
from fleet.quant.convert import quant_layers
from fleet.train.schedule import lr_factor, progress

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "Schedule", "train_local", "make_optimizer", "evaluate", "evaluate_predictions",
           "optimizer_state", "load_optimizer_state", "OPT_PREFIX"]

OPT_PREFIX = "opt."  # device-state keys of the optimizer's state


@dataclass
class TrainResult:
    """What one call of :func:`train_local` did."""

    samples: int  # training samples seen, summed over epochs
    teacher_passes: int  # samples the teacher ran forward on
    steps: int
    loss: float  # mean loss of the last epoch
    kd_clc_ratio: float  # L_KD / (beta * L_CLC) on the first batch (nan when CLC is off)
    beta: float  # the CLC weight actually used
    opt_state: dict[str, np.ndarray] | None = None  # the optimizer's state, when asked to keep it


def make_optimizer(model: nn.Module, tc: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """Optimizer with the papers' groups: activation step sizes at ``lr * train.act-step-lr-scale`` (ACS's
    code: 0.1; default 1.0, see docs/quantization.md), weight decay on conv weights."""
    lr = tc.lr if lr is None else lr
    act_ids = {id(p) for layer in quant_layers(model).values() for p in layer.act_quant.parameters()}
    act_steps, decayed, rest = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in act_ids:
            act_steps.append(p)
        elif p.ndim == 4:
            decayed.append(p)
        else:
            rest.append(p)
    groups = [
        {"params": decayed, "weight_decay": tc.weight_decay},
        {"params": rest, "weight_decay": 0.0},
        {"params": act_steps, "weight_decay": 0.0, "lr": lr * tc.act_step_lr_scale},
    ]
    groups = [g for g in groups if g["params"]]
    if tc.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=tc.momentum, nesterov=tc.momentum > 0)


@dataclass(frozen=True)
class Schedule:
    """The learning rate of one :func:`train_local` call: base rate, shape, and the share of the job it covers."""

    lr: float
    shape: str = "constant"
    window: tuple[float, float] = (0.0, 1.0)


BatchHook = Callable[[torch.Tensor, torch.Tensor], None]  # (indices into x, correct) after each batch


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
    schedule: Schedule | None = None,
    opt_state: dict[str, np.ndarray] | None = None,
    on_batch: BatchHook | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x, y) for ``tc.local_epochs`` epochs, with one optimizer and one schedule.

    With ``tc.qgt_mode == "ptq"`` a model with quantizers trains in float and is then quantized by
    round-to-nearest (weights) and calibrated on the first samples of ``x`` (activations).

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
    schedule : Schedule, optional
        Rate, shape and job window (default: ``tc.lr``, ``tc.lr_schedule``, the whole job).
    opt_state : dict of str to np.ndarray, optional
        Optimizer state to continue from (``train.optimizer-state = "device"``); the new state is returned.
    on_batch : callable, optional
        Called after each step with the batch's indices into ``x`` and whether the model classified
        each correctly (what the forgetting selector records).
    """
    schedule = schedule or Schedule(tc.lr, tc.lr_schedule)
    bs = batch_size or tc.batch_size
    n = len(y)
    planned = math.ceil(n / bs) * tc.local_epochs
    total_steps = planned if max_steps is None else min(max_steps, planned)
    loss_fn = _LossFn(model, tc, teacher, clc_layers, qgt_bits, prox_mu, total_steps)
    opt = make_optimizer(model, tc, schedule.lr)
    if opt_state:
        load_optimizer_state(opt, opt_state)
    base_lrs = [g["lr"] for g in opt.param_groups]
    model.train()
    step = samples = 0
    epoch_loss = 0.0
    in_float = tc.qgt_mode == "ptq" and ptq.has_quantizers(model)
    with loss_fn, ptq.float_training(model, enabled=in_float):
        for _epoch in range(tc.local_epochs):
            perm = torch.randperm(n, generator=gen)
            epoch_loss, batches = 0.0, 0
            for start in range(0, min(n, (total_steps - step) * bs), bs):
                idx = perm[start:start + bs]
                factor = lr_factor(schedule.shape, progress(schedule.window, step, planned))
                for g, base in zip(opt.param_groups, base_lrs):
                    g["lr"] = base * factor
                logits, loss = loss_fn(x[idx], y[idx], step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if on_batch is not None:
                    on_batch(idx, logits.detach().argmax(1) == y[idx])
                step += 1
                samples += len(idx)
                epoch_loss += float(loss.detach())
                batches += 1
            epoch_loss /= max(batches, 1)
            if step >= total_steps:
                break
    if in_float and step:
        ptq.post_training_quantize(model, x[:ptq.CALIBRATION_SAMPLES], tc.ptq_step)
    state = optimizer_state(opt) if opt_state is not None else None
    return TrainResult(samples, loss_fn.teacher_passes, step, epoch_loss, loss_fn.ratio, loss_fn.beta, state)


class _LossFn:
    """The per-batch loss of module docstring's formula; a context manager holding the CLC feature taps."""

    def __init__(self, model: nn.Module, tc: TrainConfig, teacher: nn.Module | None,
                 clc_layers: list[str] | None, qgt_bits: int, prox_mu: float, total_steps: int) -> None:
        from fleet.train import losses  # local: keeps the float-only path light to import

        self.model, self.tc, self.teacher, self.qgt_bits, self.prox_mu = model, tc, teacher, qgt_bits, prox_mu
        self.total_steps = total_steps
        self.use_clc = teacher is not None and bool(clc_layers) and tc.clc_beta != 0.0
        self.use_qgt = tc.qgt_lambda > 0 and qgt_bits < 32
        # ptq: pull toward round-to-nearest's grid, not the (unused) LSQ step
        self.ptq_step = tc.ptq_step if tc.qgt_mode == "ptq" else None
        self.beta = 0.0 if not self.use_clc or tc.clc_beta == "auto" else float(tc.clc_beta)
        self.ratio = float("nan")
        self.teacher_passes = 0
        self.prox_ref = [p.detach().clone() for p in model.parameters()] if prox_mu > 0 else None
        self.q_taps: losses.FeatureTaps | None = None
        self.f_taps: losses.FeatureTaps | None = None
        if self.use_clc:
            assert teacher is not None and clc_layers is not None  # implied by use_clc
            self.q_taps = losses.FeatureTaps(model, clc_layers)
            self.f_taps = losses.FeatureTaps(teacher, clc_layers)
        if teacher is not None:
            teacher.eval()

    def __enter__(self) -> _LossFn:
        if self.q_taps is not None and self.f_taps is not None:
            self.q_taps.__enter__()
            self.f_taps.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.q_taps is not None and self.f_taps is not None:
            self.q_taps.__exit__(None, None, None)
            self.f_taps.__exit__(None, None, None)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, loss) of one batch."""
        from fleet.train import losses
        logits = self.model(xb)
        if self.teacher is not None and (self.tc.kd or self.use_clc):
            with torch.no_grad():
                t_logits = self.teacher(xb)
            self.teacher_passes += len(yb)
        loss = losses.kd_loss(logits, t_logits) if self.teacher is not None and self.tc.kd else (
            F.cross_entropy(logits, yb))
        if self.use_clc:
            loss = loss + self._clc(loss, step)
        if self.use_qgt:
            from fleet.train import qgt
            reg, _ = qgt.qgt_regularizer(self.model, self.qgt_bits, self.tc.qgt_form, ptq_step=self.ptq_step)
            loss = loss + qgt.qgt_lambda(step, self.total_steps, self.tc.qgt_lambda, self.tc.qgt_warmup) * reg
        if self.prox_ref is not None:
            prox = sum(((p - r) ** 2).sum() for p, r in zip(self.model.parameters(), self.prox_ref))
            loss = loss + self.prox_mu / 2 * prox
        return logits, loss

    def _clc(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        from fleet.train import losses
        l_clc = losses.clc_loss(self.q_taps.features, self.f_taps.features,  # type: ignore[union-attr]
                                mapping=self.tc.clc_mapping)
        if step == 0:
            if self.tc.clc_beta == "auto":
                self.beta = losses.auto_beta(float(loss.detach()), float(l_clc.detach()), self.tc.clc_auto_ratio)
            self.ratio = float(loss.detach()) / max(self.beta * float(l_clc.detach()), 1e-30)
            log.info("CLC start: L_KD=%.4g beta*L_CLC=%.4g ratio L_KD/(beta*L_CLC)=%.3g",
                     float(loss.detach()), self.beta * float(l_clc.detach()), self.ratio)
        return self.beta * l_clc


def optimizer_state(opt: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """The optimizer's per-parameter state as flat numpy arrays (``opt.<param>.<name>``)."""
    out: dict[str, np.ndarray] = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{OPT_PREFIX}{i}.{k}"] = torch.as_tensor(v).detach().cpu().numpy().copy()
    return out


def load_optimizer_state(opt: torch.optim.Optimizer, flat: dict[str, np.ndarray]) -> None:
    """Continue ``opt`` from :func:`optimizer_state`'s arrays (keys of other prefixes are ignored)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in flat.items():
        if not key.startswith(OPT_PREFIX):
            continue
        i, _, name = key[len(OPT_PREFIX):].partition(".")
        state.setdefault(int(i), {})[name] = torch.from_numpy(np.array(v))
    if state:
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on (x, y), in eval mode."""
    acc, loss, _ = evaluate_predictions(model, x, y, batch_size)
    return acc, loss


@torch.no_grad()
def evaluate_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         batch_size: int = 512) -> tuple[float, float, torch.Tensor]:
    """(accuracy, mean cross-entropy, predicted classes) of ``model`` on (x, y), in eval mode."""
    if len(y) == 0:
        return float("nan"), float("nan"), torch.zeros(0, dtype=torch.long)
    was_training = model.training
    model.eval()
    loss, preds = 0.0, []
    for s in range(0, len(y), batch_size):
        logits = model(x[s:s + batch_size])
        loss += float(F.cross_entropy(logits, y[s:s + batch_size], reduction="sum"))
        preds.append(logits.argmax(1))
    model.train(was_training)
    pred = torch.cat(preds)
    return int((pred == y).sum()) / len(y), loss / len(y), pred
