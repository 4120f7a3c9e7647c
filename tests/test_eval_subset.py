"""On-device evaluation subset: all held-out samples, or a fixed random sorted subset per device."""

from __future__ import annotations

import pytest
import torch

from fleet.data.splits import eval_subset


@pytest.mark.parametrize(("n", "limit"), [(5, 0), (5, 5), (5, 9), (0, 0), (0, 3)])
def test_all_indices_when_no_limit_or_limit_covers_n(n: int, limit: int) -> None:
    assert eval_subset(n, limit, 0, 3).tolist() == list(range(n))


def test_limit_sorted_unique_in_range() -> None:
    # Execute
    idx = eval_subset(100, 10, 0, 3)
    # Assert
    got = idx.tolist()
    assert len(got) == 10
    assert got == sorted(set(got))  # sorted and unique
    assert all(0 <= i < 100 for i in got)
    assert idx.dtype == torch.int64


def test_limit_one_below_n_drops_exactly_one() -> None:
    got = eval_subset(6, 5, 0, 1).tolist()
    assert len(got) == 5 and len(set(got) - set(range(6))) == 0 and got == sorted(set(got))


def test_same_arguments_same_subset() -> None:
    assert torch.equal(eval_subset(100, 10, 0, 3), eval_subset(100, 10, 0, 3))


def test_other_device_or_seed_gives_another_subset() -> None:
    base = eval_subset(100, 10, 0, 3)
    assert not torch.equal(base, eval_subset(100, 10, 0, 4))
    assert not torch.equal(base, eval_subset(100, 10, 1, 3))
