"""Which devices train this round, and which of them misbehave: seeded by (seed, round).

Drawing from an explicit generator per round (not Python's global ``random``,
which Flower's own sampler uses) makes a round's cohort a pure function of the
seed and round number, so a resumed run samples exactly what the original would.

Examples
--------
>>> online = np.array([True, False, True, True])
>>> sample_devices(online, 2, seed=0, server_round=1) == sample_devices(online, 2, 0, 1)
True
"""

from __future__ import annotations

import numpy as np

from fleet.config.schema import FaultsConfig
from fleet.hardware.faults import FAULT_KINDS

__all__ = ["sample_devices", "draw_faults"]

_SAMPLE, _FAULTS = 0x5A, 0xFA


def sample_devices(online: np.ndarray, want: int, seed: int, server_round: int) -> list[int]:
    """Up to ``want`` distinct online devices, uniformly, sorted by index."""
    pool = np.flatnonzero(online)
    rng = np.random.default_rng([seed, server_round, _SAMPLE])
    k = min(want, len(pool))
    return sorted(int(d) for d in rng.choice(pool, size=k, replace=False)) if k else []


def draw_faults(faults: FaultsConfig, devices: list[int], seed: int, server_round: int) -> dict[int, str]:
    """Injected fault per device-round (``[faults]`` probabilities; at most one fault each)."""
    probs = [(kind, getattr(faults, kind)) for kind in FAULT_KINDS]  # the [faults] keys, in this order
    if not any(p for _, p in probs):
        return {}
    out = {}
    for dev in devices:
        u = np.random.default_rng([seed, server_round, dev, _FAULTS]).random()
        edge = 0.0
        for kind, p in probs:
            edge += p
            if u < edge:
                out[dev] = kind
                break
    return out
