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
from fleet.privacy.dp import count_stddev, device_noise_std, is_public_key, privatize, update_multiplier, update_norm
from fleet.quant.spec import is_quantizer_key

__all__ = ["shared_grid", "freeze_shared_grid", "outgoing_state", "uniform_weights", "update_multiplier",
           "noised_unclipped"]


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
                   rng: np.random.Generator, clip_norm: float | None = None) -> dict[str, np.ndarray]:
    """The state the device's codec encodes: DP-clipped (to ``clip_norm``, the round's C; default
    ``privacy.clip-norm``) and noised under ``privacy.dp``; public tensors (steps, BatchNorm statistics) are the
    server's own under a shared grid; else ``local`` as it is."""
    pv = cfg.privacy
    if pv.dp:
        clip = clip_norm or pv.clip_norm
        std = device_noise_std(update_multiplier(cfg), clip, pv.noise, cfg.federation.devices_per_round)
        return privatize(local, base, clip_norm=clip, noise_std=std, rng=rng)
    if pv.secure_aggregation:
        return {k: np.asarray(base[k] if is_public_key(k) else v, np.float32) for k, v in local.items()}
    return dict(local)


def noised_unclipped(cfg: ScenarioConfig, local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray],
                     clip_norm: float, rng: np.random.Generator) -> float | None:
    """Adaptive clipping: whether the update fits under ``clip_norm`` (1 or 0), plus this device's share of the
    count's noise (``sigma_b / sqrt(m)`` distributed, ``sigma_b`` local); None under fixed clipping."""
    pv = cfg.privacy
    if not pv.dp or pv.clipping != "adaptive":
        return None
    m = cfg.federation.devices_per_round
    std = device_noise_std(1.0, count_stddev(pv.clipped_count_stddev, m), pv.noise, m)
    return float(update_norm(local, base) <= clip_norm) + float(rng.normal(0.0, std))
