"""One simulated edge device for one round, free of Flower.

profile -> local data -> on-device evaluation of the received model -> memory check
-> coreset selection -> deadline check -> (quantization-aware) training with KD,
CLC and QGT -> encode the update -> cost on the virtual clock.

Per-device state (coreset indices, selector records) comes in and goes out as a
small dict of numpy arrays; the caller keeps it between rounds.
"""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fleet.hardware import faults as faultlib
from fleet.model.bnstats import has_batchnorm, reestimate_bn
from fleet.model.assembly import load_arrays, model_quant_info, state_arrays, trainable_model
from fleet.quant.convert import init_quantizers
from fleet.quant.codecs import build_codec, payload_nbytes
from fleet.quant.spec import is_quantized, is_quantizer_key
from fleet.config.scenario import ScenarioConfig
from fleet.coreset.base import SelectionContext
from fleet.coreset.persistence import select_or_reuse
from fleet.coreset.selectors import build_selector
from fleet.hardware.costs import RoundCost, apply_deadline, device_round_cost, model_flops
from fleet.data.splits import device_data, eval_subset, fleet_data, seeded_subset
from fleet.hardware.memory import estimate_peak_memory, fit_batch_size
from fleet.model.architectures import block_names, build_model
from fleet.hardware.catalogue import resolve_profile
from fleet.protocol import DeviceInstruction, DeviceReport
from fleet.train.loop import OPT_PREFIX, Schedule, evaluate, train_local

log = logging.getLogger(__name__)

__all__ = ["DeviceRound", "run_device_round", "clc_layer_names", "codec_for"]

State = dict[str, np.ndarray]


@dataclass
class DeviceRound:
    """The outcome of one device-round: the encoded update (empty when none), the report, the new state."""

    payload: dict[str, np.ndarray]
    report: DeviceReport
    state: State = field(default_factory=dict)


def clc_layer_names(cfg: ScenarioConfig, model: nn.Module) -> list[str]:
    """``train.clc-layers`` resolved against the model's blocks ('all' = every block)."""
    text = cfg.train.clc_layers.strip()
    if text == "all":
        return block_names(model)
    return [n.strip() for n in text.split(",") if n.strip()]


def codec_for(cfg: ScenarioConfig):  # noqa: ANN201 - a Codec
    opts = {"per_channel": cfg.quant.codec_per_channel} if cfg.quant.codec.startswith("delta") else {}
    return build_codec(cfg.quant.codec, **opts)


@functools.lru_cache(maxsize=8)
def _flops(arch: str, in_shape: tuple[int, int, int], num_classes: int) -> int:
    return model_flops(build_model(arch, in_shape, num_classes), in_shape)


def _rng(cfg: ScenarioConfig, ins: DeviceInstruction, purpose: int) -> np.random.Generator:
    return np.random.default_rng([cfg.federation.seed, ins.device, ins.server_round, purpose])


def run_device_round(cfg: ScenarioConfig, ins: DeviceInstruction, global_arrays: dict[str, np.ndarray],
                     reference: nn.Module | None, state: State, downlink_bytes: int) -> DeviceRound:
    """Run one round on device ``ins.device`` (see module docstring); ``reference`` may be None when
    ``needs_reference`` says this device does not use it."""
    t0 = time.perf_counter()
    ds = fleet_data(cfg).dataset
    data = device_data(cfg, ins.device)
    profile = resolve_profile(cfg, ins.profile)
    method = cfg.coreset.method
    rep = DeviceReport(device=ins.device, profile=ins.profile, method=method, bits=ins.weight_bits,
                       local_size=len(data.y), downlink_bytes=downlink_bytes, fault=ins.fault)
    gen = torch.Generator().manual_seed(int(_rng(cfg, ins, 1).integers(2**62)))
    faultlib.maybe_crash(ins.fault)

    quantized = is_quantized(ins.weight_bits, ins.act_bits)
    own_width = (ins.weight_bits, ins.act_bits) == (cfg.quant.weight_bits, cfg.quant.act_bits)
    model = _working_model(cfg, ins.ref_hash, reference, ins.weight_bits, ins.act_bits)
    if own_width:
        load_arrays(model, global_arrays)
    else:
        _load_other_width(model, global_arrays, data.x[:256])
    if len(data.y_val) and ins.evaluate:
        keep = eval_subset(len(data.y_val), cfg.federation.device_eval_limit, cfg.federation.seed, ins.device)
        rep.accuracy, _ = evaluate(model, data.x_val[keep], data.y_val[keep])

    # Memory: estimate the round's peak; over budget the device fails or shrinks its batch.
    batch = ins.batch_size or cfg.train.batch_size
    teacher = reference if (quantized and cfg.train.kd) or cfg.train.clc_beta != 0.0 else None
    rep.peak_mem_mb = _peak_mb(cfg, model, ins.weight_bits, ins.act_bits, batch, teacher)
    if rep.peak_mem_mb > profile.memory_mb:
        fitted = None
        if cfg.devices.memory_policy == "shrink-batch":
            fitted = fit_batch_size(model, ds.in_shape, batch, profile.memory_mb, optimizer=cfg.train.optimizer,
                                    momentum=cfg.train.momentum, teacher=teacher, quantized=quantized)
        if fitted is None:
            rep.status, rep.error = "oom", f"needs {rep.peak_mem_mb:.1f} MB, budget {profile.memory_mb:g} MB"
            rep.wall_s = time.perf_counter() - t0
            return DeviceRound({}, rep, state)
        batch = fitted
        rep.peak_mem_mb = _peak_mb(cfg, model, ins.weight_bits, ins.act_bits, batch, teacher)
    rep.batch_size = batch

    # Coreset: scored with the current (received) model and the frozen reference, reused between re-selections.
    new_state = dict(state)
    x, y = data.x, data.y
    sel = None
    selector = None
    if method != "full":
        ctx = SelectionContext(qmodel=model, fpmodel=reference, epoch=ins.server_round - 1,
                               total_epochs=cfg.federation.rounds, rng=_rng(cfg, ins, 2),
                               num_classes=ds.num_classes, balanced=cfg.coreset.balanced,
                               score_norm=cfg.coreset.score_norm, schedule=cfg.coreset.schedule)
        selector = build_selector(method, **({"redraw": cfg.coreset.redraw} if method == "random" else {}))
        res = select_or_reuse(selector, x, y, cfg.coreset.fraction, ctx, state, ins.participation,
                              cfg.coreset.reselect_every)
        new_state = res.state
        rep.scoring_passes = res.scoring_passes
        sel = torch.from_numpy(res.indices)
        x, y = x[sel], y[sel]
    rep.coreset_size = len(y)
    rep.coreset_fraction = len(y) / max(len(data.y), 1)
    if method != "full":
        _note_small_device(ins.device, len(data.y), cfg.coreset.fraction)
    rep.weight = float(len(y) if cfg.strategy.weight_by == "coreset" else len(data.y))

    # The virtual clock: predict the round before training, so a straggler spends no real compute.
    codec = codec_for(cfg)
    qinfo = _qinfo(cfg, ins.ref_hash, reference, ins.weight_bits, ins.act_bits)
    up_bytes = _upload_nbytes(cfg, ins.ref_hash, reference, ins.weight_bits, ins.act_bits, global_arrays)
    flops = _flops(cfg.model.arch, ds.in_shape, ds.num_classes)
    train_n = len(y) * cfg.train.local_epochs
    teacher_n = train_n if teacher is not None else 0
    cost = device_round_cost(profile, flops, train_n, teacher_n, rep.scoring_passes, up_bytes, downlink_bytes)
    status, work = apply_deadline(cost, ins.deadline_s, cfg.devices.straggler_policy)
    max_steps = None
    if status != "ok":
        rep.status = status
        _charge(rep, cost)
        rep.wall_s = time.perf_counter() - t0
        return DeviceRound({}, rep, new_state)
    if work < 1.0:
        steps = -(-len(y) // batch) * cfg.train.local_epochs
        max_steps = max(1, int(work * steps))

    clc = clc_layer_names(cfg, model) if cfg.train.clc_beta != 0.0 else None
    schedule = Schedule(ins.lr or cfg.train.lr, cfg.train.lr_schedule, (ins.lr_window_start, ins.lr_window_end))
    keep_opt = cfg.train.optimizer_state == "device"
    records = _Observer(selector, sel, new_state) if method == "forgetting" else None
    result = train_local(model, x, y, cfg.train, gen=gen, teacher=teacher, clc_layers=clc,
                         qgt_bits=ins.weight_bits, prox_mu=ins.proximal_mu, batch_size=batch,
                         max_steps=max_steps, schedule=schedule,
                         opt_state={k: v for k, v in state.items() if k.startswith(OPT_PREFIX)} if keep_opt else None,
                         on_batch=records)
    if records is not None:
        new_state = records.state
    if cfg.train.bn_refresh and result.steps and has_batchnorm(model):
        reestimate_bn(model, x[_refresh_subset(len(y), cfg.federation.seed, ins.device, ins.server_round)])
    if result.opt_state is not None:
        new_state.update(result.opt_state)
    rep.train_samples, rep.teacher_passes, rep.loss = result.samples, result.teacher_passes, result.loss
    if clc:
        rep.extra = {"kd-clc-ratio": result.kd_clc_ratio, "clc-beta": result.beta}

    local = _upload_state(model, global_arrays)
    payload = codec.encode(local, global_arrays, _rng(cfg, ins, 4), qinfo)
    payload = faultlib.apply_payload_fault(ins.fault, payload, global_arrays, codec, qinfo, _rng(cfg, ins, 5),
                                           cfg.faults.corrupt_form)
    rep.uplink_bytes = payload_nbytes(payload)
    cost = device_round_cost(profile, flops, rep.train_samples, rep.teacher_passes, rep.scoring_passes,
                             rep.uplink_bytes, downlink_bytes)
    _charge(rep, cost)
    faultlib.maybe_hang(ins.fault, cfg.federation.round_timeout_s)
    rep.wall_s = time.perf_counter() - t0
    return DeviceRound(payload, rep, new_state)


# -- per-process caches of read-only things derived from (scenario, reference, width) ----------------
_TEMPLATES: dict[tuple, nn.Module] = {}


def _template(cfg: ScenarioConfig, ref_hash: str, reference: nn.Module | None, wb: int, ab: int) -> nn.Module:
    """The trainable model at a width, built once per process (devices get a deep copy). Only its module
    tree matters (every aggregatable tensor is overwritten by the global arrays), so without a reference
    it is converted from a freshly built architecture."""
    key = (cfg, ref_hash, wb, ab)
    if key not in _TEMPLATES:
        if len(_TEMPLATES) > 8:
            _TEMPLATES.clear()
        if reference is None:
            ds = fleet_data(cfg).dataset
            reference = build_model(cfg.model.arch, ds.in_shape, ds.num_classes)
        _TEMPLATES[key] = trainable_model(cfg, reference, wb, ab)
    return _TEMPLATES[key]


_WORKING: dict[tuple, tuple[nn.Module, dict[str, torch.Tensor], bool]] = {}


def _working_model(cfg: ScenarioConfig, ref_hash: str, reference: nn.Module | None, wb: int,
                   ab: int) -> nn.Module:
    """The width's trainable model in its template state, for one device-round.

    A process runs one device-round at a time per thread, so each thread keeps one working copy and
    resets it in place (every parameter and buffer, the train/eval mode, gradients dropped): an order
    of magnitude cheaper than a deep copy of the template per device-round (0.07 vs 0.74 ms, MLP)."""
    key = (cfg, ref_hash, wb, ab, threading.get_ident())
    if key not in _WORKING:
        if len(_WORKING) > 8:
            _WORKING.clear()
        template = _template(cfg, ref_hash, reference, wb, ab)  # read-only: its state is the reset point
        _WORKING[key] = (copy.deepcopy(template), template.state_dict(), template.training)
    model, pristine, training = _WORKING[key]
    model.train(training)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(pristine[k])
    for p in model.parameters():
        p.grad = None
    return model


_QINFO: dict[tuple, object] = {}


def _qinfo(cfg: ScenarioConfig, ref_hash: str, reference: nn.Module | None, wb: int, ab: int):  # noqa: ANN202
    """Which weights a device at this width quantizes (read off the width's template: every copy is alike).
    A float device encodes on the global model's grid (what the qweights codec needs); None if that is float too."""
    if not is_quantized(wb, ab):
        wb, ab = cfg.quant.weight_bits, cfg.quant.act_bits
        if not is_quantized(wb, ab):
            return None
    key = (cfg, ref_hash, wb, ab)
    if key not in _QINFO:
        _QINFO[key] = model_quant_info(_template(cfg, ref_hash, reference, wb, ab))
    return _QINFO[key]


_PEAK_MB: dict[tuple, float] = {}


def _peak_mb(cfg: ScenarioConfig, model: nn.Module, wb: int, ab: int, batch: int,
             teacher: nn.Module | None) -> float:
    """Peak training memory estimate (MiB); it depends only on architecture, width and batch, so it is cached."""
    key = (cfg, wb, ab, batch, teacher is not None)
    if key not in _PEAK_MB:
        ds = fleet_data(cfg).dataset
        est = estimate_peak_memory(model, ds.in_shape, batch, optimizer=cfg.train.optimizer,
                                   momentum=cfg.train.momentum, teacher=teacher, quantized=is_quantized(wb, ab))
        _PEAK_MB[key] = est.total_bytes / 2**20
    return _PEAK_MB[key]


_UPLOAD_NBYTES: dict[tuple, int] = {}


def _upload_nbytes(cfg: ScenarioConfig, ref_hash: str, reference: nn.Module | None, wb: int, ab: int,
                   global_arrays: dict[str, np.ndarray]) -> int:
    """Size of this width's upload; it depends only on shapes and bits, so it is computed once per width."""
    key = (cfg, ref_hash, wb, ab)
    if key not in _UPLOAD_NBYTES:
        model = _template(cfg, ref_hash, reference, wb, ab)
        qinfo = _qinfo(cfg, ref_hash, reference, wb, ab)
        base = _upload_state(model, global_arrays)
        _UPLOAD_NBYTES[key] = payload_nbytes(codec_for(cfg).encode(base, base, np.random.default_rng(0), qinfo))
    return _UPLOAD_NBYTES[key]


def _load_other_width(model: nn.Module, global_arrays: dict[str, np.ndarray], x: torch.Tensor) -> None:
    """A device whose hardware trains at another width than the global model: take the global weights,
    and learn its own step sizes from them and its data (LSQ's initialisation), as a fresh deployment would."""
    own = model.state_dict()
    with torch.no_grad():
        for k, v in global_arrays.items():
            if k in own and not is_quantizer_key(k):
                own[k].copy_(torch.from_numpy(np.asarray(v)).to(own[k].dtype).reshape(own[k].shape))
    init_quantizers(model, x)


def _upload_state(model: nn.Module, global_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The device's aggregatable state on the global model's keys (a tensor the device's width lacks,
    such as a step size of a float device, is sent back unchanged)."""
    local = state_arrays(model)
    return {k: local.get(k, global_arrays[k]) for k in global_arrays}


BN_REFRESH_SAMPLES = 2048


def _refresh_subset(n: int, seed: int, device: int, server_round: int) -> torch.Tensor:
    """Which of the round's training samples re-estimate BatchNorm (all, or a seeded 2048 of them)."""
    return seeded_subset(n, BN_REFRESH_SAMPLES, [seed, device, server_round, 6])


_SMALL_LOGGED: set[int] = set()


def _note_small_device(device: int, n: int, fraction: float) -> None:
    """Log once per device and process when its data is too small for the fraction (it keeps one sample)."""
    if round(fraction * n) < 1 and device not in _SMALL_LOGGED:
        _SMALL_LOGGED.add(device)
        log.info("device %d: %d samples are too few for coreset.fraction = %g; it trains on 1 sample "
                 "(%.1f%% of its data)", device, n, fraction, 100.0 / max(n, 1))


class _Observer:
    """Feeds the forgetting selector what training saw: per batch, which samples were classified right."""

    def __init__(self, selector, sel: torch.Tensor | None, state: State) -> None:  # noqa: ANN001 - a Selector
        self.selector, self.sel, self.state = selector, sel, state

    def __call__(self, idx: torch.Tensor, correct: torch.Tensor) -> None:
        local = idx if self.sel is None else self.sel[idx]
        self.state = self.selector.observe(local.numpy(), correct.numpy(), self.state)


def _charge(rep: DeviceReport, cost: RoundCost) -> None:
    rep.compute_s, rep.comm_s, rep.sim_time_s, rep.energy_j = (
        cost.compute_s, cost.comm_s, cost.total_s, cost.energy_j)
