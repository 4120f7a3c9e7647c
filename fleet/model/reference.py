"""The frozen full-precision reference: QuaRC's correction model F and KD teacher.

Produced once per scenario (central pretraining on the public split held out from
the devices, or a user checkpoint) and cached on disk by content hash, so repeated
runs do not retrain it. Devices receive it once and keep it by hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fleet.atomic import write_atomic
from fleet.config.scenario import ScenarioConfig
from fleet.config.schema import ConfigError
from fleet.data.splits import FleetData
from fleet.model.architectures import build_model
from fleet.model.bnstats import reestimate_bn
from fleet.train.loop import evaluate

log = logging.getLogger(__name__)

BN_SAMPLES = 10_000  # training samples that measure the reference's BatchNorm statistics

__all__ = ["cache_dir", "reference_model", "state_hash", "load_state_checked", "save_atomic", "pretrain",
           "flip_crop", "augment_for"]


def cache_dir(cfg: ScenarioConfig) -> Path:
    """Where pretrained references are cached (``model.cache-dir`` or ~/.cache/edgefleet)."""
    root = cfg.model.cache_dir or os.environ.get("EDGEFLEET_CACHE") or str(Path.home() / ".cache" / "edgefleet")
    return Path(root)


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """Content hash of a state dict (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    """Write safetensors to a temporary file, then rename (never a half-written file)."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, tmp))


def load_state_checked(model: nn.Module, path: str, key: str = "model.checkpoint") -> None:
    """Load a safetensors state into ``model``; a missing file or wrong architecture is a one-line error."""
    if not Path(path).is_file():
        raise ConfigError(key, f"checkpoint '{path}' not found")
    try:
        state = load_file(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise ConfigError(key, f"cannot read '{path}' as safetensors: {exc}") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    bad = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or bad:
        what = f"missing {missing[:3]}" if missing else f"shape mismatch at {bad[:3]}"
        raise ConfigError(key, f"'{path}' does not fit model.arch '{type(model).__name__}': {what}")
    model.load_state_dict({k: state[k] for k in own})


def _recipe(cfg: ScenarioConfig) -> str:
    d, m = cfg.data, cfg.model
    return json.dumps({
        "v": 3, "dataset": d.dataset, "root": d.root, "name": d.name, "public": d.public_fraction,
        "seed": cfg.federation.seed, "arch": m.arch, "epochs": m.pretrain_epochs, "lr": m.pretrain_lr,
        "data": m.pretrain_data, "optimizer": m.pretrain_optimizer, "batch": m.pretrain_batch_size,
        "augment": m.pretrain_augment, **({"train_limit": d.train_limit} if d.train_limit else {}),
        # the whole training set depends on the partition only through public + val (what is left out)
        **({"devices": cfg.federation.num_devices, "partition": d.partition, "val": d.val_fraction,
            "alpha": d.alpha} if m.pretrain_data == "train" else {}),
    }, sort_keys=True)


def flip_crop(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop after zero padding by ``pad`` (CIFAR's standard augmentation)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]  # (N, 1, 1, W)
    chans = torch.arange(x.shape[1])[None, :, None, None]
    return padded[torch.arange(n)[:, None, None, None], chans, rows, cols]


def augment_for(setting: str, in_shape: tuple[int, int, int]) -> str:
    """``model.pretrain-augment`` resolved: 'auto' is flip-crop for 32x32 colour images, else none."""
    if setting != "auto":
        return setting
    return "flip-crop" if tuple(in_shape) == (3, 32, 32) else "none"


def pretrain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int = 0, *,
             optimizer: str = "adam", batch_size: int = 64, augment: str = "none") -> None:
    """Central float training, seeded; leaves the model in eval mode.

    ``adam``: Adam with cosine decay per step over all epochs; ``sgd``: Nesterov SGD (momentum 0.9,
    weight decay 5e-4) with a one-cycle schedule peaking at ``lr``. Cross-entropy, batch ``batch_size``.
    BatchNorm statistics are re-estimated on (up to 10,000 of) the training samples at the end.
    """
    if len(y) == 0 or epochs == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(y) / batch_size)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                                                     weight_decay=5e-4)
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=steps)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), batch_size):
            idx = perm[s:s + batch_size]
            xb = flip_crop(x[idx], gen) if augment == "flip-crop" else x[idx]
            loss = nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    # A short job leaves BatchNorm's running averages far from the trained model's statistics: measure them.
    reestimate_bn(model, x[torch.randperm(len(y), generator=gen)[:BN_SAMPLES]])
    model.eval()


def _pretrain_indices(cfg: ScenarioConfig, fd: FleetData) -> np.ndarray:
    """What the reference trains on: the public split, or every training sample (public and devices')."""
    if cfg.model.pretrain_data == "public":
        return np.asarray(fd.public, dtype=np.int64)
    return np.sort(np.concatenate([np.asarray(fd.public, dtype=np.int64)] + [np.asarray(t) for t in fd.train]))


def reference_model(cfg: ScenarioConfig, fd: FleetData) -> tuple[nn.Module, str, float]:
    """The float reference for a scenario: (frozen model, content hash, central test accuracy)."""
    ds = fd.dataset
    torch.manual_seed(cfg.federation.seed)  # the architecture's initial weights
    model = build_model(cfg.model.arch, ds.in_shape, ds.num_classes)
    if cfg.model.checkpoint:
        load_state_checked(model, cfg.model.checkpoint)
    else:
        path = cache_dir(cfg) / "refs" / f"{hashlib.sha256(_recipe(cfg).encode()).hexdigest()[:16]}.safetensors"
        if path.is_file():
            model.load_state_dict(load_file(str(path)))
            log.info("float reference loaded from cache %s", path)
        else:
            idx = torch.from_numpy(_pretrain_indices(cfg, fd))
            m = cfg.model
            log.info("pretraining the float reference on %d %s samples", len(idx), m.pretrain_data)
            pretrain(model, ds.x_train[idx], ds.y_train[idx], m.pretrain_epochs, m.pretrain_lr, cfg.federation.seed,
                     optimizer=m.pretrain_optimizer, batch_size=m.pretrain_batch_size,
                     augment=augment_for(m.pretrain_augment, ds.in_shape))
            save_atomic(model.state_dict(), path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    digest = state_hash(model.state_dict())
    return model, digest, _test_accuracy(cfg, model, digest, ds.x_test, ds.y_test)


def _test_accuracy(cfg: ScenarioConfig, model: nn.Module, digest: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """The reference's accuracy on the central test split, cached by (weights, test split) content: a full
    test pass costs seconds on each run, and neither side changes between runs of one recipe."""
    h = hashlib.sha256(str((tuple(x.shape), str(x.dtype))).encode())
    h.update(y.numpy().tobytes())
    h.update(x[:: max(1, len(x) // 256)].contiguous().numpy().tobytes())  # a spread sample of the inputs
    path = cache_dir(cfg) / "refs" / "accuracy" / f"{digest}-{h.hexdigest()[:16]}.json"
    try:
        return float(json.loads(path.read_text())["accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    acc, _ = evaluate(model, x, y)
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps({"accuracy": acc})))
    return acc
