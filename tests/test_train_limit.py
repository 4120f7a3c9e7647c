"""``data.train-limit``: the fleet uses a fixed random subset of the training set, drawn before the public split."""

from __future__ import annotations

import doctest

import numpy as np

from fleet.data import splits
from fleet.data.splits import fleet_data
from fleet.model.reference import _recipe
from simulations.run.scenario import load_config


def _fd(*sets: str) -> splits.FleetData:
    cfg, _ = load_config("quickstart", ["federation.num-devices=10", "federation.devices-per-round=2", *sets])
    return fleet_data(cfg)


def _rows(fd: splits.FleetData) -> np.ndarray:
    return np.concatenate([fd.public, *fd.train, *fd.val])


def test_the_limit_keeps_that_many_rows_over_public_and_devices_each_once() -> None:
    # Execute
    fd = _fd("data.train-limit=500")

    # Assert: public, devices' train and val rows together are 500 distinct rows of the training set
    rows = _rows(fd)
    assert len(rows) == 500 and len(np.unique(rows)) == 500
    assert rows.min() >= 0 and rows.max() < len(fd.dataset.y_train)
    assert 45 <= len(fd.public) <= 55  # public-fraction 0.1 of the 500, stratified (rounded per class)


def test_no_limit_is_the_split_of_every_row_and_a_limit_above_n_changes_nothing() -> None:
    # Execute
    whole, above = _fd(), _fd("data.train-limit=100000")

    # Assert: every row used; the limit at or above n is the same split, row for row
    assert len(_rows(whole)) == len(whole.dataset.y_train)
    assert np.array_equal(whole.public, above.public)
    assert all(np.array_equal(a, b) for a, b in zip(whole.train, above.train, strict=True))


def test_the_same_seed_draws_the_same_subset_and_another_seed_another() -> None:
    a, b = _fd("data.train-limit=300"), _fd("data.train-limit=300")
    c = _fd("data.train-limit=300", "federation.seed=1")

    assert np.array_equal(np.sort(_rows(a)), np.sort(_rows(b)))
    assert not np.array_equal(np.sort(_rows(a)), np.sort(_rows(c)))


def test_the_reference_cache_tells_a_limited_recipe_apart_and_keeps_old_hashes() -> None:
    base, _ = load_config("quickstart", [])
    limited, _ = load_config("quickstart", ["data.train-limit=300"])

    assert _recipe(base) != _recipe(limited)
    assert "train_limit" not in _recipe(base)  # references cached before the key existed stay valid


def test_doctests() -> None:
    assert doctest.testmod(splits).failed == 0
