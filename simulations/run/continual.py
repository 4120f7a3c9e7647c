"""The continual phase (QCore, ``[stream]``): after the federated phase, deploy and calibrate on devices.

Off the devices (here, on the server, with the public split only): fine-tune the float
model while recording quantization misses at several bit-widths, draw the QCore from the
miss counts, quantize, back-propagation-calibrate on the QCore and train the bit-flipping
networks. Then every device receives the deployment and runs its own drifting stream.
Results: ``continual.jsonl`` (a line per device and task) and a ``continual`` block in the summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fleet import protocol as P
from fleet.config.scenario import ScenarioConfig
from fleet.data.splits import FleetData
from fleet.errors import reason_line
from fleet.qcore.continual import deploy
from fleet.qcore.device import continual_config
from fleet.qcore.misses import count_misses, sample_core, train_float_recording
from fleet.qcore.quant import to_qcore
from strategies.wrapper import FleetStrategy

log = logging.getLogger(__name__)

__all__ = ["public_rows", "run_stream_phase"]

FALLBACK_PUBLIC = 512  # without a public split, the server uses the first training rows (a simulation shortcut)


def public_rows(fd: FleetData) -> np.ndarray:
    """The rows the server records misses on and draws the QCore from: the public split, if there is one."""
    return fd.public if len(fd.public) else np.concatenate(fd.train)[:FALLBACK_PUBLIC]


def _record(state: dict[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v.detach().cpu().numpy())) for k, v in state.items()})


def run_stream_phase(grid: Grid, cfg: ScenarioConfig, strategy: FleetStrategy, float_model: nn.Module,
                     fd: FleetData, run_dir: Path, append_rows) -> dict[str, Any]:  # noqa: ANN001
    """Deploy with QCore and run every device's stream; returns the summary's ``continual`` block."""
    ds = fd.dataset
    pub = public_rows(fd)
    x_pub, y_pub = ds.x_train[pub], ds.y_train[pub]
    ccfg = continual_config(cfg)
    gen = torch.Generator().manual_seed(cfg.federation.seed)
    rng = np.random.default_rng([cfg.federation.seed, 0xC0DE])
    model = float_model
    records = train_float_recording(model, x_pub, y_pub, cfg.stream.record_epochs, gen, lr=cfg.model.pretrain_lr,
                                    record_every=max(1, cfg.stream.record_epochs // 5))
    counts = count_misses(records)
    if cfg.stream.calibration == "backprop-random":
        idx = rng.choice(len(y_pub), ccfg.core_size, replace=False)
    else:
        idx = sample_core(counts, ccfg.core_size, rng)
    core = (x_pub[torch.from_numpy(np.asarray(idx))], y_pub[torch.from_numpy(np.asarray(idx))])
    qmodel = to_qcore(model, ccfg.bits, x_pub[:128])
    dep = deploy(qmodel, core, ccfg, [], gen, with_bfns=cfg.stream.calibration == "bfn")
    content = {P.ARRAYS: _record(dep.model.state_dict()),
               P.CORE: ArrayRecord({"x": Array(core[0].numpy()), "y": Array(core[1].numpy())})}
    if dep.bfns is not None:
        content[P.BFN] = _record(dep.bfns.state_dict())
    devices = sorted(strategy.nodes)
    if cfg.stream.devices:
        devices = devices[: cfg.stream.devices]
    msgs = []
    for dev in devices:
        rec = RecordDict(dict(content))
        rec[P.CONFIG] = ConfigRecord({P.ASK: P.ASK_STREAM, P.DEVICE: dev, P.PROFILE: strategy.profiles[dev]})
        msgs.append(Message(rec, dst_node_id=strategy.nodes[dev], message_type=MessageType.QUERY))
    rows: list[dict[str, Any]] = []
    failed = 0
    for reply in grid.send_and_receive(msgs, timeout=cfg.federation.round_timeout_s):
        if reply.has_error():
            failed += 1
            log.warning("stream: device failed: %s", reason_line(reply.error.reason))
            continue
        m = P.record(reply.content, P.METRICS, MetricRecord)
        dev = int(P.scalar(m[P.DEVICE]))
        tasks = m["task"]
        assert isinstance(tasks, list)  # the device reports one value per task (fleet.client_app)
        n = len(tasks)
        for i in range(n):
            rows.append({"device": dev, "calibration": cfg.stream.calibration, "bits": ccfg.bits,
                         **{k: (None if not np.isfinite(v[i]) else v[i]) for k, v in m.items()
                            if isinstance(v, list)}})
    rows.sort(key=lambda r: (r["device"], r["task"]))
    for r in rows:
        r["task"] = int(r["task"])
    append_rows("continual.jsonl", rows)
    return _summarise(rows, len(devices), failed, cfg)


def _summarise(rows: list[dict[str, Any]], devices: int, failed: int, cfg: ScenarioConfig) -> dict[str, Any]:
    tasks = sorted({r["task"] for r in rows})
    per_task = []
    for t in tasks:
        sel = [r for r in rows if r["task"] == t]
        stat = {"task": t}
        for k in ("accuracy_task", "accuracy_original", "accuracy_core", "codes_changed"):
            v = np.array([r[k] for r in sel if r.get(k) is not None], dtype=float)
            stat[f"{k}_mean"] = float(v.mean()) if len(v) else None
            stat[f"{k}_std"] = float(v.std()) if len(v) else None
        per_task.append(stat)
    return {"calibration": cfg.stream.calibration, "bits": cfg.stream.bits, "drift": cfg.stream.drift,
            "devices": devices, "devices_failed": failed, "per_task": per_task,
            "flops_total": float(sum(r["flops"] for r in rows)),
            "energy_j_total": float(sum(r["energy_j"] for r in rows)),
            "sim_time_s_mean_per_task": float(np.mean([r["sim_time_s"] for r in rows])) if rows else 0.0}
