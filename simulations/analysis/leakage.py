"""Measured leakage of a finished run: membership inference against the final global model.

Members are the training samples of the devices that took part in at least one round (user-level: the
server does not know which of a device's samples its coresets used, so some members were never trained
on, which lowers every attack's AUC towards 0.5 honestly); non-members are the central test split, which
no device holds; the attacker's own data is the server's public split (LiRA's shadow models train on it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fleet.config.scenario import ScenarioConfig
from fleet.data.splits import FleetData
from fleet.model.architectures import build_model
from fleet.privacy.membership import membership_inference

__all__ = ["measure_leakage"]


def measure_leakage(cfg: ScenarioConfig, model: torch.nn.Module, fd: FleetData, participation: np.ndarray,
                    test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """``summary.json``'s ``privacy.membership``: each attack's AUC and TPR at 1% FPR (docs/privacy.md)."""
    ds = fd.dataset
    took_part = [fd.train[d] for d in np.flatnonzero(participation > 0)]
    if not took_part:
        return {"skipped": "no device took part"}
    rows = torch.from_numpy(np.sort(np.concatenate(took_part)))
    members = (ds.x_train[rows], ds.y_train[rows])
    shadows = cfg.privacy.shadow_models
    public = torch.from_numpy(fd.public) if shadows > 0 else torch.zeros(0, dtype=torch.long)
    result: dict[str, Any] = membership_inference(
        model, lambda: build_model(cfg.model.arch, ds.in_shape, ds.num_classes), members, test,
        (ds.x_train[public], ds.y_train[public]), n_shadows=max(shadows, 1), epochs=cfg.model.pretrain_epochs,
        lr=cfg.model.pretrain_lr, batch_size=cfg.model.pretrain_batch_size, seed=cfg.federation.seed)
    if shadows == 0:
        result["lira-offline"] = {"skipped": "privacy.shadow-models = 0"}
    result["members"] = "training samples of the devices that took part"
    result["non_members"] = "the central test split"
    return result
