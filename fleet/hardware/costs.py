"""Virtual-clock cost model: compute, communication and energy of one device round.

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
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fleet.hardware.profiles import DeviceProfile

__all__ = [
    "DEADLINE_POLICIES",
    "RoundCost",
    "apply_deadline",
    "device_round_cost",
    "model_flops",
    "round_time",
    "truncate_cost",
]

DEADLINE_POLICIES = ("drop", "cut")
_TRAIN_PASSES = 3.0  # forward + backward (2x forward), as FedScale's completion time

# Elementwise modules: one FLOP per output element.
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish,
                nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)


def _module_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    """Forward FLOPs of one leaf module for the hooked (1-sample) call."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        macs = out.numel() * (module.in_channels // module.groups) * kh * kw
        return 2 * macs + (out.numel() if module.bias is not None else 0)
    if isinstance(module, nn.Linear):
        rows = out.numel() // module.out_features
        macs = rows * module.in_features * module.out_features
        return 2 * macs + (out.numel() if module.bias is not None else 0)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return 2 * out.numel()  # folded to y = a*x + b per element
    if isinstance(module, _ELEMENTWISE):
        return out.numel()
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                           nn.AdaptiveMaxPool2d)):
        return inp.numel()  # every input element is read once by some window
    return 0


def model_flops(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Forward FLOPs per sample, measured once with forward hooks on a 1-sample input.

    Counted: 2*MACs (+ bias adds) of ``Conv2d``/``Linear`` (subclasses included, so
    quantized layers that subclass them count), 2 per element for batch norm, 1 per
    element for activations, 1 per input element for pooling. Not counted: residual
    additions and other functional ops outside modules, and fake-quantization
    (``device_round_cost(qat_overhead=...)`` covers it). Conv/Linear dominate for
    every registry model, so the omissions are a few percent.

    Parameters
    ----------
    model : nn.Module
        Model to measure; its train/eval flags are restored afterwards.
    in_shape : tuple of int
        Input shape of one sample, ``(C, H, W)``.
    """
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if len(list(module.children())) == 0 and isinstance(out, torch.Tensor):
            total += _module_flops(module, args[0], out)

    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        # eval: batch-1 batch norm in train mode would fail on (1, C) inputs and
        # would update running statistics; the FLOP count does not depend on it.
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *in_shape), device=device))  # (1, C, H, W)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return int(total)


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


def apply_deadline(cost: RoundCost, deadline_s: float, policy: str) -> tuple[str, float]:
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
        has; the fraction is the compute time left after communication over the
        full compute time (FedProx-style partial work).

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
    budget_s = deadline_s - cost.comm_s
    if budget_s <= 0 or cost.compute_s <= 0:
        return "straggler", 0.0
    return "ok", budget_s / cost.compute_s


def truncate_cost(profile: DeviceProfile, cost: RoundCost, work_fraction: float) -> RoundCost:
    """Cost of doing only ``work_fraction`` of the compute (the "cut" policy).

    Communication and radio energy are unchanged; compute time, GFLOP and compute
    energy scale linearly.
    """
    if not 0.0 <= work_fraction <= 1.0:
        raise ValueError(f"work_fraction: must be in [0, 1], got {work_fraction}")
    radio_j = cost.energy_j - cost.gflop * profile.energy_j_per_gflop
    compute_s = cost.compute_s * work_fraction
    gflop = cost.gflop * work_fraction
    return RoundCost(compute_s, cost.comm_s, compute_s + cost.comm_s,
                     gflop * profile.energy_j_per_gflop + radio_j, gflop)


def round_time(costs_of_accepted: Iterable[RoundCost]) -> float:
    """Virtual length of a synchronous round: the slowest accepted device (0 if none)."""
    return max((c.total_s for c in costs_of_accepted), default=0.0)
