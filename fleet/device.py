"""One simulated edge device for one round, free of Flower.

profile -> local data -> on-device evaluation of the received model -> memory check
-> coreset selection -> deadline check -> (quantization-aware) training with KD,
CLC and QGT (or, with ``train.qgt-mode = "ptq"``, float training and round-to-nearest)
-> encode the update -> cost on the virtual clock.

Per-device state (coreset indices, selector records) comes in and goes out as a
small dict of numpy arrays; the caller keeps it between rounds.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fleet import artifacts
from fleet import protocol as P
from fleet.config.scenario import ScenarioConfig
from fleet.coreset.base import SelectionContext, Selector
from fleet.coreset.persistence import select_or_reuse
from fleet.coreset.selectors import build_selector
from fleet.data.splits import DeviceData, device_data, device_data_key, eval_subset, fleet_data, seeded_subset
from fleet.hardware import faults as faultlib
from fleet.hardware.catalogue import resolve_profile
from fleet.hardware.clock import RoundCost, apply_deadline, device_round_cost
from fleet.hardware.memory import apply_memory_policy, fit_batch_size
from fleet.hardware.profiles import DeviceProfile
from fleet.model.assembly import load_arrays
from fleet.model.bnstats import BN_REFRESH_SAMPLES, has_batchnorm, reestimate_bn
from fleet.privacy.policy import freeze_shared_grid, noised_unclipped, outgoing_state, uniform_weights
from fleet.protocol import DeviceInstruction, DeviceReport
from fleet.quant.codecs import payload_nbytes, scenario_codec
from fleet.quant.convert import init_quantizers
from fleet.quant.spec import is_quantized, is_quantizer_key
from fleet.train.loop import OPT_PREFIX, Schedule, evaluate, train_local
from fleet.train.losses import clc_layer_names

log = logging.getLogger(__name__)

__all__ = ["DeviceRound", "run_device_round"]

State = dict[str, np.ndarray]


@dataclass
class DeviceRound:
    """The outcome of one device-round: the encoded update (empty when none), the report, the new state."""

    payload: dict[str, np.ndarray]
    report: DeviceReport
    state: State = field(default_factory=dict)


@dataclass
class _Round:
    """What the steps of one device-round share."""

    cfg: ScenarioConfig
    ins: DeviceInstruction
    data: DeviceData
    profile: DeviceProfile
    rep: DeviceReport
    reference: nn.Module | None
    teacher: nn.Module | None
    started: float

    def rng(self, purpose: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.federation.seed, self.ins.device, self.ins.server_round, purpose])

    def done(self, payload: dict[str, np.ndarray], state: State) -> DeviceRound:
        self.rep.wall_s = time.perf_counter() - self.started
        return DeviceRound(payload, self.rep, state)


@dataclass
class _Coreset:
    x: torch.Tensor
    y: torch.Tensor
    sel: torch.Tensor | None  # indices into the local data (None = all of it)
    selector: Selector | None
    state: State


def run_device_round(cfg: ScenarioConfig, ins: DeviceInstruction, global_arrays: dict[str, np.ndarray],
                     reference: nn.Module | None, state: State, downlink_bytes: int) -> DeviceRound:
    """Run one round on device ``ins.device`` (see module docstring); ``reference`` may be None when
    ``needs_reference`` says this device does not use it."""
    rnd = _start(cfg, ins, reference, downlink_bytes)
    faultlib.maybe_crash(ins.fault)
    model = _receive(rnd, global_arrays)
    batch = _fit_memory(rnd, model)
    if batch is None:
        return rnd.done({}, state)
    core = _select_coreset(rnd, model, state)
    cost, max_steps = _plan(rnd, global_arrays, core, batch)
    if rnd.rep.status != "ok":
        return rnd.done({}, core.state)
    new_state = _train(rnd, model, core, batch, max_steps, state)
    payload = _upload(rnd, model, global_arrays)
    _charge(rnd.rep, device_round_cost(rnd.profile, artifacts.flops_per_sample(cfg), rnd.rep.train_samples,
                                       rnd.rep.teacher_passes, rnd.rep.scoring_passes, rnd.rep.uplink_bytes,
                                       downlink_bytes))
    faultlib.maybe_hang(ins.fault, cfg.federation.round_timeout_s)
    return rnd.done(payload, new_state)


def _start(cfg: ScenarioConfig, ins: DeviceInstruction, reference: nn.Module | None, downlink_bytes: int) -> _Round:
    data = device_data(cfg, ins.device)
    rep = DeviceReport(device=ins.device, profile=ins.profile, method=cfg.coreset.method, bits=ins.weight_bits,
                       local_size=len(data.y), downlink_bytes=downlink_bytes, fault=ins.fault)
    quantized = is_quantized(ins.weight_bits, ins.act_bits)
    teacher = reference if (quantized and cfg.train.kd) or cfg.train.clc_beta != 0.0 else None
    return _Round(cfg, ins, data, resolve_profile(cfg, ins.profile), rep, reference, teacher, time.perf_counter())


def _receive(rnd: _Round, global_arrays: dict[str, np.ndarray]) -> nn.Module:
    """The received global model at the device's width, evaluated on the device's held-out samples."""
    cfg, ins, data = rnd.cfg, rnd.ins, rnd.data
    model = artifacts.working_model(cfg, ins.ref_hash, rnd.reference, ins.weight_bits, ins.act_bits)
    if (ins.weight_bits, ins.act_bits) == (cfg.quant.weight_bits, cfg.quant.act_bits):
        load_arrays(model, global_arrays)
    else:
        _load_other_width(model, global_arrays, data.x[:256])
    if len(data.y_val) and ins.evaluate:
        keep = eval_subset(len(data.y_val), cfg.federation.device_eval_limit, cfg.federation.seed, ins.device)
        rnd.rep.accuracy, _ = evaluate(model, data.x_val[keep], data.y_val[keep])
    return model


def _fit_memory(rnd: _Round, model: nn.Module) -> int | None:
    """The batch size the round trains with: over the memory budget the device fails as OOM (None) or shrinks
    its batch (``devices.memory-policy``)."""
    cfg, ins, rep, budget = rnd.cfg, rnd.ins, rnd.rep, rnd.profile.memory_mb
    batch = ins.batch_size or cfg.train.batch_size
    rep.peak_mem_mb = artifacts.peak_mb(cfg, model, ins.weight_bits, ins.act_bits, batch, rnd.teacher)
    if rep.peak_mem_mb > budget:
        policy = cfg.devices.memory_policy
        fitted = None
        if policy == "shrink-batch":
            fitted = fit_batch_size(model, fleet_data(cfg).dataset.in_shape, batch, budget,
                                    optimizer=cfg.train.optimizer, momentum=cfg.train.momentum,
                                    teacher=rnd.teacher,
                                    quantized=artifacts.trains_quantized(cfg, ins.weight_bits, ins.act_bits))
        status, fitted_batch = apply_memory_policy(fitted, batch, policy)
        if status != "ok":
            rep.status, rep.error = status, f"needs {rep.peak_mem_mb:.1f} MB, budget {budget:g} MB"
            return None
        batch = fitted_batch
        rep.peak_mem_mb = artifacts.peak_mb(cfg, model, ins.weight_bits, ins.act_bits, batch, rnd.teacher)
    rep.batch_size = batch
    return batch


def _select_coreset(rnd: _Round, model: nn.Module, state: State) -> _Coreset:
    """The round's training samples: scored with the received model and the frozen reference, reused between
    re-selections (``coreset.reselect-every``)."""
    cfg, ins, data, rep = rnd.cfg, rnd.ins, rnd.data, rnd.rep
    method = cfg.coreset.method
    core = _Coreset(data.x, data.y, None, None, dict(state))
    if method != "full":
        ctx = SelectionContext(qmodel=model, fpmodel=rnd.reference, epoch=ins.server_round - 1,
                               total_epochs=cfg.federation.rounds, rng=rnd.rng(2),
                               num_classes=fleet_data(cfg).dataset.num_classes, balanced=cfg.coreset.balanced,
                               score_norm=cfg.coreset.score_norm, schedule=cfg.coreset.schedule,
                               fp_key=(ins.ref_hash, device_data_key(cfg, ins.device)))
        core.selector = build_selector(method, **({"redraw": cfg.coreset.redraw} if method == "random" else {}))
        res = select_or_reuse(core.selector, data.x, data.y, cfg.coreset.fraction, ctx, state, ins.participation,
                              cfg.coreset.reselect_every)
        core.state, rep.scoring_passes = res.state, res.scoring_passes
        core.sel = torch.from_numpy(res.indices)
        core.x, core.y = data.x[core.sel], data.y[core.sel]
        _note_small_device(ins.device, len(data.y), cfg.coreset.fraction)
    rep.coreset_size = len(core.y)
    rep.coreset_fraction = len(core.y) / max(len(data.y), 1)
    rep.weight = 1.0 if uniform_weights(cfg) else float(len(core.y) if cfg.strategy.weight_by == "coreset"
                                                          else len(data.y))
    return core


def _plan(rnd: _Round, global_arrays: dict[str, np.ndarray], core: _Coreset,
          batch: int) -> tuple[RoundCost, int | None]:
    """The virtual clock's prediction of the round, before training, so a straggler spends no real compute.
    Returns the predicted cost and the step budget (None = the whole job); a late device's status is set."""
    cfg, ins, rep = rnd.cfg, rnd.ins, rnd.rep
    flops = artifacts.flops_per_sample(cfg)
    up_bytes = artifacts.upload_nbytes(cfg, ins.ref_hash, rnd.reference, ins.weight_bits, ins.act_bits, global_arrays)
    train_n = len(core.y) * cfg.train.local_epochs
    teacher_n = train_n if rnd.teacher is not None else 0
    cost = device_round_cost(rnd.profile, flops, train_n, teacher_n, rep.scoring_passes, up_bytes, rep.downlink_bytes)
    scored_s = device_round_cost(rnd.profile, flops, 0, 0, rep.scoring_passes, 0, 0).compute_s  # already spent
    status, work = apply_deadline(cost, ins.deadline_s, cfg.devices.straggler_policy, fixed_s=scored_s)
    if status != "ok":
        rep.status = status
        _charge(rep, cost)
        return cost, None
    if work >= 1.0:
        return cost, None
    steps = -(-len(core.y) // batch) * cfg.train.local_epochs
    return cost, max(1, int(work * steps))


def _train(rnd: _Round, model: nn.Module, core: _Coreset, batch: int, max_steps: int | None, state: State) -> State:
    """Local (quantization-aware) training with KD, CLC and QGT; returns the device's new state."""
    cfg, ins, rep = rnd.cfg, rnd.ins, rnd.rep
    clc = clc_layer_names(cfg, model) if cfg.train.clc_beta != 0.0 else None
    schedule = Schedule(ins.lr or cfg.train.lr, cfg.train.lr_schedule, (ins.lr_window_start, ins.lr_window_end))
    keep_opt = cfg.train.optimizer_state == "device"
    records = _Observer(core.selector, core.sel, core.state) if cfg.coreset.method == "forgetting" else None
    gen = torch.Generator().manual_seed(int(rnd.rng(1).integers(2**62)))
    freeze_shared_grid(model, cfg)
    result = train_local(model, core.x, core.y, cfg.train, gen=gen, teacher=rnd.teacher, clc_layers=clc,
                         qgt_bits=ins.weight_bits, prox_mu=ins.proximal_mu, batch_size=batch,
                         max_steps=max_steps, schedule=schedule,
                         opt_state={k: v for k, v in state.items() if k.startswith(OPT_PREFIX)} if keep_opt else None,
                         on_batch=records)
    new_state = records.state if records is not None else core.state
    if cfg.train.bn_refresh and result.steps and has_batchnorm(model):
        n = len(core.y)
        reestimate_bn(model, core.x[_refresh_subset(n, cfg.federation.seed, ins.device, ins.server_round)])
    if result.opt_state is not None:
        new_state.update(result.opt_state)
    rep.train_samples, rep.teacher_passes, rep.loss = result.samples, result.teacher_passes, result.loss
    rep.train_steps = result.steps
    if clc:
        rep.extra = dict(zip(P.CLC_EXTRAS, (result.kd_clc_ratio, result.beta), strict=True))
    return new_state


def _upload(rnd: _Round, model: nn.Module, global_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The encoded update (as a faulty device would send it, under ``[faults]``)."""
    cfg, ins = rnd.cfg, rnd.ins
    codec = scenario_codec(cfg)
    qinfo = artifacts.quant_info_at(cfg, ins.ref_hash, rnd.reference, ins.weight_bits, ins.act_bits)
    # DP noise from the OS's entropy, never from the run's seed: a server that knows the seed could regenerate
    # and subtract it. Runs with privacy.dp therefore differ from run to run (docs/privacy.md).
    noise_rng = np.random.default_rng(secrets.randbits(128)) if cfg.privacy.dp else rnd.rng(7)
    local = artifacts.upload_state(model, global_arrays)
    clip = ins.clip_norm or cfg.privacy.clip_norm
    unclipped = noised_unclipped(cfg, local, global_arrays, clip, noise_rng)
    if unclipped is not None:
        rnd.rep.extra[P.UNCLIPPED] = unclipped
    state = outgoing_state(cfg, local, global_arrays, noise_rng, clip)
    payload = codec.encode(state, global_arrays, rnd.rng(4), qinfo)
    payload = faultlib.apply_payload_fault(ins.fault, payload, global_arrays, codec, qinfo, rnd.rng(5),
                                           cfg.faults.corrupt_form)
    rnd.rep.uplink_bytes = payload_nbytes(payload)
    return payload


def _load_other_width(model: nn.Module, global_arrays: dict[str, np.ndarray], x: torch.Tensor) -> None:
    """A device whose hardware trains at another width than the global model: take the global weights,
    and learn its own step sizes from them and its data (LSQ's initialisation), as a fresh deployment would."""
    own = model.state_dict()
    with torch.no_grad():
        for k, v in global_arrays.items():
            if k in own and not is_quantizer_key(k):
                own[k].copy_(torch.from_numpy(np.asarray(v)).to(own[k].dtype).reshape(own[k].shape))
    init_quantizers(model, x)


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
