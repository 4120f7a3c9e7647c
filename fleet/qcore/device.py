"""A device's continual phase (QCore): its local data arrives as a drifting stream after deployment.

The server deploys a QCore model, its BFNs and the initial core; the device rebuilds them,
runs :func:`fleet.qcore.continual.run_device_stream` on its own data (which never leaves it),
and charges the FLOPs it spent on calibration and core updates to its profile's clock and energy.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, MetricRecordValues, RecordDict

from fleet import protocol as P
from fleet.arrays import record_to_numpy
from fleet.config.scenario import ScenarioConfig
from fleet.data.splits import device_data, fleet_data
from fleet.hardware.catalogue import resolve_profile
from fleet.model.architectures import build_model
from fleet.qcore.bfn import BFNSet
from fleet.qcore.continual import ContinualConfig, run_device_stream
from fleet.qcore.quant import to_qcore

__all__ = ["continual_config", "rebuild_deployment", "run_stream_device", "stream_metrics"]


def continual_config(cfg: ScenarioConfig) -> ContinualConfig:
    """The ``[stream]`` keys as QCore's config."""
    s = cfg.stream
    return ContinualConfig(tasks=s.tasks, drift=s.drift, core_size=s.core_size, bits=s.bits,
                           calibration=s.calibration, epochs=s.calibration_epochs, code_lr=s.code_lr,
                           batch_size=s.calibration_batch, codes_only=s.codes_only,
                           code_optimizer=s.code_optimizer)


def rebuild_deployment(cfg: ScenarioConfig, model_state: dict[str, torch.Tensor],
                       bfn_state: dict[str, torch.Tensor] | None, core_x: torch.Tensor):  # noqa: ANN201
    """The deployed QCore model (and BFNs) from their states, on this device's copy of the architecture."""
    ds = fleet_data(cfg).dataset
    qmodel = to_qcore(build_model(cfg.model.arch, ds.in_shape, ds.num_classes), cfg.stream.bits, core_x)
    qmodel.load_state_dict(model_state)
    bfns = None
    if bfn_state:
        bfns = BFNSet(qmodel)
        bfns.load_state_dict(bfn_state)
    return qmodel, bfns


def run_stream_device(cfg: ScenarioConfig, device: int, profile_name: str, model_state: dict[str, torch.Tensor],
                      bfn_state: dict[str, torch.Tensor] | None, core: tuple[torch.Tensor, torch.Tensor]
                      ) -> list[dict[str, float]]:
    """Run device ``device``'s stream; one row per task with accuracies, FLOPs, simulated time and energy."""
    data = device_data(cfg, device)
    ccfg = continual_config(cfg)
    qmodel, bfns = rebuild_deployment(cfg, model_state, bfn_state, core[0])
    rng = np.random.default_rng([cfg.federation.seed, device, 0x57AE])
    tasks = run_device_stream(qmodel, data.x, data.y, data.x_val, data.y_val, ccfg, rng, core=core, bfns=bfns)
    profile = resolve_profile(cfg, profile_name)
    rows = []
    for t in tasks:
        row = {k: float(v) for k, v in asdict(t).items()}
        gflop = t.flops / 1e9
        row["sim_time_s"] = gflop / profile.gflops
        row["energy_j"] = gflop * profile.energy_j_per_gflop
        rows.append(row)
    return rows


def stream_metrics(cfg: ScenarioConfig, content: RecordDict, partition_id: int) -> MetricRecord:
    """The device's answer to the server's stream query (``fleet/protocol.py``: ASK_STREAM): the deployment
    rebuilt from ``content``, its stream run, one list per metric over the tasks."""
    config = P.record(content, P.CONFIG, ConfigRecord)
    device = int(P.scalar(config[P.DEVICE]))
    if partition_id not in (-1, device):
        raise ValueError(f"stream for device {device} reached device {partition_id}")

    def tensors(key: str) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in record_to_numpy(P.record(content, key, ArrayRecord)).items()}

    core = tensors(P.CORE)
    rows = run_stream_device(cfg, device, str(config[P.PROFILE]), tensors(P.ARRAYS),
                             tensors(P.BFN) if P.BFN in content else None, (core["x"], core["y"]))
    metrics: dict[str, MetricRecordValues] = {k: [float(r[k]) for r in rows] for k in rows[0]} if rows else {}
    metrics[P.DEVICE] = device
    return MetricRecord(metrics)
