"""What a device sends under ``[privacy]``: the state handed to its codec, and the quantizers it may train.

Under differential privacy or secure aggregation the fleet shares one quantization grid: the server's
step sizes, calibrated on its public split. Devices train with it frozen and send their weights as codes
on it, so every device's codes mean the same numbers (they can be summed exactly as integers, and the
grid carries no device's data).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import nn

from fleet.config.scenario import ScenarioConfig
from fleet.privacy.dp import device_noise_std, is_public_key, privatize
from fleet.quant.spec import is_quantizer_key

__all__ = ["shared_grid", "freeze_shared_grid", "outgoing_state", "uniform_weights"]


def shared_grid(cfg: ScenarioConfig) -> bool:
    """Whether the fleet trains on the server's quantization grid (DP or secure aggregation)."""
    return cfg.privacy.dp or cfg.privacy.secure_aggregation


def uniform_weights(cfg: ScenarioConfig) -> bool:
    """Every update counts the same (weight 1): the DP sensitivity of a sum, SecAgg+'s integer sum; and a
    device's data size is not sent."""
    return shared_grid(cfg)


def freeze_shared_grid(model: nn.Module, cfg: ScenarioConfig) -> None:
    """Under a shared grid, the device does not train step sizes (they are the server's)."""
    if not shared_grid(cfg):
        return
    for name, p in model.named_parameters():
        if is_quantizer_key(name):
            p.requires_grad_(False)


def outgoing_state(cfg: ScenarioConfig, local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The state the device's codec encodes: DP-clipped and noised under ``privacy.dp``; public tensors
    (steps, BatchNorm statistics) are the server's own under a shared grid; else ``local`` as it is."""
    pv = cfg.privacy
    if pv.dp:
        std = device_noise_std(pv.noise_multiplier, pv.clip_norm, pv.noise, cfg.federation.devices_per_round)
        return privatize(local, base, clip_norm=pv.clip_norm, noise_std=std, rng=rng)
    if pv.secure_aggregation:
        return {k: np.asarray(base[k] if is_public_key(k) else v, np.float32) for k, v in local.items()}
    return dict(local)
