"""On-device accuracy statistics: one source for the report's figures, captions and table.

An on-device accuracy rests on the device's held-out samples (``partition.json``'s ``val``,
capped by ``federation.device-eval-limit`` when that is set). On small datasets these sets
are tiny (digits: 1-4 samples), so one device's accuracy moves in steps of 25-100 points.
Percentiles across devices and the worst-device ranking are therefore computed only over
devices whose held-out set has at least ``min_val_samples`` samples, and only when at
least ``min_devices`` devices qualify; otherwise they are reported as not computed.
Means are over every device that reported an accuracy (noise averages out in a mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulations.store.rundir import Run

__all__ = ["MIN_VAL_SAMPLES", "MIN_DEVICES", "WORST_SHARE", "eval_sizes", "size_range",
           "RoundSpread", "round_spread", "DeviceAccuracy", "device_accuracy"]

#: Default smallest held-out set (samples) a device needs to enter a percentile or ranking.
MIN_VAL_SAMPLES = 20
#: Default fewest qualifying devices for a 10th percentile (one in ten devices lies below it).
MIN_DEVICES = 10
#: Default share of qualifying devices listed as the worst.
WORST_SHARE = 0.1


def eval_sizes(run: Run) -> dict[int, int]:
    """Held-out samples behind each device's on-device accuracy (device -> count).

    ``partition.json``'s ``val`` count, capped by ``federation.device-eval-limit`` when it is
    above 0. Devices missing from ``partition.json`` (or a run without one) are absent.
    """
    limit = int(run.flat_config.get("federation.device-eval-limit") or 0)
    sizes: dict[int, int] = {}
    for dev in (run.partition or {}).get("devices", []):
        if dev.get("val") is not None:
            n = int(dev["val"])
            sizes[int(dev["device"])] = min(n, limit) if limit > 0 else n
    return sizes


def size_range(sizes: dict[int, int], devices: Any) -> str:
    """``"1-4 samples"`` for the held-out sizes of ``devices``, or ``"sizes unknown"``."""
    known = [sizes[d] for d in devices if d in sizes]
    if not known:
        return "sizes unknown"
    lo, hi = min(known), max(known)
    return f"{lo} sample{'s' if hi != 1 else ''}" if lo == hi else f"{lo}-{hi} samples"


@dataclass(frozen=True)
class RoundSpread:
    """On-device accuracy across one round's completed devices (accuracies 0..1).

    ``mean`` is over the ``n`` completed devices that reported an accuracy (as
    ``rounds.jsonl``'s ``device_accuracy_mean``); ``p10`` is over the ``n_qualified`` of them
    with a large enough held-out set, None when fewer than ``min_devices`` qualify.
    """

    round: int
    n: int
    mean: float | None
    n_qualified: int
    p10: float | None


def round_spread(run: Run, *, min_val_samples: int = MIN_VAL_SAMPLES,
                 min_devices: int = MIN_DEVICES) -> list[RoundSpread]:
    """One :class:`RoundSpread` per line of ``rounds.jsonl`` (round 0 included: no devices).

    Devices count when their status is ``ok`` and their accuracy is not null, the rule the
    recorder uses for ``device_accuracy_mean``. A run without ``devices.jsonl`` lines falls
    back to the recorded mean (``n`` = ``devices_completed``) and has no percentile.
    """
    sizes = eval_sizes(run)
    by_round: dict[int, list[tuple[int, float]]] = {}
    for rec in run.devices:
        if rec.get("status") == "ok" and rec.get("accuracy") is not None:
            by_round.setdefault(int(rec["round"]), []).append((int(rec["device"]),
                                                                float(rec["accuracy"])))
    out = []
    for r in sorted(run.rounds, key=lambda x: int(x["round"])):
        rnd = int(r["round"])
        accs = by_round.get(rnd, [])
        if not accs:
            recorded = r.get("device_accuracy_mean") if not run.devices else None
            n = int(r.get("devices_completed") or 0) if recorded is not None else 0
            out.append(RoundSpread(rnd, n, None if recorded is None else float(recorded), 0, None))
            continue
        qualified = [a for d, a in accs if sizes.get(d, 0) >= min_val_samples]
        p10 = float(np.percentile(qualified, 10)) if len(qualified) >= max(1, min_devices) else None
        out.append(RoundSpread(rnd, len(accs), float(np.mean([a for _, a in accs])),
                               len(qualified), p10))
    return out


@dataclass(frozen=True)
class DeviceAccuracy:
    """Each device's accuracy in the last round it reported one, and what may be said of it.

    Parameters
    ----------
    accuracy : dict of int to float
        Device -> on-device accuracy (0..1) in its last report, any status.
    rounds : dict of int to int
        Device -> the round of that report.
    sizes : dict of int to int
        Device -> held-out samples (:func:`eval_sizes`).
    min_val_samples, min_devices, share : int, int, float
        The rules (module docstring).
    """

    accuracy: dict[int, float]
    rounds: dict[int, int]
    sizes: dict[int, int]
    min_val_samples: int = MIN_VAL_SAMPLES
    min_devices: int = MIN_DEVICES
    share: float = WORST_SHARE

    @property
    def ranked(self) -> list[int]:
        """All devices, worst first (ties by device id)."""
        return sorted(self.accuracy, key=lambda d: (self.accuracy[d], d))

    @property
    def mean(self) -> float:
        """Mean accuracy over all devices (nan when there are none)."""
        return float(np.mean(list(self.accuracy.values()))) if self.accuracy else math.nan

    @property
    def qualified(self) -> list[int]:
        """Devices with at least ``min_val_samples`` held-out samples, worst first."""
        return [d for d in self.ranked if self.sizes.get(d, 0) >= self.min_val_samples]

    @property
    def enough(self) -> bool:
        """Whether enough devices qualify for a percentile and a worst-device list."""
        return len(self.qualified) >= max(1, self.min_devices)

    @property
    def p10(self) -> float | None:
        """10th percentile over the qualifying devices, or None when too few qualify."""
        if not self.enough:
            return None
        return float(np.percentile([self.accuracy[d] for d in self.qualified], 10))

    @property
    def worst(self) -> list[int]:
        """The ``ceil(share * Q)`` worst of the Q qualifying devices (empty when too few)."""
        q = self.qualified
        return q[: max(1, math.ceil(self.share * len(q)))] if self.enough else []

    def not_ranked_reason(self) -> str:
        """Why there is no percentile or worst list ("" when there is one)."""
        if self.enough:
            return ""
        known = "" if self.sizes else " (held-out sizes unknown: no partition.json)"
        q = len(self.qualified)
        return (f"{'none' if q == 0 else f'only {q}'} of the {len(self.accuracy)} devices have "
                f">= {self.min_val_samples} held-out samples (need {self.min_devices}; theirs: "
                f"{size_range(self.sizes, self.accuracy)}){known}")


def device_accuracy(run: Run, *, min_val_samples: int = MIN_VAL_SAMPLES,
                    min_devices: int = MIN_DEVICES, share: float = WORST_SHARE) -> DeviceAccuracy:
    """Each device's last reported on-device accuracy, with the rules attached."""
    last: dict[int, tuple[int, float]] = {}
    for rec in run.devices:
        acc = rec.get("accuracy")
        if acc is None:
            continue
        dev, rnd = int(rec["device"]), int(rec["round"])
        if dev not in last or rnd >= last[dev][0]:
            last[dev] = (rnd, float(acc))
    return DeviceAccuracy({d: a for d, (_, a) in last.items()}, {d: r for d, (r, _) in last.items()},
                          eval_sizes(run), min_val_samples, min_devices, share)
