"""LSQ quantizer: grid, range, idempotence, STE and step-size gradients, shapes."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from fleet.quant import quantizers
from fleet.quant.quantizers import (
    IdentityQuantizer,
    LsqQuantizer,
    grad_scale,
    lsq_fake_quant,
    round_ste,
)
from fleet.quant.spec import qrange


def _fixed(bits: int, step: float | list[float], **kw: object) -> LsqQuantizer:
    """A quantizer with a hand-set step, marked initialised so forward keeps it."""
    q = LsqQuantizer(bits, **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        q.step.copy_(torch.tensor(step).reshape(q.step.shape))
    q.initialized.fill_(1)
    return q


def test_doctests() -> None:
    result = doctest.testmod(quantizers, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize("bits", [0, 1, 9, 33, -4])
def test_bad_bits_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="bits"):
        LsqQuantizer(bits)


def test_ranges() -> None:
    q_signed, q_unsigned = LsqQuantizer(3), LsqQuantizer(3, signed=False)
    assert (q_signed.qmin, q_signed.qmax) == (-4, 3)
    assert (q_unsigned.qmin, q_unsigned.qmax) == (0, 7)
    assert qrange(8, True) == (-128, 127) and qrange(2, False) == (0, 3)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_output_on_grid_and_in_range(bits: int, signed: bool) -> None:
    # Prepare
    g = torch.Generator().manual_seed(bits)
    x = 3 * torch.randn(4, 8, 5, 5, generator=g)
    x[0, 0, 0, :2] = torch.tensor([1e3, -1e3])  # outliers saturate both ends
    q = LsqQuantizer(bits, signed=signed, is_weight=False)
    # Execute
    y = q(x).detach()  # first training forward initialises the step
    s = q.step.detach()
    codes = q.codes(x)
    # Assert
    assert codes.dtype == torch.int32
    assert torch.equal(codes.float() * s, y)  # exactly code * step
    assert torch.allclose(y / s, codes.float(), atol=1e-4)
    assert codes.min() == q.qmin and codes.max() == q.qmax


def test_idempotent() -> None:
    q = _fixed(3, 0.37)
    x = 2 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
    once = q(x)
    assert torch.equal(q(once), once)


def test_init_step_is_two_mean_abs_over_sqrt_qp() -> None:
    # bits=4 signed: Qp = 7. mean|x| = (1 + 3 + 2 + 6) / 4 = 3 -> step = 6 / sqrt(7).
    q = LsqQuantizer(4)
    q(torch.tensor([1.0, -3.0, 2.0, -6.0]))
    assert q.step.item() == pytest.approx(6 / math.sqrt(7))
    assert q.initialized.item() == 1
    q(torch.tensor([100.0]))  # already initialised: no change
    assert q.step.item() == pytest.approx(6 / math.sqrt(7))


def test_eval_forward_does_not_initialise() -> None:
    q = LsqQuantizer(4).eval()
    q(torch.tensor([5.0, -5.0]))
    assert q.initialized.item() == 0 and q.step.item() == 1.0


def test_all_zero_first_batch_gives_positive_step() -> None:
    q = LsqQuantizer(4)
    y = q(torch.zeros(3))
    assert q.step.item() > 0 and torch.equal(y, torch.zeros(3))


def test_ste_gradient_one_inside_zero_outside() -> None:
    # bits=2 signed: range [-2, 1]; step 0.5 -> v = x / 0.5 = [-3, -2, 0.4, 1, 1.2, 2].
    q = _fixed(2, 0.5)
    x = torch.tensor([-1.5, -1.0, 0.2, 0.5, 0.6, 1.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_lsq_step_gradient_worked_example() -> None:
    # bits=2 signed: qmin=-2, qmax=Qp=1. Weight, per tensor, numel=4:
    #   g = 1 / sqrt(numel * Qp) = 1 / sqrt(4) = 0.5.
    # step s = 0.5, x = [0.3, -0.8, 2.0, -3.0] -> v = x/s = [0.6, -1.6, 4.0, -6.0]
    #   codes q = [1, -2, 1, -2] -> out = [0.5, -1.0, 0.5, -1.0]
    # d out/d s per element: inside: round(v) - v -> 1 - 0.6 = 0.4, -2 + 1.6 = -0.4;
    #   outside: the clamped code -> qmax = 1 (v = 4), qmin = -2 (v = -6).
    # upstream grad dy = [1, 2, 3, 4]:
    #   sum = 0.4*1 + (-0.4)*2 + 1*3 + (-2)*4 = 0.4 - 0.8 + 3 - 8 = -5.4
    #   d L/d s = g * sum = 0.5 * -5.4 = -2.7
    # d L/d x = dy * inside = [1, 2, 0, 0]
    q = _fixed(2, 0.5)
    x = torch.tensor([0.3, -0.8, 2.0, -3.0], requires_grad=True)
    out = q(x)
    out.backward(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert out.tolist() == [0.5, -1.0, 0.5, -1.0]
    assert q.step.grad is not None and x.grad is not None
    assert q.step.grad.item() == pytest.approx(-2.7, abs=1e-6)
    assert x.grad.tolist() == [1.0, 2.0, 0.0, 0.0]


def test_activation_grad_scale_uses_features_per_sample() -> None:
    # Activation (2, 3): 3 features per sample, bits=4 -> Qp=7, g = 1/sqrt(3*7).
    q = _fixed(4, 1.0, is_weight=False)
    x = torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    q(x).sum().backward()
    # Only x=0.2 has a non-zero term: round(0.2) - 0.2 = -0.2 (zeros give 0 - 0).
    assert q.step.grad is not None
    assert q.step.grad.item() == pytest.approx(-0.2 / math.sqrt(21), rel=1e-5)


def _reference(x: torch.Tensor, s: torch.Tensor, g: float, qmin: int, qmax: int) -> torch.Tensor:
    """LSQ as plain autograd ops (lsq-net / ACS form)."""
    s = grad_scale(s, g)
    return round_ste((x / s).clamp(qmin, qmax)) * s


@pytest.mark.parametrize("per_channel", [False, True])
def test_fused_function_matches_autograd_reference(per_channel: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(6, 3, 3, 3, generator=gen)
    shape = (6, 1, 1, 1) if per_channel else (1,)
    s0 = 0.2 + torch.rand(shape, generator=gen)
    dy = torch.randn(x.shape, generator=gen)
    xa, sa = x.clone().requires_grad_(), s0.clone().requires_grad_()
    xb, sb = x.clone().requires_grad_(), s0.clone().requires_grad_()
    ya, yb = lsq_fake_quant(xa, sa, 0.1, -4, 3), _reference(xb, sb, 0.1, -4, 3)
    ya.backward(dy)
    yb.backward(dy)
    assert torch.equal(ya, yb)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)  # type: ignore[arg-type]
    assert torch.allclose(sa.grad, sb.grad, atol=1e-5)  # type: ignore[arg-type]


@pytest.mark.parametrize("ndim,shape", [(4, (8, 1, 1, 1)), (2, (8, 1))])
def test_per_channel_shapes_and_init(ndim: int, shape: tuple[int, ...]) -> None:
    q = LsqQuantizer(2, per_channel=True, num_channels=8, ndim=ndim)
    assert tuple(q.step.shape) == shape  # final shape from __init__
    w = torch.ones((8, 3, 2, 2) if ndim == 4 else (8, 12))
    w = w * torch.arange(1, 9, dtype=torch.float32).reshape(shape)  # channel c has |w| = c+1
    out = q(w)
    # Qp = 1: step_c = 2 * mean|w_c| = 2 (c + 1); codes round(0.5) = 0 (ties to even).
    assert torch.allclose(q.step.detach().reshape(-1), 2 * torch.arange(1, 9).float())
    out.sum().backward()
    assert q.step.grad is not None and tuple(q.step.grad.shape) == shape


def test_per_channel_grad_scale_uses_per_channel_numel() -> None:
    # 2 channels x 3 weights, bits=2 (Qp=1): g = 1/sqrt(3). Channel 0: v = [0.2, 0, 0].
    q = _fixed(2, [1.0, 1.0], per_channel=True, num_channels=2, ndim=2)
    w = torch.tensor([[0.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    q(w).sum().backward()
    assert q.step.grad is not None
    assert q.step.grad.reshape(-1).tolist() == pytest.approx([-0.2 / math.sqrt(3), 0.0])


def test_per_channel_activation_rejected() -> None:
    with pytest.raises(ValueError, match="per_channel"):
        LsqQuantizer(4, per_channel=True, num_channels=3, is_weight=False)


def test_identity_quantizer() -> None:
    x = torch.randn(5, generator=torch.Generator().manual_seed(0))
    assert IdentityQuantizer.bits == 32 and IdentityQuantizer()(x) is x
