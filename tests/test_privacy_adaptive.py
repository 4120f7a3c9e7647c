"""Adaptive clipping (Andrew et al. 2021): the noise split, the geometric update of C, the noised bits, and C
moving in a run, with and without secure aggregation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fleet.config.scenario import ConfigError, parse_config
from fleet.privacy.dp import count_stddev, next_clip_norm, update_multiplier, update_noise_multiplier
from fleet.privacy.policy import noised_unclipped, outgoing_state
from tests.test_privacy_run import _flat, _rounds, _run, _summary

ADAPTIVE = {"privacy.clipping": "adaptive", "privacy.noise-multiplier": 0.05, "privacy.clipped-count-stddev": 0.03,
            "privacy.clip-norm": 100.0, "privacy.target-quantile": 0.5, "privacy.clip-lr": 0.2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference-cache")


def test_noise_split_against_the_papers_formula() -> None:
    # z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): z = 1, sigma_b = 5 -> (1 - 1/100)^(-1/2)
    assert update_noise_multiplier(1.0, 5.0) == pytest.approx((1 - 0.01) ** -0.5, rel=1e-12)
    assert update_noise_multiplier(0.0, 5.0) == 0.0
    assert math.isinf(update_noise_multiplier(1.0, 0.5))
    assert count_stddev(0.0, 40) == 2.0 and count_stddev(0.3, 40) == 0.3  # Flower's default m / 20


def test_geometric_update_of_the_clip_norm() -> None:
    # C exp(-lr (b / m - gamma)): 7 of 10 unclipped, gamma 0.5, lr 0.2 -> C exp(-0.04)
    assert next_clip_norm(2.0, 7.0, 10, 0.5, 0.2) == pytest.approx(2.0 * math.exp(-0.04), rel=1e-12)
    assert next_clip_norm(2.0, 5.0, 10, 0.5, 0.2) == pytest.approx(2.0)  # at the quantile: unchanged
    assert next_clip_norm(2.0, 0.0, 10, 0.5, 0.2) > 2.0  # all clipped: C grows


def test_the_device_sends_its_bit_with_its_share_of_the_counts_noise() -> None:
    cfg = parse_config({"privacy.dp": True, "federation.devices-per-round": 4, **ADAPTIVE})
    base = {"w": np.zeros(100, np.float32)}
    local = {"w": np.full(100, 0.1, np.float32)}  # norm 1
    rng = np.random.default_rng(0)
    fits = np.array([noised_unclipped(cfg, local, base, 2.0, rng) for _ in range(20000)])
    clipped = np.array([noised_unclipped(cfg, local, base, 0.5, rng) for _ in range(20000)])
    assert fits.mean() == pytest.approx(1.0, abs=0.003) and clipped.mean() == pytest.approx(0.0, abs=0.003)
    assert fits.std() == pytest.approx(0.03 / math.sqrt(4), rel=0.03)  # distributed: sigma_b / sqrt(m)
    assert noised_unclipped(parse_config({"privacy.dp": True}), local, base, 2.0, rng) is None  # fixed clipping


def test_the_update_is_clipped_to_the_rounds_norm_with_its_share_of_the_noise() -> None:
    cfg = parse_config({"privacy.dp": True, "federation.devices-per-round": 4, **ADAPTIVE})
    base = {"w": np.zeros(40000, np.float32)}
    local = {"w": np.full(40000, 0.1, np.float32)}  # norm 20
    out = outgoing_state(cfg, local, base, np.random.default_rng(1), clip_norm=3.0)
    noise_std = update_multiplier(cfg) * 3.0 / math.sqrt(4)
    clipped = 3.0 / 20 * 0.1
    assert float(out["w"].mean()) == pytest.approx(clipped, abs=4 * noise_std / math.sqrt(40000))
    assert float(out["w"].std()) == pytest.approx(noise_std, rel=0.02)


def test_adaptive_clipping_needs_dp_and_room_for_the_update_noise() -> None:
    with pytest.raises(ConfigError, match="privacy.clipping"):
        parse_config({"privacy.clipping": "adaptive"})
    with pytest.raises(ConfigError, match="privacy.noise-multiplier"):
        parse_config({"privacy.dp": True, "privacy.clipping": "adaptive", "privacy.noise-multiplier": 1.0,
                      "federation.devices-per-round": 10})  # 2 sigma_b = 1 = z


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secagg"])
def test_the_clip_norm_shrinks_while_every_update_fits(tmp_path: Path, cache: Path, secure: bool) -> None:
    extra = {"privacy.secure-aggregation": True, "strategy.guard": False} if secure else {}
    out = tmp_path / "run"
    _run(_flat(cache, **ADAPTIVE, **extra, **{"privacy.membership-inference": False}), out)
    norms = [r["clip_norm"] for r in _rounds(out) if r["round"] > 0]
    assert norms[0] == 100.0  # round 1 clips to the configured C
    # every update is far below 100: each round C falls by exp(-0.2 (1 - 0.5)), up to the count's noise (0.03/3
    # on the share: 0.2% on C, a tenth of the tolerance)
    for a, b in zip(norms, norms[1:], strict=False):
        assert b == pytest.approx(a * math.exp(-0.1), rel=0.02)
    assert _summary(out)["privacy"]["clipping"] == "adaptive"
    assert _summary(out)["privacy"]["clip_norm"] < norms[-1]
