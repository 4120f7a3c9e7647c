"""Simulated device hardware: the ``DeviceProfile`` catalogue and fleet assignment.

A profile is the only thing that makes one simulated device slower, smaller or
worse connected than another: Ray runs every virtual device on the same host, and
the virtual clock (``fleet.hardware.clock``) turns a profile plus the round's work into
seconds and joules. Figures and their sources: ``docs/device-profiles.md``.

Examples
--------
>>> build_profile("rpi4").memory_mb
2048.0
>>> assign_profiles(5, {"rpi4": 0.6, "mcu": 0.4}, seed=0).count("rpi4")
3
>>> nearest_bits(3, (2, 4, 8, 32))
4
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from fleet.hardware.availability import AvailabilitySpec, availability_from_dict

__all__ = [
    "PROFILES",
    "DeviceProfile",
    "assign_profiles",
    "build_profile",
    "nearest_bits",
    "profile_from_dict",
]

_POSITIVE = ("gflops", "memory_mb", "uplink_mbps", "downlink_mbps")
_NON_NEGATIVE = ("latency_ms", "energy_j_per_gflop", "radio_j_per_mb")


@dataclass(frozen=True)
class DeviceProfile:
    """Capabilities of one device class.

    Parameters
    ----------
    name : str
        Profile name (registry key).
    gflops : float
        Sustained training GFLOP/s for small-batch PyTorch-like training (not peak).
    memory_mb : float
        Memory budget available to training, MiB.
    uplink_mbps, downlink_mbps : float
        Sustained link throughput, Mbit/s (1e6 bit/s).
    latency_ms : float
        One-way setup latency paid once per message direction.
    bits : tuple of int
        Supported weight bit-widths, ascending; 32 means float training is supported.
    energy_j_per_gflop : float
        Joules per GFLOP of training compute (sustained power / ``gflops``).
    radio_j_per_mb : float
        Joules per MB (1e6 bytes) sent or received.
    availability : AvailabilitySpec
        Online/dropout model (default: always online, 1% dropout).
    """

    name: str
    gflops: float
    memory_mb: float
    uplink_mbps: float
    downlink_mbps: float
    latency_ms: float
    bits: tuple[int, ...]
    energy_j_per_gflop: float
    radio_j_per_mb: float
    availability: AvailabilitySpec = AvailabilitySpec()

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            value = getattr(self, name)
            if not value > 0 or not math.isfinite(value):
                raise ValueError(f"{self.name}.{name}: must be > 0, got {value}")
        for name in _NON_NEGATIVE:
            value = getattr(self, name)
            if not value >= 0 or not math.isfinite(value):
                raise ValueError(f"{self.name}.{name}: must be >= 0, got {value}")
        if not self.bits or any(not 1 <= b <= 32 for b in self.bits):
            raise ValueError(f"{self.name}.bits: must be a non-empty list of ints in 1..32, got {self.bits}")


def _markov(on_to_off: float, off_to_on: float, dropout: float) -> AvailabilitySpec:
    return AvailabilitySpec("markov", p_on_to_off=on_to_off, p_off_to_on=off_to_on, p_dropout=dropout)


# Derivations in docs/device-profiles.md. Compute: peak FP32 x efficiency;
# energy: sustained power / gflops; radio: Huang et al. 2012 power model at the
# profile's own rates, averaged over uplink and downlink.
PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("mcu", gflops=0.1, memory_mb=0.5, uplink_mbps=0.375, downlink_mbps=0.3,
                      latency_ms=15.0, bits=(4, 8), energy_j_per_gflop=3.3,
                      radio_j_per_mb=32.9, availability=_markov(0.1, 0.1, 0.05)),
        DeviceProfile("rpi4", gflops=3.8, memory_mb=2048.0, uplink_mbps=45.7,
                      downlink_mbps=85.7, latency_ms=21.0, bits=(2, 4, 8, 32),
                      energy_j_per_gflop=1.7, radio_j_per_mb=1.7),
        DeviceProfile("rpi5", gflops=12.0, memory_mb=4096.0, uplink_mbps=45.7,
                      downlink_mbps=85.7, latency_ms=21.0, bits=(2, 4, 8, 16, 32),
                      energy_j_per_gflop=0.67, radio_j_per_mb=1.7),
        DeviceProfile("jetson-nano", gflops=35.0, memory_mb=1536.0, uplink_mbps=45.7,
                      downlink_mbps=85.7, latency_ms=21.0, bits=(16, 32),
                      energy_j_per_gflop=0.29, radio_j_per_mb=1.7),
        DeviceProfile("jetson-orin-nano", gflops=190.0, memory_mb=3584.0, uplink_mbps=45.7,
                      downlink_mbps=85.7, latency_ms=21.0, bits=(4, 8, 16, 32),
                      energy_j_per_gflop=0.079, radio_j_per_mb=1.7),
        DeviceProfile("phone-low", gflops=2.3, memory_mb=256.0, uplink_mbps=6.0,
                      downlink_mbps=13.0, latency_ms=40.0, bits=(8, 32),
                      energy_j_per_gflop=1.1, radio_j_per_mb=3.2,
                      availability=_markov(0.4, 0.1, 0.1)),
        DeviceProfile("phone-mid", gflops=11.5, memory_mb=512.0, uplink_mbps=11.2,
                      downlink_mbps=36.0, latency_ms=40.0, bits=(8, 16, 32),
                      energy_j_per_gflop=0.35, radio_j_per_mb=2.6,
                      availability=_markov(0.3, 0.1, 0.05)),
        DeviceProfile("phone-flagship", gflops=22.5, memory_mb=1024.0, uplink_mbps=21.1,
                      downlink_mbps=166.0, latency_ms=40.0, bits=(4, 8, 16, 32),
                      energy_j_per_gflop=0.27, radio_j_per_mb=2.2,
                      availability=_markov(0.3, 0.15, 0.03)),
    )
}


def build_profile(name: str) -> DeviceProfile:
    """Built-in profile by name; raises ValueError listing the valid names."""
    if name not in PROFILES:
        raise ValueError(f"unknown device profile '{name}'; valid: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key}: must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _bits(key: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{key}: must be a non-empty list of ints, got {value!r}")
    for b in value:
        if isinstance(b, bool) or not isinstance(b, int):
            raise ValueError(f"{key}: must be a list of ints, got element {b!r}")
        if not 1 <= b <= 32:
            raise ValueError(f"{key}: bit-widths must be in 1..32, got {b}")
    return tuple(sorted(set(value)))


def profile_from_dict(name: str, d: dict[str, Any], key_prefix: str) -> DeviceProfile:
    """Build a user profile from a TOML table, e.g. ``[devices.custom.myboard]``.

    Every field of ``DeviceProfile`` except ``name`` is required, unless the table
    names a built-in ``base`` profile to start from; ``availability`` is a sub-table
    (default: always online). Errors are one line starting with the full key, e.g.
    ``devices.custom.myboard.gflops: must be > 0, got -1``.

    Parameters
    ----------
    name : str
        Profile name.
    d : dict
        The table's contents.
    key_prefix : str
        Dotted key of the table holding the profile, e.g. ``"devices.custom"``; the
        full key is ``<key_prefix>.<name>``. A prefix that already ends with
        ``.<name>`` is used as is.
    """
    table = key_prefix if key_prefix.endswith(f".{name}") else f"{key_prefix}.{name}"
    if not isinstance(d, dict):
        raise ValueError(f"{table}: must be a table, got {type(d).__name__}")
    known = [f.name for f in fields(DeviceProfile) if f.name != "name"] + ["base"]
    for key in d:
        if key not in known:
            raise ValueError(f"{table}.{key}: unknown field; valid: {', '.join(known)}")
    values: dict[str, Any] = {}
    if "base" in d:
        base = d["base"]
        if not isinstance(base, str) or base not in PROFILES:
            raise ValueError(f"{table}.base: unknown profile {base!r}; valid: {', '.join(sorted(PROFILES))}")
        values = {f.name: getattr(PROFILES[base], f.name) for f in fields(DeviceProfile)}
    for key in _POSITIVE + _NON_NEGATIVE:
        if key in d:
            values[key] = _number(f"{table}.{key}", d[key])
        elif key not in values:
            raise ValueError(f"{table}.{key}: missing (required unless 'base' is given)")
    for key in _POSITIVE:
        if not values[key] > 0 or not math.isfinite(values[key]):
            raise ValueError(f"{table}.{key}: must be > 0, got {d[key]}")
    for key in _NON_NEGATIVE:
        if not values[key] >= 0 or not math.isfinite(values[key]):
            raise ValueError(f"{table}.{key}: must be >= 0, got {d[key]}")
    if "bits" in d:
        values["bits"] = _bits(f"{table}.bits", d["bits"])
    elif "bits" not in values:
        raise ValueError(f"{table}.bits: missing (required unless 'base' is given)")
    if "availability" in d:
        values["availability"] = availability_from_dict(d["availability"], f"{table}.availability")
    values.setdefault("availability", AvailabilitySpec())
    values["name"] = name
    return DeviceProfile(**values)


def assign_profiles(
    num_devices: int,
    mix: dict[str, float],
    seed: int,
    *,
    valid_names: Collection[str] | None = None,
) -> list[str]:
    """Profile name of every device, with exact mix proportions.

    Counts follow the largest-remainder method (floors of ``weight * num_devices``,
    then the leftover devices go to the largest fractional parts, ties to the
    earlier mix entry); the resulting list is then shuffled with a generator seeded
    by ``seed``, so device ids carry no profile order.

    Parameters
    ----------
    num_devices : int
        Fleet size.
    mix : dict of str to float
        Profile name -> share, ``>= 0`` and summing to 1 (+-1e-6). Errors name the
        key ``devices.profiles.<name>``.
    seed : int
        Shuffle seed.
    valid_names : collection of str, optional
        Names that may appear in ``mix`` (default: the built-in ``PROFILES``; pass
        them plus the user's custom profile names).
    """
    valid = sorted(PROFILES if valid_names is None else valid_names)
    if num_devices < 0:
        raise ValueError(f"num_devices: must be >= 0, got {num_devices}")
    if not mix:
        raise ValueError(f"devices.profiles: empty mix; valid profiles: {', '.join(valid)}")
    for name, weight in mix.items():
        key = f"devices.profiles.{name}"
        if name not in valid:
            raise ValueError(f"{key}: unknown profile; valid: {', '.join(valid)}")
        w = _number(key, weight)
        if not w >= 0 or not math.isfinite(w):
            raise ValueError(f"{key}: must be >= 0, got {weight}")
    total = sum(float(w) for w in mix.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"devices.profiles: weights must sum to 1 (+-1e-6), got {total}")
    names = list(mix)
    # normalise away the +-1e-6 slack so the counts add up to num_devices exactly
    quotas = np.array([float(mix[n]) / total * num_devices for n in names])  # (P,)
    counts = np.floor(quotas).astype(int)
    leftover = num_devices - int(counts.sum())
    # stable sort on -fraction: ties go to the earlier mix entry
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:leftover]] += 1
    labels = [n for n, c in zip(names, counts, strict=True) for _ in range(c)]
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [labels[i] for i in perm]


def nearest_bits(requested: int, supported: tuple[int, ...]) -> int:
    """Supported bit-width nearest to ``requested``; ties go to the higher width."""
    if not supported:
        raise ValueError("supported: no bit-widths given")
    return min(supported, key=lambda b: (abs(b - requested), -b))
