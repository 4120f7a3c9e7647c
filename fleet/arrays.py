"""Numpy arrays to and from Flower's ``Array``, without numpy's header parsing on every call.

A Flower ``Array`` carries an array as ``.npy`` bytes (``stype = "numpy.ndarray"``).
``Array(ndarray)`` and ``Array.numpy()`` go through ``np.save`` / ``np.load``, which
write and parse the ``.npy`` header (a Python dict literal, read back with
``ast.literal_eval``) on every call: about 20 and 40 microseconds per array here. A
round of 100 devices on a six-tensor model crosses that boundary about 2,000 times
(devices decode the global model and encode their update; the server decodes every
update and hands it to the inner strategy).

The header depends only on dtype and shape, so it is built once per (dtype, shape)
with numpy's own writer and cached. Encoding is then header + raw bytes, byte for
byte what ``np.save`` writes for a C-contiguous array. Decoding checks that the
message's header is exactly the one numpy would write for the ``Array``'s declared
dtype and shape, and only then reads the raw bytes; anything else (Fortran order,
a version-2 header, an object or big-endian dtype) goes through ``Array.numpy()``.

Examples
--------
>>> a = np.arange(6, dtype=np.float32).reshape(2, 3)
>>> to_array(a).data == Array(a).data
True
>>> to_numpy(to_array(a)).tolist()
[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["to_array", "to_numpy", "record_from_numpy", "record_to_numpy"]

_NPY_STYPE = "numpy.ndarray"
_V1_MAGIC = b"\x93NUMPY\x01\x00"
_HEADERS: dict[tuple[str, tuple[int, ...]], bytes | None] = {}
_NAMES: dict[np.dtype, str] = {}  # str(dtype) is slow enough to matter at this rate


def _header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes | None:
    """The version-1.0 ``.npy`` header ``np.save`` writes for a C-contiguous array (None: not version 1.0)."""
    key = (dtype.str, shape)
    if key not in _HEADERS:
        header: bytes | None = None
        if not dtype.hasobject and dtype.byteorder in ("<", "|", "="):
            buf = io.BytesIO()
            try:
                np.lib.format.write_array_header_1_0(
                    buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
                header = buf.getvalue()
            except ValueError:  # header too long for version 1.0: numpy would write 2.0
                header = None
        if len(_HEADERS) > 4096:
            _HEADERS.clear()
        _HEADERS[key] = header
    return _HEADERS[key]


def to_array(a: np.ndarray) -> Array:
    """``Array(a)``, with the header from the cache (C order: a non-contiguous ``a`` is copied first)."""
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)  # (never 0-d: those are contiguous, and this would make them 1-d)
    header = _header(a.dtype, a.shape)
    if header is None:
        return Array(a)
    name = _NAMES.get(a.dtype)
    if name is None:
        name = _NAMES[a.dtype] = str(a.dtype)
    return Array(dtype=name, shape=a.shape, stype=_NPY_STYPE, data=header + a.tobytes())


def to_numpy(arr: Array, copy: bool = True) -> np.ndarray:
    """``arr.numpy()``; with ``copy=False`` a read-only view of the message's bytes when possible."""
    data = arr.data
    if arr.stype == _NPY_STYPE and data[:8] == _V1_MAGIC:
        dtype, shape = np.dtype(arr.dtype), tuple(arr.shape)
        header = _header(dtype, shape)
        if header is not None and data[:len(header)] == header:
            out = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=len(header)).reshape(shape)
            return out.copy() if copy else out
    return arr.numpy()


def record_from_numpy(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ``ArrayRecord`` of ``arrays`` (keys and order kept)."""
    return ArrayRecord({k: to_array(np.asarray(v)) for k, v in arrays.items()})


def record_to_numpy(record: ArrayRecord, copy: bool = True) -> dict[str, np.ndarray]:
    """The arrays of ``record`` by key (writable copies unless ``copy=False``)."""
    return {k: to_numpy(v, copy=copy) for k, v in record.items()}
