"""Virtual clock: compute time, communication time and energy of one device round.

The clock follows FedScale: a training sample costs three forward passes (forward
plus a backward twice as expensive), an inference pass (teacher outputs, coreset
scoring) costs one, and communication is bytes over bandwidth plus a fixed latency
per direction. Time is virtual: it never depends on the host that runs the
simulation, only on the ``DeviceProfile``.

Units: GFLOP = 1e9 FLOP, Mbit/s = 1e6 bit/s, MB (radio energy) = 1e6 bytes.

Examples
--------
>>> from fleet.hardware.profiles import PROFILES
>>> cost = device_round_cost(PROFILES["rpi4"], 1_000_000, 100, 0, 0, 0, 0)
>>> round(cost.gflop, 3)
0.3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fleet.hardware.profiles import DeviceProfile

__all__ = ["DEADLINE_POLICIES", "RoundCost", "apply_deadline", "device_round_cost"]

DEADLINE_POLICIES = ("drop", "cut")
_TRAIN_PASSES = 3.0  # forward + backward (2x forward), as FedScale's completion time


@dataclass(frozen=True)
class RoundCost:
    """Virtual time and energy of one device round.

    Parameters
    ----------
    compute_s : float
        Seconds of local computation.
    comm_s : float
        Seconds of download plus upload, latencies included.
    total_s : float
        ``compute_s + comm_s``.
    energy_j : float
        Joules: compute plus radio.
    gflop : float
        Work done, in GFLOP.
    """

    compute_s: float
    comm_s: float
    total_s: float
    energy_j: float
    gflop: float


def _check_count(name: str, value: float) -> None:
    if value < 0 or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number >= 0, got {value}")


def device_round_cost(
    profile: DeviceProfile,
    flops_per_sample: int,
    train_samples: int,
    teacher_samples: int,
    scoring_samples: int,
    uplink_bytes: int,
    downlink_bytes: int,
    qat_overhead: float = 1.0,
) -> RoundCost:
    """Cost of one round on ``profile``.

    ``gflop = flops * (3 * train * qat_overhead + teacher + scoring) / 1e9``;
    ``comm = 8*down/(downlink*1e6) + 8*up/(uplink*1e6) + 2*latency`` (each direction
    pays the latency, even a zero-byte one, because the round always has both a
    request and a reply); ``energy = gflop*energy_j_per_gflop + (up+down)/1e6 *
    radio_j_per_mb``.

    Parameters
    ----------
    profile : DeviceProfile
        Simulated hardware.
    flops_per_sample : int
        Forward FLOPs of the trained model for one sample (``model_flops``).
    train_samples : int
        Samples passed through forward+backward (epochs included).
    teacher_samples : int
        Samples passed through the teacher (forward only). Callers whose teacher is
        a different architecture should scale this by its FLOP ratio.
    scoring_samples : int
        Forward-only passes for coreset scoring.
    uplink_bytes, downlink_bytes : int
        Encoded update size and received model size.
    qat_overhead : float
        Multiplier on the training passes for fake quantization (default: 1.0).
        Teacher and scoring passes are counted at float cost (a choice: scoring
        may run the float reference, and fake-quant cost is small next to a conv).
    """
    for name, value in (("flops_per_sample", flops_per_sample),
                        ("train_samples", train_samples),
                        ("teacher_samples", teacher_samples),
                        ("scoring_samples", scoring_samples),
                        ("uplink_bytes", uplink_bytes),
                        ("downlink_bytes", downlink_bytes)):
        _check_count(name, value)
    if not qat_overhead >= 1.0:
        raise ValueError(f"qat_overhead: must be >= 1, got {qat_overhead}")
    passes = _TRAIN_PASSES * train_samples * qat_overhead + teacher_samples + scoring_samples
    gflop = flops_per_sample * passes / 1e9
    compute_s = gflop / profile.gflops
    latency_s = profile.latency_ms / 1000.0
    comm_s = (downlink_bytes * 8 / (profile.downlink_mbps * 1e6) + latency_s
              + uplink_bytes * 8 / (profile.uplink_mbps * 1e6) + latency_s)
    energy_j = (gflop * profile.energy_j_per_gflop
                + (uplink_bytes + downlink_bytes) / 1e6 * profile.radio_j_per_mb)
    return RoundCost(compute_s, comm_s, compute_s + comm_s, energy_j, gflop)


def apply_deadline(cost: RoundCost, deadline_s: float, policy: str, fixed_s: float = 0.0) -> tuple[str, float]:
    """Decide whether a device meets the round deadline.

    Parameters
    ----------
    cost : RoundCost
        The device's full-work cost.
    deadline_s : float
        Round deadline in virtual seconds; ``<= 0`` means no deadline.
    policy : str
        ``"drop"``: a late device is a straggler and contributes nothing.
        ``"cut"``: a late device stops computing at the deadline and sends what it
        has; the fraction is the compute time left after communication and ``fixed_s``
        over the compute time that can be cut (FedProx-style partial work).
    fixed_s : float
        Compute seconds already spent before training and not cut (coreset scoring).

    Returns
    -------
    tuple of (str, float)
        ``(status, work_fraction)`` with status ``"ok"`` or ``"straggler"``.
    """
    if policy not in DEADLINE_POLICIES:
        raise ValueError(f"unknown deadline policy '{policy}'; valid: {', '.join(DEADLINE_POLICIES)}")
    if deadline_s <= 0 or cost.total_s <= deadline_s:
        return "ok", 1.0
    if policy == "drop":
        return "straggler", 0.0
    budget_s = deadline_s - cost.comm_s - fixed_s
    cuttable_s = cost.compute_s - fixed_s
    if budget_s <= 0 or cuttable_s <= 0:
        return "straggler", 0.0
    return "ok", budget_s / cuttable_s
