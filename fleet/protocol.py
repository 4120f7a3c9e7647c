"""The wire contract between the server strategy and the device ClientApp.

Record keys are kebab-case constants, as Flower's. A train message carries the
global arrays (``arrays``), the per-device instruction (``config``) and, the first
time a device is sampled, the float reference (``reference``). A reply carries the
encoded update (``arrays``), numbers (``metrics``) and strings (``report``). Records
cannot hold ``None``: absent numbers are ``-1.0`` and float precision is ``bits = 32``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
REPORT = "report"
REFERENCE = "reference"
STATE_ARRAYS = "edgefleet-state"
WEIGHT_KEY = "num-examples"
MISSING = -1.0

STATUSES = ("ok", "straggler", "oom", "offline", "failed", "rejected")

# Query messages (MessageType.QUERY): CONFIG[ASK] says what the server asks.
ASK = "ask"
ASK_ROSTER = "device"  # "which device are you": the reply's REPORT holds DEVICE
ASK_STREAM = "stream"  # the continual phase (QCore): CONFIG holds DEVICE and PROFILE; ARRAYS, CORE, BFN the deployment
DEVICE = "device"
PROFILE = "profile"
CORE = "core"  # the initial QCore: arrays "x" and "y"
BFN = "bfn"  # the bit-flipping networks' state

__all__ = ["DeviceInstruction", "DeviceReport", "ARRAYS", "CONFIG", "METRICS", "REPORT", "REFERENCE",
           "STATUSES", "WEIGHT_KEY", "MISSING", "STATE_ARRAYS", "ASK", "ASK_ROSTER", "ASK_STREAM", "DEVICE",
           "PROFILE", "CORE", "BFN", "REPORT_EXTRAS", "CLC_EXTRAS", "UNCLIPPED", "record", "scalar"]

R = TypeVar("R", ArrayRecord, MetricRecord, ConfigRecord)
Scalar = int | float | str | bytes | bool  # what a Flower record holds besides lists


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def record(content: RecordDict, key: str, kind: type[R]) -> R:
    """``content[key]``, which this contract says is a ``kind`` record (Flower types it as any record)."""
    rec = content[key]
    assert isinstance(rec, kind), f"record {key!r} is a {type(rec).__name__}, not a {kind.__name__}"
    return rec


def scalar(v: Scalar | list[Any]) -> Scalar:
    """A record value this contract writes as a scalar (Flower types every value as scalar or list)."""
    assert not isinstance(v, list), f"expected a scalar record value, got a list: {v!r}"
    return v


@dataclass(frozen=True)
class DeviceInstruction:
    """What the server tells one device for one round."""

    server_round: int
    device: int
    profile: str
    weight_bits: int
    act_bits: int
    participation: int  # how many times this device trained before (its own round counter)
    ref_hash: str
    deadline_s: float = 0.0
    fault: str = ""  # injected fault kind for this device-round ("" = none)
    proximal_mu: float = 0.0
    lr: float = 0.0  # the round's base learning rate (0 = the scenario's train.lr)
    lr_window_start: float = 0.0  # the share of the training job this round covers (train.lr-scope)
    lr_window_end: float = 1.0
    evaluate: bool = True  # evaluate the received model on the device's held-out split
    batch_size: int = 0  # 0 = the scenario's
    state_dir: str = ""  # the device's local storage for its state ("" = Flower's context.state)
    clip_norm: float = 0.0  # the round's DP clipping norm (adaptive clipping; 0 = the scenario's)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({_kebab(f.name): getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> DeviceInstruction:
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _kebab(f.name)
            if key in rec:
                kw[f.name] = rec[key]
        return cls(**kw)


_REPORT_STRINGS = ("status", "profile", "method", "fault", "error")
#: The numbers a device may add to its report's ``extra`` (sent as ``x-<name>``): CLC's logged ratio and beta,
#: and under adaptive clipping its noised unclipped bit (inside the secure sum under secure aggregation).
CLC_EXTRAS = ("kd-clc-ratio", "clc-beta")
UNCLIPPED = "unclipped"
REPORT_EXTRAS = (*CLC_EXTRAS, UNCLIPPED)


@dataclass
class DeviceReport:
    """What a device reports about its round (besides the encoded update)."""

    device: int
    status: str = "ok"
    profile: str = ""
    method: str = "full"
    fault: str = ""
    error: str = ""
    bits: int = 32
    weight: float = 0.0  # aggregation weight (local data or coreset size)
    local_size: int = 0
    coreset_size: int = 0
    coreset_fraction: float = MISSING  # realized: coreset_size / local_size
    train_samples: int = 0
    train_steps: int = 0  # optimizer steps, summed over local epochs
    scoring_passes: int = 0
    teacher_passes: int = 0
    accuracy: float = MISSING
    loss: float = MISSING
    uplink_bytes: int = 0
    downlink_bytes: int = 0
    compute_s: float = 0.0
    comm_s: float = 0.0
    sim_time_s: float = 0.0
    energy_j: float = 0.0
    peak_mem_mb: float = 0.0
    wall_s: float = 0.0
    batch_size: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def to_records(self) -> tuple[MetricRecord, ConfigRecord]:
        nums: dict[str, Any] = {}
        strs: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "extra":
                nums.update({f"x-{k}": float(val) for k, val in v.items()})
            elif f.name in _REPORT_STRINGS:
                strs[_kebab(f.name)] = str(v)
            elif f.name == "weight":
                nums[WEIGHT_KEY] = float(v)
            else:
                nums[_kebab(f.name)] = v
        return MetricRecord(nums), ConfigRecord(strs)

    @classmethod
    def from_records(cls, metrics: MetricRecord, report: ConfigRecord) -> DeviceReport:
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                kw["extra"] = {k[2:]: float(scalar(v)) for k, v in metrics.items() if k.startswith("x-")}
            elif f.name in _REPORT_STRINGS:
                kw[f.name] = str(report.get(_kebab(f.name), ""))
            elif f.name == "weight":
                kw["weight"] = float(scalar(metrics.get(WEIGHT_KEY, 0.0)))
            elif _kebab(f.name) in metrics:
                kw[f.name] = {"int": int, "float": float}[str(f.type)](metrics[_kebab(f.name)])
        return cls(**kw)

    def as_row(self) -> dict[str, Any]:
        """The report as a ``devices.jsonl`` row (``None`` for absent numbers)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("weight", "extra")}
        for k in ("accuracy", "loss"):
            row[k] = None if row[k] == MISSING else row[k]
        for k in ("fault", "error"):
            row[k] = row[k] or None
        row.update(self.extra)
        return row
