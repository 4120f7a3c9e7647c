"""What a quantized model is, without torch: bit-widths, integer code ranges, state keys, ``QuantInfo``.

The numpy-only parts (codecs, packing, the server's strategies) need these facts and must not import
torch to get them; the torch modules (quantizers, surgery, QCore, QGT) take them from here too, so
each fact has one source.

State keys of a quantized model: a quantized layer ``L`` has ``L.weight`` (the float latent weight),
``L.weight_quant.step`` (its LSQ step) and ``L.act_quant.step``; ``initialized`` flags and BatchNorm
``num_batches_tracked`` counters are per-device bookkeeping, never averaged (STYLE.md pitfall 5).

Examples
--------
>>> qrange(4, True), qrange(4, False), qrange(2)
((-8, 7), (0, 15), (-2, 1))
>>> is_quantizer_key("conv2.weight_quant.step"), is_quantizer_key("conv2.weight")
(True, False)
>>> split_state({"a.weight": 1, "a.weight_quant.initialized": 0, "bn.num_batches_tracked": 5})
({'a.weight': 1}, {'a.weight_quant.initialized': 0, 'bn.num_batches_tracked': 5})
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = [
    "MIN_BITS",
    "MAX_BITS",
    "FLOAT_BITS",
    "LOCAL_ONLY_SUFFIXES",
    "QuantSpec",
    "QuantInfo",
    "check_bits",
    "qrange",
    "is_quantized",
    "is_quantizer_key",
    "split_state",
]

MIN_BITS = 2
MAX_BITS = 8
FLOAT_BITS = 32  # sentinel meaning "not quantized" (records cannot hold None)
LOCAL_ONLY_SUFFIXES = ("initialized", "num_batches_tracked")
_QUANTIZER_INFIX = "_quant."  # the quantizer submodules are named weight_quant and act_quant

T = TypeVar("T")


def check_bits(bits: int, allowed: Collection[int] | None = None, max_bits: int = MAX_BITS) -> int:
    """Return ``bits`` if it is an integer bit-width in ``allowed`` (default ``MIN_BITS..max_bits``), else raise
    ValueError naming the valid values."""
    is_int = isinstance(bits, int) and not isinstance(bits, bool)
    if allowed is not None:
        if not is_int or bits not in allowed:
            raise ValueError(f"unsupported bits {bits}; valid: {', '.join(map(str, allowed))}")
    elif not is_int or not MIN_BITS <= bits <= max_bits:
        raise ValueError(f"bits must be an int in {MIN_BITS}..{max_bits}, got {bits!r}")
    return bits


def qrange(bits: int, signed: bool = True, max_bits: int = MAX_BITS) -> tuple[int, int]:
    """Integer code range ``(qmin, qmax)`` of a ``bits``-wide symmetric (signed) or unsigned grid."""
    check_bits(bits, max_bits=max_bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def is_quantized(weight_bits: int, act_bits: int) -> bool:
    """Whether a model at these widths has any quantizer (32 means float)."""
    return weight_bits < FLOAT_BITS or act_bits < FLOAT_BITS


def is_quantizer_key(key: str) -> bool:
    """Whether a state key belongs to a weight or activation quantizer (a step size or an init flag)."""
    return _QUANTIZER_INFIX in key


@dataclass(frozen=True)
class QuantSpec:
    """How one weight tensor is quantized: ``bits``, ``signed`` and its step's state key."""

    bits: int
    step_key: str
    signed: bool = True


@dataclass(frozen=True)
class QuantInfo:
    """Quantized weight state keys (e.g. ``"conv2.weight"``) mapped to their :class:`QuantSpec`.

    A plain dict field (not a mapping proxy) so the object pickles across Ray actors.
    """

    weights: dict[str, QuantSpec] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self.weights

    def __getitem__(self, key: str) -> QuantSpec:
        return self.weights[key]

    def __len__(self) -> int:
        return len(self.weights)

    def at_bits(self, bits: int, from_bits: int) -> QuantInfo:
        """The same keys with the layers at ``from_bits`` (the run's width) moved to ``bits`` (a device whose
        hardware trains narrower or wider); layers at a width of their own (``quant.keep-fp = "int8"``,
        ``quant.w8-layers``) keep it, as they do in that device's model."""
        return QuantInfo({k: QuantSpec(bits if s.bits == from_bits else s.bits, s.step_key, s.signed)
                          for k, s in self.weights.items()})


def split_state(state: Mapping[str, T]) -> tuple[dict[str, T], dict[str, T]]:
    """Split a state dict into ``(aggregatable, local_only)``: weights, biases, steps and BatchNorm
    statistics are aggregatable; ``initialized`` flags and ``num_batches_tracked`` are local."""
    agg: dict[str, T] = {}
    local: dict[str, T] = {}
    for key, value in state.items():
        is_local = key.rpartition(".")[2] in LOCAL_ONLY_SUFFIXES
        (local if is_local else agg)[key] = value
    return agg, local
