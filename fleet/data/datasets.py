"""Dataset loaders: every dataset becomes normalised float tensors in memory.

``digits`` (scikit-learn, embedded: needs no files), ``mnist``, ``fashion-mnist``
and ``cifar10`` through torchvision from ``data.root`` (downloaded only when
``data.download`` is true), and ``npz``: a folder of ``<name>_train.npz`` /
``<name>_test.npz`` with ``images`` (uint8, N×H×W or N×H×W×C) and ``labels``, or
the JPEG form (``jpeg_bytes``, ``offsets``, ``labels``).

Loaded arrays are cached per process, keyed by the arguments: they are read-only,
so the many simulated devices that share a Ray worker share one copy.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fleet.config.schema import ConfigError

__all__ = ["Dataset", "load_dataset", "DATASETS"]


@dataclass(frozen=True)
class Dataset:
    """A dataset as normalised tensors: images (N, C, H, W) float32, labels (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def _normalise(x_train: np.ndarray, x_test: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8-like NHWC/NHW arrays -> float (N, C, H, W), standardised by the train mean/std per channel."""
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    xtr = torch.from_numpy(np.ascontiguousarray(x_train)).permute(0, 3, 1, 2).float() / scale
    xte = torch.from_numpy(np.ascontiguousarray(x_test)).permute(0, 3, 1, 2).float() / scale
    mean = xtr.mean(dim=(0, 2, 3), keepdim=True)  # (1, C, 1, 1)
    std = xtr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return ((xtr - mean) / std).contiguous(), ((xte - mean) / std).contiguous()


def _pack(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray, scale: float) -> Dataset:
    xtr, xte = _normalise(x_tr, x_te, scale)
    y_train = torch.as_tensor(np.asarray(y_tr), dtype=torch.int64)
    y_test = torch.as_tensor(np.asarray(y_te), dtype=torch.int64)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(xtr, y_train, xte, y_test, num_classes)


def _digits(root: str, name: str, download: bool, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    y = d.target.astype(np.int64)
    # digits ships no split: a fixed, seeded 75/25 stratified split.
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        test[rng.choice(idx, size=len(idx) // 4, replace=False)] = True
    return _pack(x[~test], y[~test], x[test], y[test], scale=16.0)


def _torchvision(cls_name: str):  # noqa: ANN202
    def load(root: str, name: str, download: bool, seed: int) -> Dataset:
        import torchvision

        if not root:
            raise ConfigError("data.root", f"'{cls_name}' needs data.root (a folder for torchvision's files)")
        cls = getattr(torchvision.datasets, cls_name)
        try:
            tr = cls(root, train=True, download=download)
            te = cls(root, train=False, download=download)
        except RuntimeError as exc:
            npz = sorted(p.name for p in Path(root).glob("*.npz"))
            if npz:  # a folder of npz files, not torchvision's layout: the dataset key is what is wrong
                raise ConfigError("data.dataset", f"{cls_name} not found under '{root}', which holds npz files "
                                  f"({', '.join(npz)}): set data.dataset = \"npz\" to read them") from None
            hint = "" if download else " (set data.download = true to fetch it)"
            raise ConfigError("data.root", f"{cls_name} not found under '{root}'{hint}: {exc}") from None
        xtr, xte = np.asarray(tr.data), np.asarray(te.data)
        return _pack(xtr, np.asarray(tr.targets), xte, np.asarray(te.targets), scale=255.0)

    return load


def _decode_jpeg(d: np.lib.npyio.NpzFile) -> np.ndarray:
    from PIL import Image

    buf, off = d["jpeg_bytes"], d["offsets"]
    return np.stack([
        np.asarray(Image.open(io.BytesIO(buf[off[i]:off[i + 1]].tobytes())).convert("RGB"))
        for i in range(len(off) - 1)
    ])  # (N, H, W, 3) uint8


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError("data.root", f"cannot read '{path}': {exc}") from None
    with d:
        if "labels" not in d.files or not ({"images"} <= set(d.files) or {"jpeg_bytes", "offsets"} <= set(d.files)):
            raise ConfigError("data.root", f"'{path}' needs keys images+labels or jpeg_bytes+offsets+labels, "
                              f"has {', '.join(d.files)}")
        x = d["images"] if "images" in d.files else _decode_jpeg(d)
        y = d["labels"]
    if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y):
        raise ConfigError("data.root", f"'{path}': images must be uint8 N×H×W or N×H×W×C matching labels, "
                          f"got {x.dtype} {x.shape} with {len(y)} labels")
    return x, y


def _npz(root: str, name: str, download: bool, seed: int) -> Dataset:
    folder = Path(root)
    if not folder.is_dir():
        raise ConfigError("data.root", f"'{root}' is not a folder")
    if not name:
        found = sorted(p.name[: -len("_train.npz")] for p in folder.glob("*_train.npz"))
        if not found:
            raise ConfigError("data.root", f"'{root}' holds no *_train.npz file (a folder of "
                              "<name>_train.npz / <name>_test.npz)")
        if len(found) > 1:
            raise ConfigError("data.name", f"'{root}' holds {len(found)} *_train.npz files "
                              f"({', '.join(found)}); name one")
        name = found[0]
    paths = [folder / f"{name}_{split}.npz" for split in ("train", "test")]
    for p in paths:
        if not p.is_file():
            raise ConfigError("data.root", f"missing file '{p}'")
    (x_tr, y_tr), (x_te, y_te) = (_read_npz(p) for p in paths)
    return _pack(x_tr, y_tr, x_te, y_te, scale=255.0)


DATASETS = {
    "digits": _digits,
    "mnist": _torchvision("MNIST"),
    "fashion-mnist": _torchvision("FashionMNIST"),
    "cifar10": _torchvision("CIFAR10"),
    "npz": _npz,
}


@functools.lru_cache(maxsize=4)
def load_dataset(dataset: str, root: str = "", name: str = "", download: bool = False, seed: int = 0) -> Dataset:
    """Load a dataset by name (cached per process; the tensors must not be modified)."""
    if dataset not in DATASETS:
        raise ConfigError("data.dataset", f"unknown dataset '{dataset}'; valid: {', '.join(DATASETS)}")
    return DATASETS[dataset](root, name, download, seed)
