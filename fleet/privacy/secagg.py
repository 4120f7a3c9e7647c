"""Secure aggregation, the device's side: the update as one integer vector SecAgg+ can sum exactly.

Flower's SecAgg+ (``secaggplus_mod``) masks a list of arrays and the server recovers only their sum. It
first maps each value ``x`` to ``(clip(x, -c, c) + c) * Q / (2c)`` with stochastic rounding; with the
clipping range ``c = 2^21`` (:data:`CLIP_RANGE`), the quantization range ``Q = 2^22`` (:data:`TARGET_RANGE`)
and weight 1 that map is ``x + c``: an integer stays exactly itself, and the server's sum of ``k``
devices is exact while ``k * 2^22 < 2^32`` (the modulus), i.e. up to 1023 devices per round.

So the device sends integers (:func:`to_integers`), in the order of the global state's sorted keys:

- a weight quantized on the fleet's shared grid (codec ``qweights``): its b-bit codes, unchanged;
- every other tensor (float layers, biases): fixed point, ``round(x * 2^F)`` with ``F`` =
  :data:`FRACTION_BITS` (16: a resolution of 1.5e-5, values up to +-32), rounded stochastically so the sum
  stays unbiased. Values beyond +-32 are clipped (none of this project's models has them).

The server divides the sum by the count and decodes it back (:func:`from_integers`): codes times the shared
step, fixed point over ``2^F``.

>>> base = {"w": np.zeros(3, np.float32)}
>>> ints = to_integers({"w": np.array([0.5, -1.25, 2.0], np.float32)}, base, None, np.random.default_rng(0))
>>> [int(v) for v in ints[0]]  # exact on the fixed-point grid
[32768, -81920, 131072]
>>> from_integers([ints[0].astype(np.float64)], base, None)["w"].tolist()
[0.5, -1.25, 2.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fleet.privacy.dp import is_public_key
from fleet.protocol import DeviceReport
from fleet.quant.codecs import CODES_SUFFIX
from fleet.quant.packing import unpack_codes
from fleet.quant.spec import QuantInfo, qrange

__all__ = ["CLIP_RANGE", "TARGET_RANGE", "MODULUS_RANGE", "FRACTION_BITS", "to_integers", "from_integers",
           "MAX_DEVICES", "UNCLIPPED_KEY", "fixed_point", "fixed_point_value",
           "fitres_content", "report_from_fitres", "NUMBER_PREFIX", "STRING_PREFIX"]

CLIP_RANGE = 2**21
TARGET_RANGE = 2**22
MODULUS_RANGE = 2**32
FRACTION_BITS = 16
MAX_DEVICES = MODULUS_RANGE // TARGET_RANGE - 1  # sums of more devices could wrap around the modulus
UNCLIPPED_KEY = "~unclipped"  # adaptive clipping's noised bit, appended after the model's arrays

State = dict[str, np.ndarray]


def to_integers(payload: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], qinfo: QuantInfo | None,
                rng: np.random.Generator) -> list[np.ndarray]:
    """The device's encoded update (a codec payload) as int64 arrays in sorted key order (module docstring).
    A tensor that is not finite (a diverged device) is sent as the global one: NaN cannot be summed."""
    out = []
    scale = float(2**FRACTION_BITS)
    for key in sorted(base):
        shape = np.shape(base[key])
        spec = qinfo.weights.get(key) if qinfo is not None else None
        if is_public_key(key):  # the server's own value: nothing to send
            out.append(np.zeros(shape, np.int64))
        elif spec is not None and key + CODES_SUFFIX in payload:
            codes = unpack_codes(payload[key + CODES_SUFFIX], spec.bits, int(np.prod(shape)), spec.signed)
            out.append(codes.astype(np.int64).reshape(shape))
        elif spec is not None:  # sent raw by the codec (not finite): the global weights' codes instead
            lo, hi = qrange(spec.bits, spec.signed)
            step = np.asarray(base[spec.step_key], np.float64)
            out.append(np.clip(np.round(np.asarray(base[key], np.float64) / step), lo, hi).astype(np.int64))
        else:
            out.append(_fixed_point(np.asarray(payload.get(key, base[key]), np.float64), base[key], scale, rng))
    return out


def _fixed_point(x: np.ndarray, fallback: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """``round(x * scale)`` stochastically, within the clipping range (``fallback`` when ``x`` is not finite)."""
    if not np.isfinite(x).all():
        x = np.asarray(fallback, np.float64)
    y = x * scale
    fixed = np.floor(y + rng.random(y.shape))  # stochastic rounding: E[fixed] = y
    return np.clip(fixed, -CLIP_RANGE, CLIP_RANGE - 1).astype(np.int64)


def fixed_point(value: float, rng: np.random.Generator) -> np.ndarray:
    """One number as a fixed-point integer array of shape (1,) (adaptive clipping's bit in the secure sum)."""
    return _fixed_point(np.array([value], np.float64), np.zeros(1), float(2**FRACTION_BITS), rng)


def fixed_point_value(arr: np.ndarray) -> float:
    """The number a (mean) fixed-point array of shape (1,) stands for."""
    return float(np.asarray(arr, np.float64).reshape(-1)[0]) / 2**FRACTION_BITS


def from_integers(mean: list[np.ndarray], base: Mapping[str, np.ndarray], qinfo: QuantInfo | None) -> State:
    """The float state that the mean of the devices' integer vectors stands for (keys and shapes of ``base``):
    quantized weights are the mean codes times the shared step; the rest is fixed point over ``2^F``."""
    keys = sorted(base)
    if len(mean) != len(keys):
        raise ValueError(f"the secure sum has {len(mean)} arrays, the model {len(keys)}")
    out: State = {}
    for key, arr in zip(keys, mean, strict=True):
        shape = np.shape(base[key])
        value = np.asarray(arr, np.float64).reshape(shape)
        spec = qinfo.weights.get(key) if qinfo is not None else None
        if is_public_key(key):
            out[key] = np.asarray(base[key], np.float32).copy()
        elif spec is not None:
            out[key] = (value * np.asarray(base[spec.step_key], np.float64)).astype(np.float32)
        else:
            out[key] = (value / 2**FRACTION_BITS).astype(np.float32)
    return out


# -- the device's reply in SecAgg+'s format (Flower's legacy FitRes records) -----------------------------------
NUMBER_PREFIX, STRING_PREFIX = "n:", "s:"  # the report's numbers and strings, flattened into FitRes.metrics


def fitres_content(report: DeviceReport, ints: list[np.ndarray]) -> RecordDict:
    """The reply ``secaggplus_mod`` masks: the integer vector as FitRes parameters, weight 1 for a device that
    trained (0 for one that did not: it sends zeros and counts for nothing), and its report as metrics."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    nums, strs = report.to_records()
    metrics: dict[str, Any] = {NUMBER_PREFIX + k: v for k, v in nums.items()}
    metrics.update({STRING_PREFIX + k: v for k, v in strs.items()})
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(ints), int(report.status == "ok"), metrics)
    return compat.fitres_to_recorddict(res, keep_input=False)


def report_from_fitres(metrics: Mapping[str, Any]) -> DeviceReport:
    """The device's report from its FitRes metrics (the inverse of :func:`fitres_content`)."""
    nums = MetricRecord({k[len(NUMBER_PREFIX):]: v for k, v in metrics.items() if k.startswith(NUMBER_PREFIX)})
    strs = ConfigRecord({k[len(STRING_PREFIX):]: v for k, v in metrics.items() if k.startswith(STRING_PREFIX)})
    return DeviceReport.from_records(nums, strs)
