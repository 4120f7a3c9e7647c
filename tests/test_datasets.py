"""Dataset loaders: digits, torchvision MNIST from a raw idx layout (offline), npz and JPEG npz folders."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fleet.config.schema import ConfigError
from fleet.data.datasets import load_dataset

REAL_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    # load_dataset is lru_cached per process: start clean and drop big arrays afterwards.
    load_dataset.cache_clear()
    yield
    load_dataset.cache_clear()


def _assert_standardised(x: torch.Tensor) -> None:
    """Per-channel mean ~0 and std ~1 over (N, H, W)."""
    mean = x.mean(dim=(0, 2, 3))  # (C,)
    std = x.std(dim=(0, 2, 3))  # (C,)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-3)


def test_digits_shape_classes_and_standardisation() -> None:
    # Execute
    ds = load_dataset("digits")
    # Assert: 1797 images, a stratified 25% test split (floor(class count / 4) per class = 445).
    assert ds.x_train.shape == (1352, 1, 8, 8) and ds.x_test.shape == (445, 1, 8, 8)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 10 and ds.in_shape == (1, 8, 8)
    assert sorted(ds.y_train.unique().tolist()) == list(range(10))
    _assert_standardised(ds.x_train)


def test_digits_split_depends_on_seed_only() -> None:
    a, b, c = load_dataset("digits", seed=1), load_dataset("digits", seed=1), load_dataset("digits", seed=2)
    assert a is b  # cached
    load_dataset.cache_clear()
    again = load_dataset("digits", seed=1)
    assert torch.equal(a.y_test, again.y_test) and torch.equal(a.x_test, again.x_test)
    assert not torch.equal(a.x_test, c.x_test)


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet")
    valid = "digits, mnist, fashion-mnist, cifar10, npz"
    assert str(info.value) == f"data.dataset: unknown dataset 'imagenet'; valid: {valid}"


def _write_idx_raw(root: Path, cls_name: str, n_train: int, n_test: int, hw: int = 28) -> None:
    """Write torchvision's uncompressed MNIST raw layout: <root>/<cls_name>/raw/{train,t10k}-*-ubyte.

    torchvision 0.29's MNIST only checks that the four uncompressed files exist (no MD5) when
    download=False, then parses them as big-endian idx (magic 2051 images, 2049 labels).
    """
    raw = root / cls_name / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, hw, hw), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, hw, hw) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + y.tobytes())


@pytest.mark.parametrize(("dataset", "cls_name"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_torchvision_mnist_from_raw_layout_offline(tmp_path: Path, dataset: str, cls_name: str) -> None:
    # Prepare
    _write_idx_raw(tmp_path, cls_name, n_train=30, n_test=10)
    # Execute
    ds = load_dataset(dataset, root=str(tmp_path), download=False)
    # Assert
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (10, 1, 28, 28)
    assert ds.y_train.tolist() == [i % 10 for i in range(30)]
    assert ds.num_classes == 10
    _assert_standardised(ds.x_train)


def test_torchvision_without_root_names_data_root() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", root="")
    assert str(info.value) == "data.root: 'MNIST' needs data.root (a folder for torchvision's files)"


def test_torchvision_missing_files_names_data_root_on_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("mnist", root=str(tmp_path), download=False)
    msg = str(info.value)
    assert info.value.key == "data.root"
    assert msg.startswith(f"data.root: MNIST not found under '{tmp_path}' (set data.download = true to fetch it)")
    assert "\n" not in msg


def _save(folder: Path, name: str, **arrays: np.ndarray) -> Path:
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def test_npz_grayscale_folder(tmp_path: Path) -> None:
    # Prepare
    rng = np.random.default_rng(1)
    _save(tmp_path, "toy_train", images=rng.integers(0, 256, (12, 6, 6), dtype=np.uint8), labels=np.arange(12) % 3)
    _save(tmp_path, "toy_test", images=rng.integers(0, 256, (5, 6, 6), dtype=np.uint8), labels=np.arange(5) % 3)
    # Execute: the folder's only pair is picked without data.name
    ds = load_dataset("npz", root=str(tmp_path))
    # Assert
    assert ds.x_train.shape == (12, 1, 6, 6) and ds.x_test.shape == (5, 1, 6, 6)
    assert ds.num_classes == 3 and ds.y_test.dtype == torch.int64
    _assert_standardised(ds.x_train)


def test_npz_channels_last_variant(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _save(tmp_path, "rgb_train", images=rng.integers(0, 256, (10, 4, 5, 3), dtype=np.uint8), labels=np.arange(10) % 2)
    _save(tmp_path, "rgb_test", images=rng.integers(0, 256, (4, 4, 5, 3), dtype=np.uint8), labels=np.arange(4) % 2)
    ds = load_dataset("npz", root=str(tmp_path), name="rgb")
    assert ds.x_train.shape == (10, 3, 4, 5) and ds.in_shape == (3, 4, 5)
    _assert_standardised(ds.x_train)


def _jpeg_arrays(n: int, size: int = 8) -> dict[str, np.ndarray]:
    """n tiny RGB images as concatenated JPEG bytes with offsets (n + 1,) and labels."""
    blobs = []
    for i in range(n):
        img = np.full((size, size, 3), 40 * i, dtype=np.uint8)
        img[: size // 2, :, i % 3] = 250
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    return {"jpeg_bytes": np.concatenate(blobs), "offsets": offsets, "labels": np.arange(n) % 2}


def test_npz_jpeg_form_decodes(tmp_path: Path) -> None:
    _save(tmp_path, "jp_train", **_jpeg_arrays(4))
    _save(tmp_path, "jp_test", **_jpeg_arrays(4))
    ds = load_dataset("npz", root=str(tmp_path))
    assert ds.x_train.shape == (4, 3, 8, 8) and ds.x_test.shape == (4, 3, 8, 8)
    assert ds.y_train.tolist() == [0, 1, 0, 1] and ds.num_classes == 2
    # the JPEG round trip keeps the image content: the brightest image is the last one
    assert int(ds.x_train.mean(dim=(1, 2, 3)).argmax()) == 3


@pytest.mark.skipif(not (REAL_MNIST / "mnist_train.npz").is_file(), reason="shared MNIST npz files absent")
def test_real_mnist_npz_files() -> None:
    ds = load_dataset("npz", root=str(REAL_MNIST))
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.num_classes == 10 and int(ds.y_train[0]) == 5
    assert torch.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _good_pair(folder: Path, name: str = "d") -> None:
    x = np.zeros((4, 3, 3), dtype=np.uint8)
    _save(folder, f"{name}_train", images=x, labels=np.arange(4) % 2)
    _save(folder, f"{name}_test", images=x, labels=np.arange(4) % 2)


def test_npz_missing_test_file_names_it(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    (tmp_path / "d_test.npz").unlink()
    with pytest.raises(ConfigError) as info:
        load_dataset("npz", root=str(tmp_path), name="d")
    assert str(info.value) == f"data.root: missing file '{tmp_path / 'd_test.npz'}'"


def test_npz_missing_keys_names_the_file(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    path = _save(tmp_path, "d_train", x=np.zeros((4, 3, 3), dtype=np.uint8), y=np.arange(4))
    with pytest.raises(ConfigError) as info:
        load_dataset("npz", root=str(tmp_path), name="d")
    assert str(info.value) == f"data.root: '{path}' needs keys images+labels or jpeg_bytes+offsets+labels, has x, y"


def test_npz_wrong_dtype_names_the_file(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    path = _save(tmp_path, "d_test", images=np.zeros((4, 3, 3), dtype=np.float32), labels=np.arange(4))
    with pytest.raises(ConfigError) as info:
        load_dataset("npz", root=str(tmp_path), name="d")
    assert str(info.value) == (f"data.root: '{path}': images must be uint8 N×H×W or N×H×W×C matching labels, "
                               "got float32 (4, 3, 3) with 4 labels")


def test_npz_label_count_mismatch_names_the_file(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    path = _save(tmp_path, "d_train", images=np.zeros((4, 3, 3), dtype=np.uint8), labels=np.arange(3))
    with pytest.raises(ConfigError, match="^" + re.escape(f"data.root: '{path}': images must be uint8")):
        load_dataset("npz", root=str(tmp_path), name="d")


def test_npz_unreadable_file_names_it(tmp_path: Path) -> None:
    _good_pair(tmp_path)
    path = tmp_path / "d_train.npz"
    path.write_bytes(b"not a zip archive at all")
    with pytest.raises(ConfigError) as info:
        load_dataset("npz", root=str(tmp_path), name="d")
    assert str(info.value).startswith(f"data.root: cannot read '{path}': ")
    assert "\n" not in str(info.value)


def test_npz_root_not_a_folder_and_ambiguous_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("npz", root=str(tmp_path / "absent"))
    assert str(info.value) == f"data.root: '{tmp_path / 'absent'}' is not a folder"
    _good_pair(tmp_path, "a")
    _good_pair(tmp_path, "b")
    with pytest.raises(ConfigError) as info:
        load_dataset("npz", root=str(tmp_path))
    assert str(info.value) == f"data.name: '{tmp_path}' holds 2 *_train.npz files (a, b); name one"
