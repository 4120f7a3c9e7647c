"""The step of post-training round-to-nearest (fleet/quant/clipping.py, ``train.ptq-step``)."""

from __future__ import annotations

import doctest

import pytest
import torch

from fleet.quant import clipping
from fleet.quant.clipping import MAX_SAMPLES, mse_step, rounding_mse, rtn_step
from fleet.quant.quantizers import LsqQuantizer


def test_doctests() -> None:
    result = doctest.testmod(clipping)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(("bits", "qmin", "qmax"), [(2, -2, 1), (3, -4, 3), (4, -8, 7)])
def test_mse_step_is_the_least_error_candidate_and_beats_the_lsq_initial_step(bits: int, qmin: int,
                                                                             qmax: int) -> None:
    w = torch.randn(4000, generator=torch.Generator().manual_seed(bits))
    s = mse_step(w, qmin, qmax)
    candidates = [k / 100 * float(w.abs().max()) / qmax for k in range(1, 101)]
    least = min(float(rounding_mse(w, torch.tensor(c), qmin, qmax)) for c in candidates)
    assert float(rounding_mse(w, s, qmin, qmax)) == pytest.approx(least, rel=1e-6)
    lsq = LsqQuantizer(bits).initial_step(w)
    assert float(rounding_mse(w, s, qmin, qmax)) < float(rounding_mse(w, lsq, qmin, qmax))


def test_per_channel_search_is_each_channel_searched_alone() -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, 5, 5, generator=g) * torch.tensor([0.1, 1.0, 10.0]).reshape(3, 1, 1, 1)
    s = mse_step(w, -2, 1, per_channel=True)
    assert s.shape == (3,)
    for c in range(3):
        assert float(s[c]) == pytest.approx(float(mse_step(w[c], -2, 1)[0]), rel=1e-6)


def test_a_large_tensor_is_searched_on_an_even_stride() -> None:
    x = torch.randn(3 * MAX_SAMPLES + 7, generator=torch.Generator().manual_seed(1))
    stride = -(-len(x) // MAX_SAMPLES)
    assert torch.equal(mse_step(x, -8, 7), mse_step(x[::stride], -8, 7))


def test_an_all_zero_tensor_gets_the_floor_step() -> None:
    assert float(mse_step(torch.zeros(10), -2, 1)[0]) == pytest.approx(1e-8)


def test_rtn_step_shapes_follow_the_quantizer_and_rules_are_checked() -> None:
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    per_channel = LsqQuantizer(2, per_channel=True, num_channels=4, ndim=4)
    assert rtn_step(per_channel, w, "mse").shape == per_channel.step.shape == (4, 1, 1, 1)
    assert torch.equal(rtn_step(per_channel, w, "lsq-init"), per_channel.initial_step(w))
    act = LsqQuantizer(2, signed=False, is_weight=False)  # unsigned: 0..3
    x = torch.rand(64, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(rtn_step(act, x, "mse"), mse_step(x, 0, 3).reshape(1))
    with pytest.raises(ValueError, match="unknown PTQ step rule 'max'"):
        rtn_step(act, x, "max")
