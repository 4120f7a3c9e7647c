"""Setting (a) of the coreset benchmark: one device holding all the data (the papers' setting).

In-process, no Flower: the device's own code path (``fleet.coreset.persistence.
select_or_reuse`` + ``fleet.train.loop.train_local``, exactly what ``fleet.device.
run_device_round`` calls) driven for ``T`` epochs. Epoch ``t`` = one call with
``train.local-epochs = 1``; selection is due at ``t % R == 0`` and the QuaRC/ACS
schedule sees ``(t, T)``. The model starts as the pretrained float reference
quantized by surgery, steps initialised on the first 256 device rows (what the
server does when there is no public split). As on a device, each epoch builds a
fresh optimizer (Adam state does not carry over between rounds) and the LR is
constant. The reported accuracy is the DEPLOYED model's: export to integer codes
(``fleet.quant.export``), rebuild from them, evaluate on the test subset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fleet.config.scenario import ScenarioConfig
from fleet.coreset.base import SelectionContext
from fleet.coreset.persistence import select_or_reuse
from fleet.coreset.selectors import build_selector
from fleet.data.splits import device_data, fleet_data
from fleet.model.assembly import trainable_model
from fleet.model.bnstats import BN_REFRESH_SAMPLES, has_batchnorm, reestimate_bn
from fleet.quant.convert import init_quantizers
from fleet.quant.export import export_quantized, load_exported
from fleet.train.loop import Schedule, evaluate, train_local
from fleet.train.losses import clc_layer_names
from fleet.train.schedule import round_window

__all__ = ["SingleResult", "run_single"]


@dataclass
class SingleResult:
    """One (cell, seed) of setting (a)."""

    accuracy: float  # deployed (integer-export) test accuracy
    fake_quant_accuracy: float
    wall_s: float
    selection_s: float  # wall seconds inside select_or_reuse (scoring + top-k)
    scoring_passes: int
    train_samples: int
    teacher_passes: int
    kd_clc_ratio: float  # at the first epoch (nan without CLC)
    clc_beta: float  # beta used at the first epoch (auto: measured there)
    coreset_size: int


def run_single(cfg: ScenarioConfig, reference: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor
               ) -> SingleResult:
    """Run one cell of setting (a); ``cfg`` has one device, ``federation.rounds`` = T epochs.

    Parameters
    ----------
    cfg : ScenarioConfig
        Scenario with ``federation.num-devices = 1``; its coreset/train/quant keys are the cell.
    reference : nn.Module
        Frozen float reference (teacher, correction model F, and the model quantized by surgery).
    x_test, y_test : Tensor
        Test subset, ``(M, C, H, W)`` and ``(M,)``.
    """
    t_start = time.perf_counter()
    seed, epochs = cfg.federation.seed, cfg.federation.rounds
    fd = fleet_data(cfg)
    data = device_data(cfg, 0)
    x, y = data.x, data.y  # (N, C, H, W), (N,)
    bits_w, bits_a = cfg.quant.weight_bits, cfg.quant.act_bits
    model = trainable_model(cfg, reference, bits_w, bits_a)
    init_quantizers(model, fd.dataset.x_train[np.concatenate(fd.train)[:256]])
    method = cfg.coreset.method
    selector = None if method == "full" else build_selector(
        method, **({"redraw": cfg.coreset.redraw} if method == "random" else {}))
    clc = clc_layer_names(cfg, model) if cfg.train.clc_beta != 0.0 else None
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, np.ndarray] = {}
    sel_s, passes, samples, teacher_n, size = 0.0, 0, 0, 0, len(y)
    ratio, beta = float("nan"), 0.0
    opt_state: dict[str, np.ndarray] = {}
    for t in range(epochs):
        xs, ys = x, y
        if selector is not None:
            ctx = SelectionContext(qmodel=model, fpmodel=reference, epoch=t, total_epochs=epochs,
                                   rng=np.random.default_rng([seed, t, 2]), num_classes=fd.dataset.num_classes,
                                   balanced=cfg.coreset.balanced, score_norm=cfg.coreset.score_norm,
                                   schedule=cfg.coreset.schedule)
            t0 = time.perf_counter()
            res = select_or_reuse(selector, x, y, cfg.coreset.fraction, ctx, state, t, cfg.coreset.reselect_every)
            sel_s += time.perf_counter() - t0
            state, passes = res.state, passes + res.scoring_passes
            sel = torch.from_numpy(res.indices)
            xs, ys = x[sel], y[sel]
            size = len(ys)
        # The papers' protocol: one optimizer and one schedule over all T epochs (docs/quantization.md).
        out = train_local(model, xs, ys, cfg.train, gen=gen, teacher=reference, clc_layers=clc, qgt_bits=bits_w,
                          schedule=Schedule(cfg.train.lr, cfg.train.lr_schedule, round_window("run", t + 1, epochs)),
                          opt_state=opt_state)
        opt_state = out.opt_state or {}
        if cfg.train.bn_refresh and has_batchnorm(model):
            reestimate_bn(model, xs[:BN_REFRESH_SAMPLES])
        samples, teacher_n = samples + out.samples, teacher_n + out.teacher_passes
        if t == 0:
            ratio, beta = out.kd_clc_ratio, out.beta
    deployed = load_exported(export_quantized(model), reference)
    acc, _ = evaluate(deployed, x_test, y_test)
    fq_acc, _ = evaluate(model, x_test, y_test)
    return SingleResult(acc, fq_acc, time.perf_counter() - t_start, sel_s, passes, samples, teacher_n,
                        ratio, beta, size)
