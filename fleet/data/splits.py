"""The fleet's data: a public split for the server and a private split per device.

Built deterministically from the scenario's data keys and seed, once per process
(cached), so every Ray worker derives the same partition without shipping data.
A device only ever indexes its own rows; nothing here leaves the device side.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from fleet.config.scenario import ScenarioConfig
from fleet.data.datasets import Dataset, load_dataset
from fleet.data.partition import label_histograms, partition

__all__ = ["FleetData", "DeviceData", "fleet_data", "device_data", "device_data_key", "test_subset", "eval_subset",
           "seeded_subset"]


@dataclass(frozen=True)
class DeviceData:
    """One device's private data: training rows and a held-out split for on-device evaluation."""

    x: torch.Tensor  # (n, C, H, W)
    y: torch.Tensor  # (n,)
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass(frozen=True)
class FleetData:
    """Indices into the training set: the server's public split and each device's train/val rows."""

    dataset: Dataset
    public: np.ndarray
    train: tuple[np.ndarray, ...]
    val: tuple[np.ndarray, ...]

    def histograms(self) -> np.ndarray:
        """Per-device label counts of the training rows, (devices, classes)."""
        return label_histograms(self.dataset.y_train.numpy(), list(self.train), self.dataset.num_classes)


def _train_pool(n: int, limit: int, seed: int) -> np.ndarray:
    """``data.train-limit``: the training rows the fleet uses, a fixed random subset (every row when 0).

    >>> _train_pool(5, 0, 0).tolist(), len(_train_pool(100, 10, 0)), _train_pool(4, 9, 0).tolist()
    ([0, 1, 2, 3, 4], 10, [0, 1, 2, 3])
    """
    if not limit or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0x5EED]).choice(n, size=limit, replace=False))


def _split_public(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Stratified public split: the same share of every class."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    picks = [rng.choice(np.flatnonzero(y == c), size=max(1, round(fraction * np.sum(y == c))), replace=False)
             for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


@functools.lru_cache(maxsize=4)
def _build(dataset: str, root: str, name: str, download: bool, part: str, num_devices: int, seed: int,
           alpha: float, shards: int, sigma: float, min_size: int, val_fraction: float,
           public_fraction: float, train_limit: int) -> FleetData:
    ds = load_dataset(dataset, root, name, download, seed)
    y = ds.y_train.numpy()
    rng = np.random.default_rng([seed, 0xDA7A])
    pool = _train_pool(len(y), train_limit, seed)
    public = pool[_split_public(y[pool], public_fraction, rng)]
    private = np.setdiff1d(pool, public)
    parts = partition(part, y[private], num_devices, rng, alpha=alpha, min_size=min_size,
                      shards_per_device=shards, sigma=sigma)
    train, val = [], []
    for p in parts:
        rows = rng.permutation(private[p])
        n_val = round(val_fraction * len(rows)) if len(rows) >= 2 else 0
        n_val = max(n_val, 1) if val_fraction > 0 and len(rows) >= 2 else n_val
        val.append(np.sort(rows[:n_val]))
        train.append(np.sort(rows[n_val:]))
    return FleetData(ds, public, tuple(train), tuple(val))


def _data_key(cfg: ScenarioConfig) -> tuple:
    d = cfg.data
    return (d.dataset, d.root, d.name, d.download, d.partition, cfg.federation.num_devices, cfg.federation.seed,
            d.alpha, d.shards_per_device, d.quantity_sigma, d.min_partition_size, d.val_fraction, d.public_fraction,
            d.train_limit)


def fleet_data(cfg: ScenarioConfig) -> FleetData:
    """The fleet's data for a scenario (cached per process)."""
    return _build(*_data_key(cfg))


def device_data_key(cfg: ScenarioConfig, device: int) -> tuple:
    """What names device ``device``'s data in this process (the same data for the same key)."""
    return (_data_key(cfg), device)


def device_data(cfg: ScenarioConfig, device: int) -> DeviceData:
    """Device ``device``'s private data, gathered once per process (not copied again every round)."""
    return _device_data(_data_key(cfg), device)


@functools.lru_cache(maxsize=4096)
def _device_data(key: tuple, device: int) -> DeviceData:
    fd = _build(*key)
    ds = fd.dataset
    tr, va = fd.train[device], fd.val[device]
    return DeviceData(_take(ds.x_train, tr), _take(ds.y_train, tr), _take(ds.x_train, va), _take(ds.y_train, va))


def _take(t: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
    """``t[idx]``; a view when ``idx`` is a run of consecutive indices (a device holding the whole training set
    shares the process's copy instead of holding a second one). Read-only either way, as the dataset is.

    >>> t = torch.arange(6)
    >>> _take(t, np.arange(2, 5)).data_ptr() == t[2:].data_ptr(), _take(t, np.array([0, 2])).tolist()
    (True, [0, 2])
    """
    idx = np.asarray(idx)
    if len(idx) > 1 and idx[-1] - idx[0] == len(idx) - 1 and bool(np.all(np.diff(idx) == 1)):
        return t[int(idx[0]):int(idx[-1]) + 1]
    return t[idx]


def eval_subset(n: int, limit: int, seed: int, device: int) -> torch.Tensor:
    """Indices of a device's held-out samples it evaluates on: all, or a fixed random ``limit`` of them.

    >>> eval_subset(5, 0, 0, 3).tolist(), len(eval_subset(100, 10, 0, 3))
    ([0, 1, 2, 3, 4], 10)
    """
    return seeded_subset(n, limit, [seed, device, 7])


def seeded_subset(n: int, limit: int, key: list[int]) -> torch.Tensor:
    """All of ``range(n)``, or a sorted random ``limit`` of it drawn from ``default_rng(key)``."""
    if not limit or limit >= n:
        return torch.arange(n)
    return torch.from_numpy(np.sort(np.random.default_rng(key).permutation(n)[:limit]))


def test_subset(x: torch.Tensor, y: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The central test set, or a fixed random subset of ``limit`` samples (``data.test-limit``).

    A random subset, not the first ``limit`` rows: some files store their test set grouped by class (the
    CIFAR-10 JPEG copy does), where the first rows would all be one class. The subset is the same for every
    run and seed, so runs stay comparable.
    """
    if not limit or limit >= len(y):
        return x, y
    idx = torch.from_numpy(np.sort(np.random.default_rng(0).permutation(len(y))[:limit]))
    return x[idx], y[idx]
