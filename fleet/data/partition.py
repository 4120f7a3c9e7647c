"""Seeded partitioners: how the training set is split over devices.

Each returns one index array per device. ``iid`` deals shuffled indices evenly;
``dirichlet`` draws each class's split over devices from Dir(alpha) (label skew,
Hsu et al. 2019), redrawing until every device holds ``min_size`` samples;
``shards`` gives each device ``k`` classes (label-quantity skew, #C = k);
``quantity`` keeps labels IID but draws device sizes from a log-normal (quantity
skew). All take an explicit ``np.random.Generator``.

Examples
--------
>>> y = np.repeat(np.arange(4), 25)
>>> parts = partition("iid", y, 5, np.random.default_rng(0))
>>> [len(p) for p in parts]
[20, 20, 20, 20, 20]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["PARTITIONERS", "partition", "label_histograms"]


def iid(y: np.ndarray, n: int, rng: np.random.Generator, **_: float) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(y)), n)]


def dirichlet(y: np.ndarray, n: int, rng: np.random.Generator, alpha: float = 0.5,
              min_size: int = 4, **_: float) -> list[np.ndarray]:
    classes = np.unique(y)
    by_class = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    for _attempt in range(100):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in by_class:
            props = rng.dirichlet(np.full(n, alpha))  # (n,)
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for dev, chunk in enumerate(np.split(idx, cuts)):
                parts[dev].append(chunk)
        sizes = [sum(len(c) for c in p) for p in parts]
        if min(sizes) >= min_size:
            return [np.sort(np.concatenate(p)) for p in parts]
    raise ValueError(
        f"data.min-partition-size: Dirichlet(alpha={alpha}) could not give each of {n} devices "
        f"{min_size} samples from {len(y)} in 100 draws; lower it, raise data.alpha or use fewer devices"
    )


def shards(y: np.ndarray, n: int, rng: np.random.Generator, shards_per_device: int = 2,
           **_: float) -> list[np.ndarray]:
    # FedAvg-paper style: sort by label, cut into n*k shards, deal k shards per device.
    order = np.argsort(y + rng.random(len(y)) * 0.5, kind="stable")  # label-sorted, shuffled within class
    pieces = np.array_split(order, n * shards_per_device)
    deal = rng.permutation(len(pieces))
    return [np.sort(np.concatenate([pieces[j] for j in deal[d::n]])) for d in range(n)]


def quantity(y: np.ndarray, n: int, rng: np.random.Generator, sigma: float = 1.0,
             min_size: int = 4, **_: float) -> list[np.ndarray]:
    if n * min_size > len(y):
        raise ValueError(f"data.min-partition-size: {n} devices x {min_size} exceeds {len(y)} samples")
    weights = rng.lognormal(0.0, sigma, n)
    spare = len(y) - n * min_size
    sizes = min_size + np.floor(weights / weights.sum() * spare).astype(int)
    sizes[: len(y) - sizes.sum()] += 1  # hand out the rounding remainder
    perm = rng.permutation(len(y))
    return [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]


Partitioner = Callable[..., list[np.ndarray]]

PARTITIONERS: dict[str, Partitioner] = {"iid": iid, "dirichlet": dirichlet, "shards": shards, "quantity": quantity}


def partition(name: str, y: np.ndarray, num_devices: int, rng: np.random.Generator,
              **options: float) -> list[np.ndarray]:
    """Split sample indices over ``num_devices`` with the named partitioner."""
    if name not in PARTITIONERS:
        raise ValueError(f"unknown partition '{name}'; valid: {', '.join(PARTITIONERS)}")
    if num_devices > len(y):
        raise ValueError(f"federation.num-devices: {num_devices} devices but only {len(y)} training samples")
    return PARTITIONERS[name](np.asarray(y), num_devices, rng, **options)


def label_histograms(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-device label counts, shape (devices, classes)."""
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])
