"""Partitioners (iid, dirichlet, shards, quantity), label histograms and the fleet's public/private split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fleet.data.splits as fleetdata
from fleet.config.scenario import parse_config
from fleet.data.partition import label_histograms, partition
from fleet.data.splits import device_data, fleet_data

Y = np.repeat(np.arange(10), 100)  # 10 balanced classes, 1000 samples


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    """Every index in 0..n-1 appears in exactly one part."""
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    assert np.array_equal(np.sort(allidx), np.arange(n))


def test_iid_sizes_equal_within_one() -> None:
    # 103 samples over 10 devices: array_split gives 3 devices 11 and 7 devices 10.
    parts = partition("iid", np.zeros(103, dtype=int), 10, _rng())
    assert sorted(len(p) for p in parts) == [10] * 7 + [11] * 3
    _assert_exact_cover(parts, 103)


def test_dirichlet_min_size_and_exact_cover() -> None:
    parts = partition("dirichlet", Y, 20, _rng(1), alpha=0.3, min_size=8)
    assert len(parts) == 20
    assert min(len(p) for p in parts) >= 8
    _assert_exact_cover(parts, len(Y))


def test_dirichlet_same_seed_same_split_other_seed_differs() -> None:
    a = partition("dirichlet", Y, 10, _rng(5), alpha=0.5)
    b = partition("dirichlet", Y, 10, _rng(5), alpha=0.5)
    c = partition("dirichlet", Y, 10, _rng(6), alpha=0.5)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def _skew(alpha: float) -> tuple[float, float]:
    """Mean per-device max class share and label entropy (nats), averaged over 3 seeds."""
    shares, entropies = [], []
    for seed in range(3):
        parts = partition("dirichlet", Y, 20, _rng(seed), alpha=alpha, min_size=4)
        p = label_histograms(Y, parts, 10) / np.array([len(q) for q in parts])[:, None]  # (devices, classes)
        logp = np.log(np.where(p > 0, p, 1.0))
        shares.append(p.max(axis=1).mean())
        entropies.append(-(p * logp).sum(axis=1).mean())
    return float(np.mean(shares)), float(np.mean(entropies))


def test_dirichlet_label_skew_grows_as_alpha_shrinks() -> None:
    # Execute
    skews = [_skew(a) for a in (100.0, 1.0, 0.1)]
    shares = [s for s, _ in skews]
    entropies = [e for _, e in skews]
    # Assert: monotone trend; alpha=100 is near-uniform (max share near 1/10, entropy near ln 10).
    assert shares[0] < shares[1] < shares[2]
    assert entropies[0] > entropies[1] > entropies[2]
    assert shares[0] < 0.2 and entropies[0] > 0.9 * np.log(10)


def test_shards_each_device_holds_at_most_k_classes() -> None:
    # 10 classes x 20 samples, 10 devices x 2 shards: 20 shards of 10, each inside one class.
    y = np.repeat(np.arange(10), 20)
    parts = partition("shards", y, 10, _rng(2), shards_per_device=2)
    hist = label_histograms(y, parts, 10)
    assert ((hist > 0).sum(axis=1) <= 2).all()
    assert [len(p) for p in parts] == [20] * 10
    assert set(np.unique(hist)) <= {0, 10, 20}
    _assert_exact_cover(parts, len(y))


def test_quantity_sizes_sum_to_n_respect_min_and_vary() -> None:
    parts = partition("quantity", Y, 20, _rng(3), sigma=1.0, min_size=5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == len(Y)
    assert sizes.min() >= 5
    assert sizes.max() > 2 * sizes.min()  # log-normal sigma=1 spreads sizes widely
    _assert_exact_cover(parts, len(Y))


def test_more_devices_than_samples_is_an_error() -> None:
    with pytest.raises(ValueError) as info:
        partition("iid", np.zeros(5, dtype=int), 6, _rng())
    assert str(info.value) == "federation.num-devices: 6 devices but only 5 training samples"


def test_quantity_min_size_too_large_is_an_error() -> None:
    with pytest.raises(ValueError) as info:
        partition("quantity", np.zeros(10, dtype=int), 3, _rng(), min_size=4)
    assert str(info.value) == "data.min-partition-size: 3 devices x 4 exceeds 10 samples"


def test_dirichlet_impossible_min_size_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"^data\.min-partition-size: Dirichlet\(alpha=0.1\)"):
        partition("dirichlet", Y[:40], 10, _rng(), alpha=0.1, min_size=4)


def test_unknown_partition_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        partition("zipf", Y, 2, _rng())
    assert str(info.value) == "unknown partition 'zipf'; valid: iid, dirichlet, shards, quantity"


def test_label_histograms_by_hand() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    parts = [np.array([0, 2]), np.array([1, 3, 4]), np.array([5])]
    hist = label_histograms(y, parts, num_classes=4)
    assert hist.shape == (3, 4)
    assert hist.tolist() == [[1, 1, 0, 0], [1, 0, 2, 0], [0, 0, 1, 0]]


def test_label_histograms_shape_and_sums() -> None:
    parts = partition("dirichlet", Y, 7, _rng(4), alpha=1.0)
    hist = label_histograms(Y, parts, 10)
    assert hist.shape == (7, 10)
    assert hist.sum(axis=1).tolist() == [len(p) for p in parts]
    assert hist.sum(axis=0).tolist() == [100] * 10


FLEET = {"federation.num-devices": 8, "federation.devices-per-round": 2, "data.partition": "dirichlet",
         "data.alpha": 1.0}


def test_fleet_public_split_disjoint_from_devices_and_train_val_disjoint() -> None:
    # Prepare
    cfg = parse_config({**FLEET, "federation.seed": 3})
    # Execute
    fd = fleet_data(cfg)
    # Assert
    public = set(fd.public.tolist())
    assert len(public) > 0
    seen: set[int] = set()
    for tr, va in zip(fd.train, fd.val, strict=True):
        rows = set(tr.tolist()) | set(va.tolist())
        assert not public & rows
        assert not set(tr.tolist()) & set(va.tolist())
        assert len(va) >= 1
        assert not seen & rows  # devices' rows are private to each device
        seen |= rows
    assert len(public) + len(seen) == len(fd.dataset.y_train)
    assert fd.histograms().shape == (8, fd.dataset.num_classes)


def test_fleet_public_split_is_stratified() -> None:
    fd = fleet_data(parse_config({**FLEET, "federation.seed": 3}))
    y = fd.dataset.y_train.numpy()
    counts = np.bincount(y)
    public_counts = np.bincount(y[fd.public], minlength=len(counts))
    assert public_counts.tolist() == [max(1, round(0.1 * c)) for c in counts]


def test_fleet_data_is_deterministic_and_seed_dependent() -> None:
    # Prepare
    cfg = parse_config({**FLEET, "federation.seed": 3})
    first = fleet_data(cfg)
    fleetdata._build.cache_clear()  # rebuild from scratch, not from the per-process cache
    # Execute
    second = fleet_data(cfg)
    other = fleet_data(parse_config({**FLEET, "federation.seed": 4}))
    # Assert
    assert first is not second
    assert np.array_equal(first.public, second.public)
    assert all(np.array_equal(a, b) for a, b in zip(first.train + first.val, second.train + second.val, strict=True))
    assert not np.array_equal(first.public, other.public)


def test_device_data_rows_match_indices() -> None:
    cfg = parse_config({**FLEET, "federation.seed": 3})
    fd = fleet_data(cfg)
    dd = device_data(cfg, 2)
    assert dd.x.shape == (len(fd.train[2]), *fd.dataset.in_shape)
    assert dd.x_val.shape[0] == len(fd.val[2])
    assert np.array_equal(dd.y.numpy(), fd.dataset.y_train.numpy()[fd.train[2]])


def test_test_subset_is_class_mixed_and_fixed() -> None:
    # Prepare: a test set stored grouped by class (as the CIFAR-10 JPEG copy is)
    import torch

    from fleet.data.splits import test_subset

    y = torch.arange(10).repeat_interleave(100)  # (1000,) 0..0, 1..1, ...
    x = torch.arange(1000).float()

    # Execute
    xs, ys = test_subset(x, y, 100)
    xs2, _ = test_subset(x, y, 100)

    # Assert: every class is present (the first 100 rows would be class 0 only), and the subset is fixed
    assert len(ys) == 100 and set(ys.tolist()) == set(range(10))
    assert torch.equal(xs, xs2)
    assert test_subset(x, y, 0)[0] is x


def test_a_device_holding_the_whole_training_set_shares_the_process_copy() -> None:
    cfg = parse_config({"federation.num-devices": 1, "federation.devices-per-round": 1, "data.partition": "iid",
                        "data.val-fraction": 0.0, "data.public-fraction": 0.0})
    ds = fleet_data(cfg).dataset
    d = device_data(cfg, 0)
    assert d.x.data_ptr() == ds.x_train.data_ptr() and torch.equal(d.x, ds.x_train)  # a view, not a copy
    split = parse_config({"federation.num-devices": 3, "federation.devices-per-round": 1, "data.partition": "iid"})
    fd = fleet_data(split)
    d1 = device_data(split, 1)
    assert torch.equal(d1.x, fd.dataset.x_train[fd.train[1]]) and torch.equal(d1.y_val, fd.dataset.y_train[fd.val[1]])
