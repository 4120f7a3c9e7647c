"""QCore continual calibration: off-device deployment and one device's stream loop.

``deploy`` is the off-device part (docs/methods.md (Quantization misses and the core)): quantize the float model,
BP-calibrate it on the QCore, and train the BFNs on recorded (activation, code-change
sign) pairs. ``run_device_stream`` is the on-device part (§4.5): for every stream
batch, (1) update the core (QCore: forward-only miss counting and re-sampling at a fixed
size; random: uniform re-sampling of old core + new batch; fixed: no update),
(2) calibrate (``CALIBRATIONS``), (3) evaluate.

Order. The code flips *before* updating the core; we update the core first so the
calibration of task t can already use task t's data, then evaluate on the held-out
``holdout`` fraction of task t (never used for core or calibration), on the original
(undrifted) test data (forgetting) and on the core.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fleet.hardware.flops import model_flops
from fleet.qcore.bfn import BFN, BFNSet, FlipPair, fit_bfns
from fleet.qcore.calibrate import (
    CALIBRATIONS,
    CODE_OPTIMIZERS,
    CORE_POLICY,
    CalibrationContext,
    backprop_calibrate,
    build_calibration,
    code_snapshot,
    codes_changed,
    record_flip_pairs,
)
from fleet.qcore.misses import update_core
from fleet.qcore.quant import SUPPORTED_BITS
from fleet.qcore.stream import DRIFTS, make_stream

log = logging.getLogger(__name__)

__all__ = ["ContinualConfig", "TaskMetrics", "Deployment", "deploy", "run_device_stream"]

Core = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class ContinualConfig:
    """Settings of one device's continual calibration (keys ``stream.<kebab-name>``).

    Parameters
    ----------
    tasks : int
        Stream batches (default: 10, the code's ``--tasks``).
    drift : str
        One of ``stream.DRIFTS`` (default: "covariate").
    severity : float
        Drift level at the last task (default: 1.0).
    core_size : int
        QCore size (default: 20, the code's).
    bits : int
        Deployed weight/activation bits (default: 4).
    calibration : str
        One of ``CALIBRATIONS`` (default: "bfn").
    core_bits : tuple of int
        Bit-widths whose misses build the initial QCore (default: (2, 3, 4, 5, 8)).
    epochs : int
        BP epochs per stream batch (default: 10; the code: 50).
    lr : float
        BP Adam learning rate of biases/norm parameters (default: 0.01).
    code_lr : float
        BP learning rate of the latent codes (``code_optimizer``'s), in steps (default: 0.01).
    batch_size : int
        BP batch size on the core (default: 128, the code's; a 20-sample core is one batch).
    codes_only : bool
        BP trains the codes alone, not biases and norm parameters (default: False).
    code_optimizer : str
        Optimiser of the latent codes, a key of ``calibrate.CODE_OPTIMIZERS`` (default: "adam").
    recordings : int
        Recorded forward passes per core update (default: 10; the code: 50 passes / 5).
    count_batch_size : int
        Mini-batch size of the miss-counting forward passes (default: 32).
    holdout : float
        Fraction of each task batch held out for ``accuracy_task`` (default: 0.25).
    """

    tasks: int = 10
    drift: str = "covariate"
    severity: float = 1.0
    core_size: int = 20
    bits: int = 4
    calibration: str = "bfn"
    core_bits: tuple[int, ...] = SUPPORTED_BITS
    epochs: int = 10
    lr: float = 0.01
    code_lr: float = 0.01
    batch_size: int = 128
    codes_only: bool = False
    code_optimizer: str = "adam"
    recordings: int = 10
    count_batch_size: int = 32
    holdout: float = 0.25

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"stream.bits: {self.bits} not in {SUPPORTED_BITS}")
        if bad := [b for b in self.core_bits if b not in SUPPORTED_BITS]:
            raise ValueError(f"stream.core-bits: {bad} not in {SUPPORTED_BITS}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"stream.calibration: '{self.calibration}' not in {list(CALIBRATIONS)}")
        if self.code_optimizer not in CODE_OPTIMIZERS:
            raise ValueError(f"stream.code-optimizer: '{self.code_optimizer}' not in {list(CODE_OPTIMIZERS)}")
        if self.drift not in DRIFTS:
            raise ValueError(f"stream.drift: '{self.drift}' not in {list(DRIFTS)}")
        if self.tasks < 1 or self.core_size < 1 or self.epochs < 0 or self.recordings < 1 or self.batch_size < 1:
            raise ValueError("stream.tasks, core-size, recordings, calibration-batch must be >= 1, epochs >= 0")
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"stream.holdout: {self.holdout} must be in (0, 1)")

    def check_local_data(self, n_local: int) -> None:
        """Raise if the device's data cannot feed this stream."""
        if self.core_size > n_local:
            raise ValueError(f"stream.core-size: {self.core_size} > local data ({n_local} samples)")
        per_task = n_local // self.tasks
        if per_task - int(np.ceil(self.holdout * per_task)) < 1:
            raise ValueError(f"stream.tasks: {self.tasks} tasks leave no training samples "
                             f"per task from {n_local} local samples")


@dataclass(frozen=True)
class TaskMetrics:
    """What one device reports after stream task ``task`` (accuracies in [0, 1]).

    All accuracies are measured *after* that task's core update and calibration:
    ``accuracy_task`` on the held-out part of the task's batch, ``accuracy_original``
    on the original test data (forgetting), ``accuracy_core`` on the current core.
    ``flops = flops_core + flops_calibration``; ``wall_s`` covers both (not evaluation). ``codes_changed`` is the
    fraction of the model's integer codes this task's calibration moved.
    """

    task: int
    accuracy_task: float
    accuracy_original: float
    accuracy_core: float
    flops: int
    flops_core: int
    flops_calibration: int
    wall_s: float
    codes_changed: float = 0.0


@dataclass
class Deployment:
    """Products of the off-device phase: the calibrated model, its QCore, the BFNs."""

    model: nn.Module
    core: Core
    bfns: BFNSet | None
    #: per layer: the fit's MSE, the share of its targets that are non-zero (the MSE of predicting no flip), and
    #: the share of the BFN's outputs on its training pairs that round to a flip
    fit: dict[str, dict[str, float]] = field(default_factory=dict)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    if len(y) == 0:
        return float("nan")
    hits = sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
               for i in range(0, len(y), batch))
    return hits / len(y)


def deploy(
    qmodel: nn.Module,
    core: Core,
    cfg: ContinualConfig,
    episodes: list[Core],
    gen: torch.Generator,
    *,
    init_epochs: int = 50,
    bfn_steps: int = 150,
    init_code_lr: float = 0.01,
    with_bfns: bool = True,
) -> Deployment:
    """Off-device: BP-calibrate ``qmodel`` on the QCore, then train BFNs.

    Parameters
    ----------
    qmodel : nn.Module
        Model from ``to_qcore`` at ``cfg.bits`` (activation ranges already fixed).
    core : tuple of torch.Tensor
        The initial QCore ``(x, y)``.
    cfg : ContinualConfig
        Uses ``epochs``, ``lr``, ``code_lr``, ``batch_size``, ``codes_only`` and ``code_optimizer`` (the
        on-device BP the BFN imitates); the initial calibration also uses ``lr`` and ``batch_size`` (a smaller
        batch means more initial steps: 350 instead of 100 for a 200-sample core at batch 32).
    episodes : list of cores
        Extra ``(x, y)`` cores (e.g. simulated shifts of public data) on which BP runs
        from the deployed state to give the BFNs varied training pairs. The code's
        intent only has the initial calibration; one trajectory is too few pairs.
    gen : torch.Generator
        Drives BFN training order.
    init_epochs, bfn_steps
        Initial BP calibration epochs (default: 50, the code's) and BFN fitting
        steps per layer (default: 150).
    init_code_lr : float
        Code learning rate of the initial calibration (default: 0.01). Kept apart
        from ``cfg.code_lr``: 50 epochs at 0.05 on the 20 hardest samples cost a
        W4 CNN 40 points of test accuracy in our benchmark.
    with_bfns : bool
        Train BFNs (default: True); the deployed model is the same either way, so
        all calibration methods can share one deployment.
    """
    model = copy.deepcopy(qmodel)
    ff = model_flops(model, tuple(core[0].shape[1:]), matmul_only=True)
    backprop_calibrate(model, *core, CalibrationContext(ff, epochs=init_epochs, lr=cfg.lr, code_lr=init_code_lr,
                                                        batch_size=cfg.batch_size))
    if not with_bfns:
        return Deployment(model, core, None)
    bfns = BFNSet(model)
    bfns.set_reference(model, core[0])
    pairs: dict[str, list[FlipPair]] = {n: [] for n in bfns.names}
    ctx = CalibrationContext(ff, epochs=cfg.epochs, lr=cfg.lr, code_lr=cfg.code_lr, batch_size=cfg.batch_size,
                             codes_only=cfg.codes_only, code_optimizer=cfg.code_optimizer)
    for ex, ey in [core, *episodes]:
        for n, p in record_flip_pairs(copy.deepcopy(model), ex, ey, ctx, bfns).items():
            pairs[n].extend(p)
    bfn_loss = fit_bfns(bfns, pairs, gen, steps=bfn_steps)
    fit = {n: {"mse": loss, **_flip_shares(bfns[n], pairs[n])} for n, loss in bfn_loss.items()}
    log.info("BFN fit per layer: %s", fit)
    return Deployment(model, core, bfns, fit)


@torch.no_grad()
def _flip_shares(net: BFN, pairs: list[FlipPair]) -> dict[str, float]:
    """Shares of non-zero targets and of flips the fitted BFN predicts, over a layer's training pairs."""
    targets = flips = total = 0
    for feats, codes, target in pairs:
        targets += int(target.ne(0).sum())
        flips += int(net.step(feats, codes).ne(0).sum())
        total += target.numel()
    return {"targets_nonzero": targets / max(1, total), "flips_predicted": flips / max(1, total)}


def run_device_stream(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    cfg: ContinualConfig,
    rng: np.random.Generator,
    *,
    core: Core,
    bfns: BFNSet | None = None,
) -> list[TaskMetrics]:
    """Run one device's stream (see module docstring); ``model`` is not modified.

    Takes the *deployed* quantized model rather than the float one: quantization,
    the activation ranges, the initial calibration and the BFNs are off-device
    products (``deploy``) shared by every device of a fleet.

    Parameters
    ----------
    model : nn.Module
        Deployed QCore model (``Deployment.model``).
    x_train, y_train : torch.Tensor
        The device's local data; it becomes the drifting stream.
    x_test, y_test : torch.Tensor
        Original (undrifted) test data for ``accuracy_original``.
    cfg : ContinualConfig
        Stream and calibration settings.
    rng : np.random.Generator
        Drives the stream, the core updates and the random core.
    core : tuple of torch.Tensor
        Initial core (the QCore; a random core for ``backprop-random``).
    bfns : BFNSet, optional
        Trained BFNs, required by ``calibration="bfn"`` (default: None).
    """
    cfg.check_local_data(len(y_train))
    if len(core[1]) != cfg.core_size:
        raise ValueError(
            f"stream.core-size: core has {len(core[1])} samples, config {cfg.core_size}")
    calibrate = build_calibration(cfg.calibration)
    if cfg.calibration == "bfn" and bfns is None:
        raise ValueError("stream.calibration: 'bfn' needs trained BFNs (deploy(with_bfns=True))")
    model = copy.deepcopy(model)
    ff = model_flops(model, tuple(x_train.shape[1:]), matmul_only=True)
    ctx = CalibrationContext(ff, epochs=cfg.epochs, lr=cfg.lr, code_lr=cfg.code_lr, batch_size=cfg.batch_size,
                             codes_only=cfg.codes_only, bfns=bfns, code_optimizer=cfg.code_optimizer)
    policy = CORE_POLICY[cfg.calibration]
    out = []
    for t, (xt, yt) in enumerate(make_stream(x_train, y_train, cfg.tasks, cfg.drift, rng,
                                             cfg.severity)):
        n_hold = int(np.ceil(cfg.holdout * len(yt)))
        new, held = (xt[n_hold:], yt[n_hold:]), (xt[:n_hold], yt[:n_hold])
        start = time.perf_counter()
        flops_core = 0
        if policy == "qcore":
            cx, cy, n_fwd = update_core(model, core, new, rng, recordings=cfg.recordings,
                                          batch_size=cfg.count_batch_size)
            core, flops_core = (cx, cy), n_fwd * ff
        elif policy == "random":
            pool_x, pool_y = torch.cat([core[0], new[0]]), torch.cat([core[1], new[1]])
            idx = torch.from_numpy(rng.choice(len(pool_y), cfg.core_size, replace=False))
            core = (pool_x[idx], pool_y[idx])
        before = code_snapshot(model)
        flops_cal = calibrate(model, core[0], core[1], ctx)
        wall = time.perf_counter() - start
        out.append(TaskMetrics(
            task=t,
            accuracy_task=_accuracy(model, *held),
            accuracy_original=_accuracy(model, x_test, y_test),
            accuracy_core=_accuracy(model, *core),
            flops=flops_core + flops_cal,
            flops_core=flops_core,
            flops_calibration=flops_cal,
            wall_s=wall,
            codes_changed=codes_changed(model, before),
        ))
    return out
