"""Differential privacy on the device: clip the float model update, add Gaussian noise, before encoding.

What a device sends under ``privacy.dp`` (docs/privacy.md, "What is private"):

- **private** (clipped and noised): every trained float tensor, i.e. weights and biases;
- **public** (the server's own values, sent back unchanged): LSQ step sizes, which the server calibrated
  on its public split and the devices do not train under DP (a shared grid), and BatchNorm running
  statistics, which the server re-estimates on its public split (``strategy.bn-stats = "public"``);
- **not sent**: everything else (init flags, counters, optimizer state, the coreset).

The update ``d = local - base`` over the private tensors is scaled to L2 norm at most ``C``
(``privacy.clip-norm``) and Gaussian noise ``N(0, s^2)`` is added to every coordinate, with
``s = sigma * C`` (``privacy.noise = "local"``: each update is private by itself) or
``s = sigma * C / sqrt(m)`` for ``m`` devices per round (``"distributed"``: the *sum* of the
round's updates carries ``N(0, (sigma C)^2)``, as in DP-FedAvg; the guarantee then holds against a
server that sees only the sum, i.e. with ``privacy.secure-aggregation``). The codec encodes the noised
state afterwards: a function of the noised vector only, so the rounding is post-processing.

>>> base = {"w": np.zeros(4, np.float32), "w_quant.step": np.ones(1, np.float32)}
>>> local = {"w": np.array([3.0, 4.0, 0.0, 0.0], np.float32), "w_quant.step": np.full(1, 2.0, np.float32)}
>>> out = privatize(local, base, clip_norm=1.0, noise_std=0.0, rng=np.random.default_rng(0))
>>> out["w"].tolist(), out["w_quant.step"].tolist()  # norm 5 clipped to 1; the step is the server's
([0.6000000238418579, 0.800000011920929, 0.0, 0.0], [1.0])
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from fleet.config.scenario import ScenarioConfig
from fleet.quant.spec import is_quantizer_key

__all__ = ["is_public_key", "private_keys", "update_norm", "clip_update", "device_noise_std", "privatize",
           "BN_STAT_SUFFIXES", "count_stddev", "update_noise_multiplier", "next_clip_norm", "update_multiplier"]

State = dict[str, np.ndarray]

#: BatchNorm running statistics: measured on data, so public only when the server measures them itself.
BN_STAT_SUFFIXES = ("running_mean", "running_var")


def is_public_key(key: str) -> bool:
    """Whether a state tensor is the server's, not the device's, under DP and secure aggregation:
    quantizer state (the shared grid) and BatchNorm running statistics."""
    return is_quantizer_key(key) or key.endswith(BN_STAT_SUFFIXES)


def private_keys(state: Mapping[str, np.ndarray]) -> list[str]:
    """The keys of ``state`` a device's update may change (the clipped, noised vector), in order."""
    return [k for k in state if not is_public_key(k)]


def update_norm(local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> float:
    """L2 norm of ``local - base`` over the private tensors, accumulated in float64."""
    total = 0.0
    for k in private_keys(base):
        d = np.asarray(local[k], np.float64) - np.asarray(base[k], np.float64)
        total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total)


def clip_update(local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], clip_norm: float) -> State:
    """``base + d * min(1, C / ||d||)`` on the private tensors; public tensors are ``base``'s.

    Raises
    ------
    ValueError
        When the update is not finite (a diverged device cannot be clipped; its update is refused).
    """
    norm = update_norm(local, base)
    if not math.isfinite(norm):
        raise ValueError("the model update is not finite and cannot be clipped")
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out: State = {}
    for k, b in base.items():
        b32 = np.asarray(b, np.float32)
        if is_public_key(k):
            out[k] = b32.copy()
        else:
            d = np.asarray(local[k], np.float64) - b32
            out[k] = (b32 + d * factor).astype(np.float32)
    return out


def device_noise_std(noise_multiplier: float, clip_norm: float, noise: str, devices_per_round: int) -> float:
    """The per-coordinate noise std a device adds (``noise``: "local" or "distributed"; see module docstring)."""
    if noise == "local":
        return noise_multiplier * clip_norm
    if noise == "distributed":
        return noise_multiplier * clip_norm / math.sqrt(devices_per_round)
    raise ValueError(f"unknown noise placement '{noise}'; valid: distributed, local")


def privatize(local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], *, clip_norm: float,
              noise_std: float, rng: np.random.Generator) -> State:
    """The state a DP device hands to its codec: clipped update plus noise on the private tensors."""
    out = clip_update(local, base, clip_norm)
    if noise_std > 0:
        for k in private_keys(base):
            out[k] = (out[k] + rng.normal(0.0, noise_std, out[k].shape)).astype(np.float32)
    return out


# -- adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021, "Differentially Private Learning with
# Adaptive Clipping"; the algorithm of Flower's DifferentialPrivacy*AdaptiveClipping wrappers) ----------------


def count_stddev(configured: float, devices_per_round: int) -> float:
    """The noise std ``sigma_b`` of a round's count of unclipped updates (0 = ``m / 20``, Flower's default)."""
    return configured if configured > 0 else devices_per_round / 20.0


def update_noise_multiplier(noise_multiplier: float, sigma_b: float) -> float:
    """The update's share ``z_d`` of the noise multiplier ``z`` when the count costs ``sigma_b``:
    ``z_d = (z^-2 - (2 sigma_b)^-2)^(-1/2)``, so that the two releases compose to one Gaussian of multiplier ``z``
    (the paper's Theorem 1). ``z = 0`` stays 0.

    >>> round(update_noise_multiplier(1.0, 0.5), 6)  # 2 sigma_b = 1 = z: nothing left for the update
    inf
    >>> round(update_noise_multiplier(1.0, 5.0), 4)
    1.005
    """
    if noise_multiplier == 0:
        return 0.0
    rest = noise_multiplier ** -2 - (2 * sigma_b) ** -2
    return math.inf if rest <= 0 else rest ** -0.5


def next_clip_norm(clip_norm: float, noised_unclipped: float, devices_per_round: int, target_quantile: float,
                   clip_lr: float) -> float:
    """The geometric update ``C <- C exp(-lr (b - gamma))`` with ``b`` the noised share of unclipped updates:
    C grows while fewer than ``gamma`` of the updates fit under it, and shrinks while more do.

    >>> round(next_clip_norm(1.0, 10.0, 10, 0.5, 0.2), 6)  # all fit: shrink by exp(-0.1)
    0.904837
    """
    share = noised_unclipped / devices_per_round
    return clip_norm * math.exp(-clip_lr * (share - target_quantile))


def update_multiplier(cfg: ScenarioConfig) -> float:
    """The noise multiplier of the model update: all of ``privacy.noise-multiplier``, or under adaptive clipping
    what the count of unclipped updates leaves of it (``fleet.privacy.dp.update_noise_multiplier``)."""
    pv = cfg.privacy
    if pv.clipping != "adaptive":
        return pv.noise_multiplier
    return update_noise_multiplier(pv.noise_multiplier, count_stddev(pv.clipped_count_stddev,
                                                                     cfg.federation.devices_per_round))
