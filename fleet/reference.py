"""The frozen full-precision reference: QuaRC's correction model F and KD teacher.

Produced once per scenario (central pretraining on the public split held out from
the devices, or a user checkpoint) and cached on disk by content hash, so repeated
runs do not retrain it. Devices receive it once and keep it by hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fleet.config import ScenarioConfig
from fleet.config_schema import ConfigError
from fleet.fleetdata import FleetData
from fleet.models import build_model
from fleet.train import evaluate

log = logging.getLogger(__name__)

__all__ = ["cache_dir", "reference_model", "state_hash", "load_state_checked", "save_atomic", "pretrain"]


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file({k: v.detach().contiguous() for k, v in state.items()}, tmp)
    os.replace(tmp, path)


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
        "v": 1, "dataset": d.dataset, "root": d.root, "name": d.name, "public": d.public_fraction,
        "seed": cfg.federation.seed, "arch": m.arch, "epochs": m.pretrain_epochs, "lr": m.pretrain_lr,
    }, sort_keys=True)


def pretrain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int = 0) -> None:
    """Central float training (Adam, cross-entropy, batch 64), seeded; leaves the model in eval mode."""
    if len(y) == 0 or epochs == 0:
        return
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), 64):
            idx = perm[s:s + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


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
            log.info("pretraining the float reference on %d public samples", len(fd.public))
            pub = fd.public
            pretrain(model, fd.dataset.x_train[pub], fd.dataset.y_train[pub], cfg.model.pretrain_epochs,
                     cfg.model.pretrain_lr, cfg.federation.seed)
            save_atomic(model.state_dict(), path)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    acc, _ = evaluate(model, ds.x_test, ds.y_test)
    return model, state_hash(model.state_dict()), acc
