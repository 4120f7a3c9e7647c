"""BatchNorm re-estimation: running statistics from the model's own outputs, modes and momentum restored."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fleet.model import bnstats
from fleet.model.architectures import SmallCNN
from fleet.model.bnstats import has_batchnorm, reestimate_bn
from fleet.quant.convert import quantize_model


def _model(momentum: float = 0.1) -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=momentum))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0], [0.5, -1.0, 3.0]]))
        m[0].bias.copy_(torch.tensor([0.0, 1.0, -2.0, 0.5]))
        m[1].running_mean.fill_(7.0)  # stale statistics that must be replaced, not blended
        m[1].running_var.fill_(9.0)
    return m


def _x(n: int = 20) -> torch.Tensor:
    return torch.randn(n, 3, generator=torch.Generator().manual_seed(1)) * 2 + 1


@pytest.mark.parametrize("batch_size", [5, 7, 256])
def test_running_stats_are_the_mean_and_unbiased_variance_over_x_whatever_the_batches(batch_size: int) -> None:
    # Prepare: 20 samples in batches of 5 (equal), 7 (7, 7, 6: a short last one) or one batch
    m, x = _model(), _x()
    with torch.no_grad():
        h = m[0](x)
    # Execute
    reestimate_bn(m, x, batch_size=batch_size)
    # Assert: pooled over all of x, not an average of per-batch statistics
    torch.testing.assert_close(m[1].running_mean, h.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(m[1].running_var, h.var(0), atol=1e-5, rtol=1e-5)


def test_a_later_batchnorm_is_measured_behind_the_earlier_ones_in_eval_mode() -> None:
    # Prepare: Linear -> BN -> Linear -> BN; the second BN's input must be what it sees at inference,
    # i.e. the first BN normalising with its NEW running statistics (not with each batch's own)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2), nn.BatchNorm1d(2))
    x = _x(30)
    # Execute
    reestimate_bn(m, x, batch_size=4)
    # Assert
    m.eval()
    with torch.no_grad():
        inner = m[2](m[1](m[0](x)))  # eval-mode input of the second BN
    torch.testing.assert_close(m[3].running_mean, inner.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(m[3].running_var, inner.var(0), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_mode_momentum_and_parameters_are_restored(training: bool) -> None:
    # Prepare
    m = _model(momentum=0.3).train(training)
    params = {k: v.clone() for k, v in m.named_parameters()}
    # Execute
    out = reestimate_bn(m, _x(), batch_size=7)
    # Assert
    assert out is m
    assert m.training is training and m[0].training is training and m[1].training is training
    assert m[1].momentum == 0.3 and m[1].track_running_stats
    for k, v in m.named_parameters():
        assert torch.equal(v, params[k])
    assert not torch.equal(m[1].running_mean, torch.full((4,), 7.0))


def test_empty_input_or_no_batchnorm_changes_nothing() -> None:
    m = _model()
    reestimate_bn(m, torch.zeros(0, 3))
    assert torch.equal(m[1].running_mean, torch.full((4,), 7.0)) and int(m[1].num_batches_tracked) == 0
    lin = nn.Linear(3, 4)
    assert not has_batchnorm(lin) and has_batchnorm(m)
    assert reestimate_bn(lin, _x()) is lin


class _SharedBN(nn.Module):
    """One BatchNorm called twice per forward: measured over both calls, with whole forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(self.bn(x)))


def test_passes_that_stop_at_the_measured_batchnorm_give_the_whole_forwards_statistics(monkeypatch) -> None:
    torch.manual_seed(0)
    model = quantize_model(SmallCNN((1, 12, 12), 4), 2, 2)
    x = torch.randn(300, 1, 12, 12)
    model(x[:64])
    early, whole = copy.deepcopy(model), copy.deepcopy(model)
    reestimate_bn(early, x, batch_size=128)
    monkeypatch.setattr(bnstats, "_called_once_each", lambda *_: False)
    reestimate_bn(whole, x, batch_size=128)
    a, b = early.state_dict(), whole.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], model.state_dict()[k]) for k in a if k.endswith("running_var"))


def test_a_batchnorm_called_twice_is_measured_over_both_calls() -> None:
    torch.manual_seed(0)
    model = _SharedBN().eval()
    x = torch.randn(50, 3) * 2 + 1
    with torch.no_grad():
        inner = model.lin(model.bn(x))  # the second call's input during the measuring pass (old statistics)
    reestimate_bn(model, x)
    both = torch.cat([x, inner])
    assert torch.allclose(model.bn.running_mean, both.mean(0), atol=1e-5)
