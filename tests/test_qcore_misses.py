"""Quantization-miss counting, PMF core sampling and the fixed-size core update."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fleet.qcore.misses import count_misses, record_misses, sample_core, update_core


def _records() -> np.ndarray:
    # (R=4, B=2, N=3); rows are recordings, written per sample for readability.
    per_sample = {
        0: ([1, 0, 1, 0], [1, 1, 1, 1]),  # b0: 2 misses, b1: 0        -> 2
        1: ([0, 0, 0, 0], [0, 1, 0, 0]),  # b0: never (50), b1: 1      -> 51
        2: ([0, 1, 1, 0], [1, 0, 0, 1]),  # b0: 1, b1: 1 (F->T ignored) -> 2
    }
    rec = np.zeros((4, 2, 3), dtype=bool)
    for n, widths in per_sample.items():
        for b, seq in enumerate(widths):
            rec[:, b, n] = seq
    return rec


def test_count_misses_hand_computed() -> None:
    # Prepare
    rec = _records()
    # Execute
    total = count_misses(rec)
    per_width = count_misses(rec, never_learned_count=7, per_width=True)
    # Assert
    assert total.tolist() == [2, 51, 2]
    assert per_width.tolist() == [[2, 7, 1], [0, 1, 1]]


def test_count_misses_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="records must be"):
        count_misses(np.zeros((3, 4), dtype=bool))


def test_record_misses_marks_correct_samples() -> None:
    # Prepare: a "model" that always predicts class 1
    x, y = torch.zeros(4, 2), torch.tensor([1, 0, 1, 1])
    always_one = lambda t: torch.tensor([[0.0, 1.0]]).repeat(len(t), 1)  # noqa: E731
    # Execute
    rec = record_misses([always_one, always_one], x, y, batch_size=3)
    # Assert
    assert rec.tolist() == [[True, False, True, True]] * 2


def test_sample_core_frequencies_follow_counts() -> None:
    # Prepare: with size 1, P(draw i) = count_i / sum exactly
    counts = np.array([0, 1, 2, 3, 4])
    rng = np.random.default_rng(0)
    # Execute
    draws = np.array([sample_core(counts, 1, rng)[0] for _ in range(20000)])
    freq = np.bincount(draws, minlength=5) / len(draws)
    # Assert
    np.testing.assert_allclose(freq, counts / counts.sum(), atol=0.015)
    assert freq[0] == 0.0


def test_sample_core_without_replacement_never_draws_zero_counts() -> None:
    counts = np.array([5, 0, 1, 0, 1, 3])
    rng = np.random.default_rng(1)
    for _ in range(200):
        idx = sample_core(counts, 3, rng)
        assert len(set(idx.tolist())) == 3
        assert not set(idx.tolist()) & {1, 3}


def test_sample_core_fills_uniformly_when_too_few_nonzero() -> None:
    # Prepare: 2 non-zero counts, size 4 -> both, plus 2 distinct zero-count samples
    counts = np.array([0, 9, 0, 0, 4, 0])
    # Execute
    idx = sample_core(counts, 4, np.random.default_rng(2))
    # Assert
    assert {1, 4} <= set(idx.tolist()) and len(set(idx.tolist())) == 4


@pytest.mark.parametrize("size", [0, 7])
def test_sample_core_rejects_bad_size(size: int) -> None:
    with pytest.raises(ValueError, match="core size"):
        sample_core(np.ones(6), size, np.random.default_rng(0))


def test_update_core_keeps_size_and_restores_bn_stats() -> None:
    # Prepare
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    core = (torch.randn(5, 1, 2, 2), torch.randint(0, 3, (5,)))
    new = (torch.randn(12, 1, 2, 2), torch.randint(0, 3, (12,)))
    # Execute
    cx, cy, n_fwd = update_core(model, core, new, np.random.default_rng(0), recordings=3,
                                batch_size=4)
    # Assert
    assert cx.shape == (5, 1, 2, 2) and cy.shape == (5,)
    assert n_fwd == 3 * 17
    pool = torch.cat([core[0], new[0]]).flatten(1)
    assert all((pool == row).all(1).any() for row in cx.flatten(1))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not model.training
