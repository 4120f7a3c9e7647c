"""Data and float references of the coreset benchmark (derived, cached, disjoint).

Each benchmark dataset is written once as an npz pair the framework's ``npz``
loader reads (``data.dataset = "npz"``), under ``<cache>/bench-coreset/<name>/``:

- ``mnist14``: MNIST (/work/shared/data/mnist) average-pooled 28x28 -> 14x14 (4x
  cheaper forward passes; the 2 shared cores cannot afford 28x28 for this grid).
- ``cifar10``: CIFAR-10 (JPEG q75, /work/shared/data/cifar10-jpeg), decoded 3x32x32.

The original training set is split once (fixed RNG, stratified) into a
*pretraining* part P and a *benchmark* part B, disjoint. The float reference
(``cnn``) is pretrained on P only (Adam, batch 64, the recipe of
``fleet.model.reference``) and saved as a safetensors checkpoint that every run loads via
``model.checkpoint``, so one reference serves all seeds and no device sample was
ever seen by it. B is the whole training set the runs see (``data.public-fraction
= 0``). Deviation: P is standardised by its own mean/std while B by B's; both are
stratified random subsets of the same set, so the two differ by well under 1%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from fleet.config.scenario import parse_config
from fleet.data.datasets import load_dataset
from fleet.model.architectures import build_model
from fleet.model.reference import cache_dir, pretrain, save_atomic
from fleet.train.loop import evaluate
from simulations.benchmarks.common import SHARED_DATA, read_json, write_json

__all__ = ["BenchData", "prepare", "load_reference"]

SOURCES = {"mnist14": SHARED_DATA / "mnist", "cifar10": SHARED_DATA / "cifar10-jpeg"}


@dataclass(frozen=True)
class BenchData:
    """Where a prepared benchmark dataset and its reference live, and how they were made."""

    name: str
    root: str  # folder with <name>_train.npz / <name>_test.npz (set B + the official test set)
    checkpoint: str  # float reference pretrained on P
    in_shape: tuple[int, int, int]
    n_pretrain: int
    n_bench: int
    pretrain_epochs: int
    reference_test_accuracy: float


def _raw(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 images (N, H, W[, C]) and labels of train and test, as the bench uses them."""
    src = SOURCES[name]
    if name == "mnist14":
        out = []
        for split in ("train", "test"):
            d = np.load(src / f"mnist_{split}.npz", allow_pickle=False)
            x = d["images"].astype(np.float32).reshape(-1, 14, 2, 14, 2).mean((2, 4))  # (N, 14, 14)
            out += [np.round(x).astype(np.uint8), d["labels"].astype(np.int64)]
        return out[0], out[1], out[2], out[3]
    # The loader's raw decode (uint8 NHWC); the npz loader re-standardises B by its own stats.
    from fleet.data.datasets import _read_npz  # noqa: PLC0415 - reuse the decoder rather than copy it

    x_tr, y_tr = _read_npz(src / "cifar10_jpeg_train.npz")
    x_te, y_te = _read_npz(src / "cifar10_jpeg_test.npz")
    return x_tr, np.asarray(y_tr, np.int64), x_te, np.asarray(y_te, np.int64)


def _split(y: np.ndarray, n_p: int, n_b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified disjoint index sets of sizes about n_p and n_b."""
    p, b = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k_p = round(n_p * len(idx) / len(y))
        k_b = round(n_b * len(idx) / len(y))
        p.append(idx[:k_p])
        b.append(idx[k_p:k_p + k_b])
    return np.sort(np.concatenate(p)), np.sort(np.concatenate(b))


def prepare(name: str, n_pretrain: int, n_bench: int, pretrain_epochs: int, lr: float = 0.003) -> BenchData:
    """Write (once) the B npz pair and the reference pretrained on P; returns where they are."""
    tag = f"{name}-p{n_pretrain}-b{n_bench}-e{pretrain_epochs}"
    folder = cache_dir(parse_config({}, name="x")) / "bench-coreset" / tag
    meta_path = folder / "meta.json"
    meta = read_json(meta_path)
    if meta is not None:
        return BenchData(**{**meta, "in_shape": tuple(meta["in_shape"])})
    folder.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = _raw(name)
    p_idx, b_idx = _split(y_tr, n_pretrain, n_bench, np.random.default_rng(1234))
    np.savez(folder / f"{name}_train.npz", images=x_tr[b_idx], labels=y_tr[b_idx])
    np.savez(folder / f"{name}_test.npz", images=x_te, labels=y_te)
    pre = folder / "pretrain"
    pre.mkdir(exist_ok=True)
    np.savez(pre / f"{name}_train.npz", images=x_tr[p_idx], labels=y_tr[p_idx])
    np.savez(pre / f"{name}_test.npz", images=x_te, labels=y_te)
    ds_p = load_dataset("npz", str(pre), name)
    torch.manual_seed(0)
    model = build_model("cnn", ds_p.in_shape, ds_p.num_classes)
    pretrain(model, ds_p.x_train, ds_p.y_train, pretrain_epochs, lr, seed=0)
    ckpt = folder / "reference.safetensors"
    save_atomic(model.state_dict(), ckpt)
    ds_b = load_dataset("npz", str(folder), name)
    acc, _ = evaluate(model, ds_b.x_test, ds_b.y_test)  # on B's standardisation, as the runs see it
    data = BenchData(name, str(folder), str(ckpt), ds_b.in_shape, len(p_idx), len(b_idx),
                     pretrain_epochs, acc)
    write_json(meta_path, asdict(data), indent=None)
    return data


def load_reference(data: BenchData, num_classes: int = 10) -> nn.Module:
    """The frozen float reference of ``data``."""
    model = build_model("cnn", data.in_shape, num_classes)
    model.load_state_dict(load_file(data.checkpoint))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
