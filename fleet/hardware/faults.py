"""Injected device faults (``[faults]``): crashes, hangs, corrupted and stale updates.

The server draws which device-rounds are faulty (so the draw is reproducible and
resumable); the device acts the fault out here. Corruption takes one of three
forms, chosen by the device's RNG: NaN/Inf values, a wrong shape, or a huge norm.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["FAULT_KINDS", "CORRUPT_FORMS", "maybe_crash", "maybe_hang", "apply_payload_fault", "InjectedCrash"]

FAULT_KINDS = ("crash", "hang", "corrupt", "stale")  # drawn in this order (strategies/sampling.py)
CORRUPT_FORMS = ("nan", "shape", "norm")  # faults.corrupt-form, besides "any"


class InjectedCrash(RuntimeError):
    """A crash injected by ``faults.crash`` (the device dies mid-training)."""


def maybe_crash(kind: str) -> None:
    if kind == "crash":
        raise InjectedCrash("injected crash (faults.crash)")


def maybe_hang(kind: str, timeout_s: float) -> None:
    """Hang past the round timeout, so the server closes the round without this device."""
    if kind == "hang":
        time.sleep(timeout_s + 1.0)


def apply_payload_fault(kind: str, payload: dict[str, np.ndarray], global_arrays: dict[str, np.ndarray],
                        codec, qinfo, rng: np.random.Generator,  # noqa: ANN001
                        form: str = "any") -> dict[str, np.ndarray]:
    """Return the payload as the faulty device would send it."""
    if kind == "stale":
        # Silently send back the model it received, encoded as a real update would be.
        return codec.encode(dict(global_arrays), global_arrays, rng, qinfo)
    if kind != "corrupt":
        return payload
    if form == "any":
        form = CORRUPT_FORMS[int(rng.integers(len(CORRUPT_FORMS)))]
    out = dict(payload)
    key = max((k for k, v in out.items() if v.dtype.kind == "f"), key=lambda k: out[k].size)
    arr = out[key].astype(np.float32, copy=True)
    if form == "nan":
        arr.flat[int(rng.integers(arr.size))] = np.nan
        arr.flat[int(rng.integers(arr.size))] = np.inf
    elif form == "shape":
        arr = arr.reshape(-1)[:-1].copy() if arr.size > 1 else np.zeros(2, np.float32)
    else:
        arr = arr + rng.normal(0.0, 1e4, arr.shape).astype(np.float32)
    out[key] = arr.astype(payload[key].dtype) if form != "shape" else arr
    return out
