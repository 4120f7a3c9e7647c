"""Bit packing of integer codes: exact sizes, round trips, range checks."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from fleet.quant import packing
from fleet.quant.packing import pack_codes, packed_nbytes, unpack_codes


def test_doctests() -> None:
    result = doctest.testmod(packing)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("count", [0, 1, 7, 8, 9, 1001])
def test_size_is_ceil_n_bits_over_8(bits: int, count: int) -> None:
    codes = np.zeros(count, dtype=np.int32)
    packed = pack_codes(codes, bits, signed=True)
    assert packed.dtype == np.uint8
    assert packed.size == packed_nbytes(count, bits) == -(-count * bits // 8)


def test_hand_computed_3_bit_layout() -> None:
    # unsigned 3-bit codes 5, 3, 7 -> bits 101 011 111 -> 10101111 1(0000000)
    packed = pack_codes(np.array([5, 3, 7]), bits=3, signed=False)
    assert packed.tolist() == [0b10101111, 0b10000000]


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_full_range(bits: int, signed: bool) -> None:
    rng = np.random.default_rng(bits)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    codes = rng.integers(lo, hi + 1, size=(5, 7, 3))
    codes.flat[:2] = [lo, hi]
    out = unpack_codes(pack_codes(codes, bits, signed), bits, codes.size, signed)
    assert np.array_equal(out, codes.reshape(-1))
    assert out.dtype == (np.int16 if (bits == 8 and not signed) else np.int8)


@pytest.mark.parametrize("bits", [0, 1, 9, 33])
def test_bad_bits_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        pack_codes(np.zeros(4, dtype=np.int32), bits, signed=True)
    with pytest.raises(ValueError, match="bits"):
        unpack_codes(np.zeros(4, dtype=np.uint8), bits, 4, signed=True)


def test_out_of_range_codes_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        pack_codes(np.array([-3, 0]), bits=2, signed=True)
    with pytest.raises(ValueError, match="outside"):
        pack_codes(np.array([-1, 0]), bits=4, signed=False)
    with pytest.raises(ValueError, match="integers"):
        pack_codes(np.array([0.5]), bits=4, signed=True)


def test_too_few_bytes_rejected() -> None:
    with pytest.raises(ValueError, match="fewer"):
        unpack_codes(np.zeros(1, dtype=np.uint8), bits=4, count=3, signed=True)
