"""The device's Flower ClientApp: a thin adapter between Flower records and :mod:`fleet.device`.

``app`` is what ``flwr run`` loads (the scenario comes from ``context.run_config``);
``make_client_app(flat)`` binds a scenario for in-process runs (``fleet run``),
since Flower's Python simulation entry point carries no run config.

Per-device state lives in ``context.state`` (coreset indices, selector records);
the float reference arrives once per device and is kept in a per-process cache by
content hash and on local disk, never in module-level per-device state.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fleet import artifacts
from fleet import protocol as P
from fleet.arrays import record_from_numpy, record_to_numpy
from fleet.config.scenario import ScenarioConfig, parse_config
from fleet.device import run_device_round
from fleet.model.roles import needs_reference
from fleet.state import load_device_state, save_device_state

__all__ = ["app", "make_client_app", "config_from_run_config"]


@functools.lru_cache(maxsize=4)
def _parse(items: tuple[tuple[str, Any], ...]) -> ScenarioConfig:
    return parse_config({k: list(v) if isinstance(v, tuple) else v for k, v in items})


def _hashable(v: Any) -> Any:
    """A run-config value as a cache key: lists (a custom profile's ``bits``) as tuples."""
    return tuple(v) if isinstance(v, list) else v


def config_from_run_config(run_config: Mapping[str, Any]) -> ScenarioConfig:
    """Parse (once per process) the scenario carried by a run config."""
    return _parse(tuple(sorted(((k, _hashable(v)) for k, v in run_config.items()), key=lambda kv: kv[0])))


def _load_state(context: Context, ins: P.DeviceInstruction) -> dict[str, np.ndarray]:
    if ins.state_dir:
        return load_device_state(ins.state_dir, ins.device, ins.server_round)
    if P.STATE_ARRAYS not in context.state:
        return {}
    return record_to_numpy(P.record(context.state, P.STATE_ARRAYS, ArrayRecord))


def _same_state(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _handle_train(msg: Message, context: Context, cfg: ScenarioConfig) -> Message:
    ins = P.DeviceInstruction.from_record(P.record(msg.content, P.CONFIG, ConfigRecord))
    own = int(context.node_config.get("partition-id", ins.device))
    if own != ins.device:
        raise ValueError(f"instruction for device {ins.device} reached device {own}")
    global_arrays = record_to_numpy(P.record(msg.content, P.ARRAYS, ArrayRecord))
    downlink = msg.content[P.ARRAYS].count_bytes()
    if P.REFERENCE in msg.content:
        downlink += msg.content[P.REFERENCE].count_bytes()
    sent = record_to_numpy(P.record(msg.content, P.REFERENCE, ArrayRecord)) if P.REFERENCE in msg.content else None
    reference = (artifacts.reference(cfg, ins.ref_hash, sent)
                 if needs_reference(cfg, ins.weight_bits, ins.act_bits) else None)
    state = _load_state(context, ins)
    out = run_device_round(cfg, ins, global_arrays, reference, state, downlink)
    if ins.state_dir:
        if not _same_state(out.state, state):  # a round that reused its coreset has nothing new to store
            save_device_state(ins.state_dir, ins.device, ins.server_round, out.state)
    else:
        context.state[P.STATE_ARRAYS] = record_from_numpy(out.state)
    if cfg.privacy.secure_aggregation:  # SecAgg+ masks what this returns (see _secagg_when_asked)
        return Message(_secure_reply(cfg, ins, out.payload, out.report, global_arrays), reply_to=msg)
    metrics, report = out.report.to_records()
    arrays = record_from_numpy(out.payload)
    return Message(RecordDict({P.ARRAYS: arrays, P.METRICS: metrics, P.REPORT: report}), reply_to=msg)


def _secure_reply(cfg: ScenarioConfig, ins: P.DeviceInstruction, payload: dict[str, np.ndarray],
                  report: P.DeviceReport, global_arrays: dict[str, np.ndarray]) -> RecordDict:
    """The update as SecAgg+'s integer vector (zeros, weight 0, for a device that did not train)."""
    from fleet.privacy import secagg

    qinfo = (artifacts.quant_info_at(cfg, ins.ref_hash, None, ins.weight_bits, ins.act_bits)
             if cfg.quant.codec == "qweights" else None)  # codes on the shared grid; else fixed point
    rng = np.random.default_rng([cfg.federation.seed, ins.device, ins.server_round, 8])
    if report.status == "ok" and payload:
        ints = secagg.to_integers(payload, global_arrays, qinfo, rng)
    else:
        ints = [np.zeros(np.shape(global_arrays[k]), np.int64) for k in sorted(global_arrays)]
    if cfg.privacy.dp and cfg.privacy.clipping == "adaptive":  # the bit goes into the sum, not the report
        ints.append(secagg.fixed_point(report.extra.pop(P.UNCLIPPED, 0.0), rng))
    return secagg.fitres_content(report, ints)


def _secagg_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of its protocol; every other message goes straight on."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if RECORD_KEY_CONFIGS in msg.content:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def _handle_query(msg: Message, context: Context, cfg: ScenarioConfig) -> Message:
    """Roster query (which device this node is), or the continual phase (``ask = "stream"``)."""
    pid = int(context.node_config.get("partition-id", -1))
    config = P.record(msg.content, P.CONFIG, ConfigRecord)
    ask = config.get(P.ASK, P.ASK_ROSTER)
    if ask != P.ASK_STREAM:
        return Message(RecordDict({P.REPORT: ConfigRecord({P.DEVICE: pid})}), reply_to=msg)
    from fleet.qcore.device import stream_metrics  # torch-heavy, and only for the continual phase

    return Message(RecordDict({P.METRICS: stream_metrics(cfg, msg.content, pid)}), reply_to=msg)


def _train(bound: Mapping[str, Any] | None, msg: Message, context: Context) -> Message:
    cfg = config_from_run_config(bound if bound is not None else context.run_config)
    torch.set_num_threads(device_threads(cfg))  # the device's CPU share, under either engine
    return _handle_train(msg, context, cfg)


def _query(bound: Mapping[str, Any] | None, msg: Message, context: Context) -> Message:
    cfg = config_from_run_config(bound if bound is not None else context.run_config)
    torch.set_num_threads(device_threads(cfg))
    return _handle_query(msg, context, cfg)


def device_threads(cfg: ScenarioConfig) -> int:
    """Torch threads of a running device: its whole CPUs (``ray.num-cpus-per-device``, at least one)."""
    return max(1, int(cfg.ray.num_cpus_per_device))


def make_client_app(flat_config: Mapping[str, Any] | None = None) -> ClientApp:
    """A ClientApp; with ``flat_config`` bound, it ignores the run config (in-process runs).

    The handlers are module-level functions bound with ``functools.partial``, not closures: Flower's
    simulation pickles the ClientApp with every message, and cloudpickle pickles a closure by value,
    scanning every loaded module for each one (about 1 ms per closure per message in a driver that
    has torch loaded); a partial of an importable function pickles by reference.
    """
    bound = dict(flat_config) if flat_config is not None else None
    client = ClientApp(mods=[_secagg_when_asked])
    client.train()(functools.partial(_train, bound))
    client.query()(functools.partial(_query, bound))
    return client


app = make_client_app()
