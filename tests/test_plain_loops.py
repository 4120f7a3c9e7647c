"""Tests of the plain PyTorch anchor (``simulations.benchmarks.plain_loops``) on tiny data."""

from __future__ import annotations

import math

import numpy as np
import torch

from simulations.benchmarks.plain_loops import (
    Lsq,
    PlainCNN,
    balanced_random_coreset,
    class_budgets,
    fedavg_plain,
    qat_single_device,
    quantize_plain,
)


def _tiny_data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.arange(n) % 10
    return x, y


def _fp_model() -> PlainCNN:
    torch.manual_seed(0)
    return PlainCNN(1, 10).eval()


def test_unsigned_2bit_quantizer_codes() -> None:
    # Prepare: step 0.5, marked initialised, so x / s = -2, 0.4, 0.6, 2.0, 2.8, 10
    q = Lsq(2, signed=False).eval()
    q.step.data.fill_(0.5)
    q.initialized.fill_(1)
    x = torch.tensor([-1.0, 0.2, 0.3, 1.0, 1.4, 5.0])

    # Execute
    codes = q(x) / 0.5

    # Assert: clamp to [0, 3] then round
    assert codes.tolist() == [0.0, 0.0, 1.0, 2.0, 3.0, 3.0]


def test_signed_range_and_step_init() -> None:
    # Prepare
    q = Lsq(3, signed=True, is_weight=True).train()
    x = torch.tensor([1.0, -3.0, 0.2, 2.0])  # mean|x| = 1.55

    # Execute
    q(x)

    # Assert: range [-4, 3] and s = 2 * mean|x| / sqrt(Qp)
    assert (q.qmin, q.qmax) == (-4, 3)
    assert math.isclose(float(q.step.detach()), 2 * 1.55 / math.sqrt(3), rel_tol=1e-6)


def test_class_budgets_largest_remainder() -> None:
    # counts 5, 3, 2 at 0.5: total 5, raw 2.5, 1.5, 1.0 -> floors 2, 1, 1;
    # one leftover to the tie on .5 broken by class id -> class 0
    assert class_budgets(np.array([5, 3, 2]), 0.5).tolist() == [3, 1, 1]
    # counts 4, 4, 2 at 0.25: total round(2.5) = 2 (half to even), raw 1, 1, 0.5 -> floors 1, 1, 0;
    # no leftover units
    assert class_budgets(np.array([4, 4, 2]), 0.25).tolist() == [1, 1, 0]
    # counts 3, 3, 4 at 0.3: total 3, raw 0.9, 0.9, 1.2 -> floors 0, 0, 1;
    # two leftovers to classes 0 and 1 (fraction .9 > .2)
    assert class_budgets(np.array([3, 3, 4]), 0.3).tolist() == [1, 1, 1]


def test_balanced_random_coreset_draws_budget_per_class() -> None:
    # Prepare
    y = np.array([0] * 5 + [1] * 3 + [2] * 2)

    # Execute
    idx = balanced_random_coreset(y, 0.5, np.random.default_rng(0))

    # Assert: sorted unique int64 indices with per-class counts 3, 1, 1
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert np.bincount(y[idx], minlength=3).tolist() == [3, 1, 1]


def test_plain_cnn_state_dict_keys() -> None:
    expected = [
        "conv1.weight",
        *[f"bn1.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                               "num_batches_tracked")],
        "conv2.weight",
        *[f"bn2.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                               "num_batches_tracked")],
        "conv3.weight",
        *[f"bn3.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                               "num_batches_tracked")],
        "classifier.weight",
        "classifier.bias",
    ]
    assert list(PlainCNN(1, 10).state_dict().keys()) == expected


def test_quantize_plain_keeps_first_and_last_float() -> None:
    # Execute
    q = quantize_plain(_fp_model(), 2, 2)
    f = quantize_plain(_fp_model(), 32, 32)

    # Assert
    assert hasattr(q.conv2, "act_q") and hasattr(q.conv3, "weight_q")
    assert type(q.conv1) is torch.nn.Conv2d and type(q.classifier) is torch.nn.Linear
    assert list(f.state_dict().keys()) == list(_fp_model().state_dict().keys())


def test_qat_single_device_step_count() -> None:
    # Prepare: coreset 0.5 * 64 = 32 samples, batch 10 -> 4 steps/epoch, 3 epochs
    x, y = _tiny_data()

    # Execute
    out = qat_single_device(
        _fp_model(), x, y, x, y, wbits=2, abits=2, epochs=3, reselect_every=2,
        fraction=0.5, lr=1e-3, batch_size=10, seed=0)

    # Assert
    assert out["steps"] == 12 and out["coreset_size"] == 32
    assert 0.0 <= out["accuracy"] <= 1.0


def test_fedavg_plain_rounds_and_determinism() -> None:
    # Prepare: three devices of 20, 20, 24 samples
    x, y = _tiny_data()
    parts = [np.arange(0, 20), np.arange(20, 40), np.arange(40, 64)]
    kwargs = {"wbits": 2, "abits": 2, "rounds": 2, "per_round": 2, "local_epochs": 1,
              "fraction": 0.5, "lr": 1e-3, "batch_size": 8, "seed": 3}

    # Execute
    first = fedavg_plain(_fp_model(), parts, x, y, x, y, **kwargs)
    second = fedavg_plain(_fp_model(), parts, x, y, x, y, **kwargs)

    # Assert
    assert len(first) == 2 and all(0.0 <= a <= 1.0 for a in first)
    assert first == second
