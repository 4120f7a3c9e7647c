"""Uplink codecs: what a device uploads instead of its raw float state.

A codec turns the device's local aggregatable float state into a payload of named
numpy arrays (they go into a Flower ``ArrayRecord``) and back. ``decode`` always
returns the reconstructed *local* state as float32, with the keys and shapes of
``base`` (the global state the device started the round from), so aggregation
code never needs to know which codec was used.

Payload keys: a tensor sent as-is keeps its state key; a coded tensor ``k`` is sent
as ``k + "::codes"`` (packed uint8) plus ``k + "::scale"`` (delta codecs; float32).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> base = {"w": np.zeros(4, np.float32)}
>>> local = {"w": np.array([0.5, -1.0, 0.25, 1.0], np.float32)}
>>> codec = build_codec("delta-int8", min_numel=1)
>>> payload = codec.encode(local, base, rng, None)
>>> sorted(payload), payload_nbytes(payload)  # 4 int8 codes + 1 float32 scale
(['w::codes', 'w::scale'], 8)
>>> codec.decode(payload, base, None)["w"][[1, 3]]  # max-abs entries are exact
array([-1.,  1.], dtype=float32)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fleet.config.scenario import ScenarioConfig
from fleet.quant.packing import pack_codes, unpack_codes
from fleet.quant.spec import QuantInfo, qrange

__all__ = [
    "scenario_codec",
    "Codec",
    "CODECS",
    "build_codec",
    "payload_nbytes",
    "CODES_SUFFIX",
    "SCALE_SUFFIX",
    "Fp32Codec",
    "Fp16Codec",
    "DeltaIntCodec",
    "QWeightsCodec",
]

State = dict[str, np.ndarray]
CODES_SUFFIX = "::codes"
SCALE_SUFFIX = "::scale"


class Codec(Protocol):
    """Encode a local state for upload and decode it on the server."""

    @property
    def name(self) -> str:
        """Registry name (read-only: codecs are frozen dataclasses)."""
        ...

    def encode(
        self, local: State, base: State, rng: np.random.Generator, qinfo: QuantInfo | None
    ) -> State:
        """Payload for ``local`` (float aggregatable tensors) given the round's ``base``."""
        ...

    def decode(self, payload: State, base: State, qinfo: QuantInfo | None) -> State:
        """Reconstructed local state: float32, keys and shapes of ``base``."""
        ...


def payload_nbytes(payload: State) -> int:
    """Bytes on the wire: the sum of the arrays' ``nbytes`` (packed sizes are real)."""
    return int(sum(np.asarray(v).nbytes for v in payload.values()))


def _check_keys(local: State, base: State) -> None:
    if local.keys() != base.keys():
        missing, extra = sorted(base.keys() - local.keys()), sorted(local.keys() - base.keys())
        raise ValueError(f"local/base keys differ: missing {missing}, extra {extra}")


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _plain(payload: State, key: str, base: State) -> np.ndarray:
    """Decode a tensor sent as-is, checking its shape against ``base``."""
    value = _f32(payload[key])
    if value.shape != np.shape(base[key]):
        raise ValueError(f"'{key}': payload shape {value.shape} != base {np.shape(base[key])}")
    return value


@dataclass(frozen=True)
class Fp32Codec:
    """Send every tensor as float32 (lossless reference)."""

    name: str = "fp32"

    def encode(
        self, local: State, base: State, rng: np.random.Generator, qinfo: QuantInfo | None
    ) -> State:
        """Float32 copies of ``local``."""
        _check_keys(local, base)
        return {k: _f32(v).copy() for k, v in local.items()}

    def decode(self, payload: State, base: State, qinfo: QuantInfo | None) -> State:
        """The payload as float32."""
        return {k: _plain(payload, k, base) for k in base}


@dataclass(frozen=True)
class Fp16Codec:
    """Send every tensor as float16 (half the bytes; relative error <= 2^-11)."""

    name: str = "fp16"

    def encode(
        self, local: State, base: State, rng: np.random.Generator, qinfo: QuantInfo | None
    ) -> State:
        """Float16 copies of ``local``."""
        _check_keys(local, base)
        return {k: np.asarray(v, dtype=np.float16) for k, v in local.items()}

    def decode(self, payload: State, base: State, qinfo: QuantInfo | None) -> State:
        """The payload cast back to float32."""
        return {k: _plain(payload, k, base) for k in base}


@dataclass(frozen=True)
class DeltaIntCodec:
    """Send ``local - base`` as stochastically rounded signed integers with a max-abs scale.

    ``q = floor(d / scale + u)``, ``u ~ U[0, 1)``, is unbiased: ``E[q * scale] = d``.
    The scale is ``max|d| / qmax`` with the symmetric range ``[-qmax, qmax]``
    (``qmax = 2^(b-1) - 1``: 127 for int8, 7 for int4), so the code ``-2^(b-1)``
    is never used and the extreme entries are exact.

    Parameters
    ----------
    bits : int
        Code width (8 for ``delta-int8``, 4 for ``delta-int4``).
    per_channel : bool
        One scale per dim-0 slice for tensors with ndim >= 2; 1-D tensors always
        get one scale (default: False).
    min_numel : int
        Tensors with fewer elements are sent as float32 (BN statistics, biases,
        steps: the scale would cost more than it saves) (default: 256).

    Notes
    -----
    A tensor whose delta is not finite is sent raw (float32), so a diverged
    device's NaN/inf reaches the server's checks instead of becoming garbage codes.
    """

    bits: int
    per_channel: bool = False
    min_numel: int = 256

    def __post_init__(self) -> None:
        qrange(self.bits, True)  # validates bits (2..8)
        if not isinstance(self.min_numel, int) or self.min_numel < 0:
            raise ValueError(f"min_numel must be an int >= 0, got {self.min_numel!r}")

    @property
    def name(self) -> str:
        """Registry name, e.g. ``delta-int8``."""
        return f"delta-int{self.bits}"

    def _scale_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.per_channel and len(shape) >= 2:
            return (shape[0],) + (1,) * (len(shape) - 1)
        return (1,) * max(len(shape), 1)

    def encode(
        self, local: State, base: State, rng: np.random.Generator, qinfo: QuantInfo | None
    ) -> State:
        """Codes and scales of the deltas; small tensors as float32."""
        _check_keys(local, base)
        qmax = qrange(self.bits, True)[1]
        payload: State = {}
        for key, b in base.items():
            x = _f32(local[key])
            d = x - _f32(b)  # (*shape)
            if x.size < self.min_numel or not np.isfinite(d).all():
                # Small tensors are cheaper raw; non-finite ones go raw so the server sees them.
                payload[key] = x.copy()
                continue
            sshape = self._scale_shape(d.shape)
            amax = np.abs(d.reshape(sshape[0], -1)).max(axis=1).reshape(sshape)  # (C|1, 1, ...)
            scale = (amax / qmax).astype(np.float32)
            safe = np.where(scale > 0, scale, np.float32(1.0))  # all-zero delta -> codes 0
            u = rng.random(d.shape, dtype=np.float32)  # stochastic rounding noise
            # clip guards float slack when d / scale lands a hair above qmax.
            q = np.clip(np.floor(d / safe + u), -qmax, qmax).astype(np.int8)
            payload[key + CODES_SUFFIX] = pack_codes(q, self.bits, signed=True)
            payload[key + SCALE_SUFFIX] = scale.reshape(-1)
        return payload

    def decode(self, payload: State, base: State, qinfo: QuantInfo | None) -> State:
        """``base + codes * scale`` for coded tensors; float32 for the rest."""
        out: State = {}
        for key, b in base.items():
            if key in payload:
                out[key] = _plain(payload, key, base)
                continue
            shape = np.shape(b)
            codes = unpack_codes(payload[key + CODES_SUFFIX], self.bits, int(np.prod(shape)), True)
            scale = _f32(payload[key + SCALE_SUFFIX]).reshape(self._scale_shape(shape))
            out[key] = _f32(b) + codes.reshape(shape).astype(np.float32) * scale
        return out


@dataclass(frozen=True)
class QWeightsCodec:
    """Send quantized weights as packed integer codes at the model's own bit-width.

    The codes are ``clamp(round(w / step), qmin, qmax)``, exactly what the LSQ
    forward uses, so the server receives the device's *quantized* weights
    (``codes * step``), not its latent float weights. Steps and every other
    tensor go as float32. Needs ``qinfo`` (raises ValueError without it).
    """

    name: str = "qweights"

    @staticmethod
    def _require(qinfo: QuantInfo | None) -> QuantInfo:
        if qinfo is None:
            raise ValueError("the qweights codec needs qinfo (a quantized model's QuantInfo)")
        return qinfo

    def encode(
        self, local: State, base: State, rng: np.random.Generator, qinfo: QuantInfo | None
    ) -> State:
        """Packed codes for quantized weights; float32 for everything else."""
        info = self._require(qinfo)
        _check_keys(local, base)
        payload: State = {}
        for key, value in local.items():
            spec = info.weights.get(key)
            if spec is None:
                payload[key] = _f32(value).copy()
                continue
            if spec.step_key not in local:
                raise ValueError(f"step '{spec.step_key}' of '{key}' is not in the local state")
            qmin, qmax = qrange(spec.bits, spec.signed)
            step = _f32(local[spec.step_key])  # (1,) or (C, 1, ...)
            if not (np.isfinite(value).all() and np.isfinite(step).all()):
                payload[key] = _f32(value).copy()  # raw, so the server sees the NaN/inf
                continue
            codes = np.clip(np.round(_f32(value) / step), qmin, qmax).astype(np.int16)
            payload[key + CODES_SUFFIX] = pack_codes(codes, spec.bits, spec.signed)
        return payload

    def decode(self, payload: State, base: State, qinfo: QuantInfo | None) -> State:
        """``codes * step`` for quantized weights; float32 for everything else."""
        info = self._require(qinfo)
        out: State = {}
        for key, b in base.items():
            spec = info.weights.get(key)
            if spec is None or key in payload:
                out[key] = _plain(payload, key, base)
                continue
            shape = np.shape(b)
            codes = unpack_codes(payload[key + CODES_SUFFIX], spec.bits, int(np.prod(shape)), spec.signed)
            step = _f32(payload[spec.step_key])
            out[key] = codes.reshape(shape).astype(np.float32) * step
        return out


def _fp32() -> Codec:
    return Fp32Codec()


def _fp16() -> Codec:
    return Fp16Codec()


def _delta_int8(*, per_channel: bool = False, min_numel: int = 256) -> Codec:
    return DeltaIntCodec(8, per_channel, min_numel)


def _delta_int4(*, per_channel: bool = False, min_numel: int = 256) -> Codec:
    return DeltaIntCodec(4, per_channel, min_numel)


def _qweights() -> Codec:
    return QWeightsCodec()


CODECS: dict[str, Callable[..., Codec]] = {
    "fp32": _fp32,
    "fp16": _fp16,
    "delta-int8": _delta_int8,
    "delta-int4": _delta_int4,
    "qweights": _qweights,
}


def build_codec(name: str, **options: object) -> Codec:
    """Build a codec by registry name.

    Parameters
    ----------
    name : str
        One of ``CODECS``.
    **options
        Codec options (delta codecs: ``per_channel``, ``min_numel``).

    Raises
    ------
    ValueError
        Unknown name (lists the valid ones) or unknown option (names it).
    """
    if name not in CODECS:
        raise ValueError(f"unknown codec '{name}'; valid: {', '.join(sorted(CODECS))}")
    factory = CODECS[name]
    allowed = inspect.signature(factory).parameters
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise ValueError(f"unknown option(s) {unknown} for codec '{name}'; valid: {valid}")
    return factory(**options)


def scenario_codec(cfg: ScenarioConfig) -> Codec:
    """The codec a scenario's devices upload with (``quant.codec``, per-channel scales for delta codecs)."""
    name = cfg.quant.codec
    opts: dict[str, object] = {"per_channel": cfg.quant.codec_per_channel} if "per_channel" in _options(name) else {}
    return build_codec(name, **opts)


def _options(name: str) -> set[str]:
    return set(inspect.signature(CODECS[name]).parameters) if name in CODECS else set()
