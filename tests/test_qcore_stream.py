"""Drifting device streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fleet.qcore.stream import DRIFTS, make_stream, rotate


def _data(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 5


@pytest.mark.parametrize("drift", list(DRIFTS))
def test_stream_sizes_and_first_task_undrifted(drift: str) -> None:
    x, y = _data()
    stream = make_stream(x, y, 4, drift, np.random.default_rng(0))
    assert [len(t[1]) for t in stream] == [50] * 4
    assert all(t[0].shape == (50, 1, 8, 8) for t in stream)
    if not DRIFTS[drift][0]:  # covariate only: task 0 images are original images
        rows = x.flatten(1)
        assert all((rows == r).all(1).any() for r in stream[0][0].flatten(1))


def test_noise_grows_over_tasks() -> None:
    x, y = torch.full((400, 1, 8, 8), 0.5), torch.zeros(400, dtype=torch.long)
    stream = make_stream(x, y, 4, "noise", np.random.default_rng(0), severity=1.0)
    stds = [float((t[0] - 0.5).std()) for t in stream]
    assert stds[0] == 0.0 and stds[1] < stds[2] < stds[3]
    assert stds[3] == pytest.approx(0.3, rel=0.1)


def test_contrast_falls_over_tasks() -> None:
    x, y = _data(400)
    stream = make_stream(x, y, 3, "contrast", np.random.default_rng(0))
    spread = [float(t[0].std(dim=(1, 2, 3)).mean()) for t in stream]
    assert spread[0] > spread[1] > spread[2]


def test_label_shift_moves_class_proportions_without_repeats() -> None:
    x, y = _data(500)
    x[:, 0, 0, 0] = torch.arange(500).float()  # tag samples to detect repeats
    stream = make_stream(x, y, 5, "label", np.random.default_rng(3))
    tags = torch.cat([t[0][:, 0, 0, 0] for t in stream])
    assert len(tags.unique()) == len(tags) == 500
    first = np.bincount(stream[0][1].numpy(), minlength=5) / 100
    last = np.bincount(stream[-1][1].numpy(), minlength=5) / 100
    assert np.abs(first - 0.2).max() < 0.15 and np.abs(last - first).sum() > 0.2


def test_rotation_by_90_degrees_matches_rot90() -> None:
    x = torch.rand(2, 1, 6, 6)
    out = rotate(x, 90.0)
    assert torch.allclose(out, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5) or torch.allclose(
        out, torch.rot90(x, k=-1, dims=(2, 3)), atol=1e-5)


def test_unknown_drift_lists_valid_kinds() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="unknown drift 'snow'; valid: covariate, rotation"):
        make_stream(x, y, 4, "snow", np.random.default_rng(0))
