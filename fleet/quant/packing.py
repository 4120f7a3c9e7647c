"""Dense bit packing of integer quantization codes (2..8 bits per code).

Codes are stored offset-binary (``code - qmin``, so every code is a non-negative
``bits``-bit number), most significant bit first, back to back with no padding
between codes; only the last byte is zero-padded. ``n`` codes therefore take
exactly ``ceil(n * bits / 8)`` bytes, for any bit-width, not just 2, 4 and 8.

Examples
--------
>>> p = pack_codes(np.array([-2, -1, 0, 1, 1]), bits=2, signed=True)
>>> p  # offsets 0,1,2,3,3 -> 00 01 10 11 | 11 000000
array([ 27, 192], dtype=uint8)
>>> unpack_codes(p, bits=2, count=5, signed=True)
array([-2, -1,  0,  1,  1], dtype=int8)
"""

from __future__ import annotations

import numpy as np

from fleet.quant.spec import qrange

__all__ = ["pack_codes", "unpack_codes", "packed_nbytes"]


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by ``count`` packed ``bits``-bit codes: ``ceil(count * bits / 8)``.

    Examples
    --------
    >>> packed_nbytes(5, 3), packed_nbytes(8, 3), packed_nbytes(0, 4)
    (2, 3, 0)
    """
    return (count * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    """Pack integer codes (any shape; flattened in C order) into a uint8 array.

    Parameters
    ----------
    codes : np.ndarray
        Integer codes within ``qrange(bits, signed)``.
    bits : int
        Bits per code, 2..8.
    signed : bool
        Whether the codes use the signed range.

    Returns
    -------
    np.ndarray
        ``uint8`` array of ``ceil(codes.size * bits / 8)`` bytes.
    """
    qmin, qmax = qrange(bits, signed)
    flat = np.asarray(codes).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {flat.dtype}")
    if flat.size and (flat.min() < qmin or flat.max() > qmax):
        raise ValueError(
            f"codes outside [{qmin}, {qmax}] for bits={bits}, signed={signed}: "
            f"min {flat.min()}, max {flat.max()}"
        )
    offsets = (flat.astype(np.int16) - qmin).astype(np.uint8)  # (n,) in 0..2^bits-1
    # (n, 8) MSB-first bits of each byte; keep the low `bits` columns.
    bit_matrix = np.unpackbits(offsets[:, None], axis=1)[:, 8 - bits :]  # (n, bits)
    return np.packbits(bit_matrix.reshape(-1))


def unpack_codes(packed: np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the first ``count`` codes, flat.

    Returns int8 when the code range fits (always for signed codes), else int16
    (unsigned 8-bit codes, 0..255).
    """
    qmin, qmax = qrange(bits, signed)
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size < packed_nbytes(count, bits):
        raise ValueError(
            f"{packed.size} bytes hold fewer than {count} codes of {bits} bits"
        )
    bit_matrix = np.unpackbits(packed)[: count * bits].reshape(count, bits)  # (n, bits)
    # Left-pad each code to a full byte and let packbits assemble it.
    full = np.zeros((count, 8), dtype=np.uint8)  # (n, 8)
    full[:, 8 - bits :] = bit_matrix
    offsets = np.packbits(full, axis=1)[:, 0].astype(np.int16)  # (n,)
    dtype = np.int8 if qmax <= np.iinfo(np.int8).max else np.int16
    return (offsets + qmin).astype(dtype)
