"""The cached-header conversion is exactly Flower's: same bytes out, same arrays in, numpy's path otherwise."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fleet.arrays import record_from_numpy, record_to_numpy, to_array, to_numpy

ARRAYS = [
    np.zeros((), np.float32),  # 0-d: stays 0-d
    np.arange(5, dtype=np.int64),
    np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32),
    np.zeros((0, 3), np.float32),
    np.array([True, False]),
    np.random.default_rng(1).normal(size=(4, 3)).astype(np.float16),
    np.arange(6, dtype=np.uint8).reshape(2, 3),
]


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_to_array_writes_the_bytes_flower_writes(a: np.ndarray) -> None:
    # Execute
    ours, flowers = to_array(a), Array(a)
    # Assert
    assert (ours.data, ours.dtype, ours.shape, ours.stype) == (flowers.data, flowers.dtype, flowers.shape,
                                                               flowers.stype)


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_to_numpy_reads_what_flower_wrote(a: np.ndarray) -> None:
    # Execute
    back = to_numpy(Array(a))
    # Assert
    assert back.dtype == a.dtype and back.shape == a.shape and np.array_equal(back, a)


@pytest.mark.parametrize("a", [
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),  # Fortran-order header
    np.arange(4, dtype=">i4"),  # big-endian descr
], ids=["fortran", "big-endian"])
def test_headers_numpy_writes_differently_take_numpys_path(a: np.ndarray) -> None:
    # Execute
    back = to_numpy(Array(a))
    # Assert
    assert back.dtype == a.dtype and np.array_equal(back, a)


def test_a_non_contiguous_view_is_encoded_by_value() -> None:
    # Prepare
    a = np.arange(24.0).reshape(4, 6)[:, ::2]
    # Execute
    back = to_numpy(to_array(a))
    # Assert
    assert back.flags.c_contiguous and np.array_equal(back, a)


def test_copies_are_writable_and_views_are_not() -> None:
    # Prepare
    arr = Array(np.arange(3, dtype=np.float32))
    # Execute
    copy, view = to_numpy(arr), to_numpy(arr, copy=False)
    copy[0] = 7.0
    # Assert: the copy is independent; the view cannot alter the message
    assert to_numpy(arr)[0] == 0.0
    with pytest.raises(ValueError):
        view[0] = 7.0


def test_records_round_trip_in_key_order() -> None:
    # Prepare
    arrays = {"b.weight": np.ones((2, 2), np.float32), "a.bias": np.zeros(2, np.float32)}
    # Execute
    rec = record_from_numpy(arrays)
    back = record_to_numpy(rec)
    # Assert
    assert isinstance(rec, ArrayRecord) and list(back) == list(arrays)
    assert all(np.array_equal(back[k], arrays[k]) for k in arrays)
    assert rec.count_bytes() == ArrayRecord({k: Array(v) for k, v in arrays.items()}).count_bytes()
