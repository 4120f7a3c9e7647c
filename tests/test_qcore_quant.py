"""QCore quantizer: integer codes, activation ranges, surgery, code stepping, latent STE."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fleet.model.architectures import build_model
from fleet.qcore.quant import (
    SUPPORTED_BITS,
    ActQuant,
    CodeConv2d,
    CodeLinear,
    qcore_layers,
    quantize_per_channel,
    to_qcore,
)
from fleet.quant.spec import check_bits, qrange


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_codes_are_integers_in_signed_range(bits: int) -> None:
    # Prepare
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(bits))
    # Execute
    codes, scale, zp = quantize_per_channel(w, bits)
    # Assert
    qmin, qmax = qrange(bits)
    assert codes.dtype == torch.int8 and codes.shape == w.shape
    assert int(codes.min()) >= qmin and int(codes.max()) <= qmax
    w_hat = (codes.float() - zp.view(-1, 1, 1, 1)) * scale.view(-1, 1, 1, 1)
    assert (w_hat - w).abs().max() <= scale.max() / 2 + 1e-6  # min-max: within half a step


def test_quantize_hand_computed() -> None:
    codes, scale, zp = quantize_per_channel(torch.tensor([[-1.0, 0.0, 2.0]]), 2)
    assert codes.tolist() == [[-2, -1, 1]] and scale.tolist() == [1.0] and zp.tolist() == [-1.0]


@pytest.mark.parametrize("bits", [1, 6, 7, 16, 32])
def test_unsupported_bits_raise(bits: int) -> None:
    with pytest.raises(ValueError, match="unsupported bits"):
        check_bits(bits, SUPPORTED_BITS)
    with pytest.raises(ValueError, match="unsupported bits"):
        to_qcore(nn.Linear(2, 2), bits)


def test_act_range_fixed_at_first_batch() -> None:
    # Prepare: unsigned input; 12 std exceeds max, b < 6 clips alpha to max = 3
    act = ActQuant(bits=4)
    first = torch.tensor([0.0, 1.0, 2.0, 3.0])
    # Execute
    act(first)
    act(first * 10)
    # Assert
    assert float(act.alpha) == pytest.approx(3.0) and not bool(act.signed)
    assert act(torch.tensor([100.0])).item() == pytest.approx(3.0)  # clipped to the range


def test_act_signed_range_divides_by_1_25() -> None:
    act = ActQuant(bits=8)  # b >= 6: no clipping at the max
    x = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    act(x)
    assert float(act.alpha) == pytest.approx(12 * float(x.std()) / 1.25)


def test_to_qcore_swaps_layers_first_float_last_8bit() -> None:
    # Prepare
    model = build_model("cnn", (1, 8, 8), 10)
    # Execute
    q = to_qcore(model, 3, torch.rand(16, 1, 8, 8))
    # Assert
    layers = list(qcore_layers(q).values())
    assert [type(m) for m in layers] == [CodeConv2d, CodeConv2d, CodeConv2d, CodeLinear]
    assert isinstance(layers[0].act, nn.Identity)
    assert layers[1].act.bits == 3 and layers[-1].act.bits == 8
    assert q(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert isinstance(model.conv1, nn.Conv2d)  # float model untouched


def test_step_codes_stays_in_range_and_changes_only_codes() -> None:
    # Prepare
    layer = CodeLinear(torch.randn(4, 5), torch.randn(4), bits=2, act_bits=4)
    layer(torch.rand(3, 5))  # fix the activation range
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    delta = torch.ones(4, 5, dtype=torch.int8)
    delta[0] = -1
    # Execute
    layer.step_codes(delta)
    layer.step_codes(delta)
    # Assert
    qmin, qmax = qrange(2)
    assert int(layer.codes.min()) >= qmin and int(layer.codes.max()) <= qmax
    assert (layer.codes[0] == torch.clamp(state["codes"][0].int() - 2, qmin, qmax)).all()
    assert (layer.codes[1:] == torch.clamp(state["codes"][1:].int() + 2, qmin, qmax)).all()
    for k, v in layer.state_dict().items():
        if k != "codes":
            assert torch.equal(v, state[k]), k


def test_step_codes_rejects_wrong_shape() -> None:
    layer = CodeLinear(torch.randn(4, 5), None, bits=4, act_bits=None)
    with pytest.raises(ValueError, match="delta shape"):
        layer.step_codes(torch.zeros(5, 4))


def test_latent_ste_moves_codes_on_fixed_grid() -> None:
    # Prepare
    layer = CodeLinear(torch.randn(2, 3), None, bits=4, act_bits=None)
    codes0, scale0 = layer.codes.clone(), layer.scale.clone()
    layer.start_latent()
    # Execute: push every latent code up by 1.6 steps
    layer(torch.ones(1, 3)).sum().backward()
    # STE: d out / d latent = scale * x inside the range (rounding passes gradient 1)
    torch.testing.assert_close(layer.latent.grad, scale0.view(2, 1).expand(2, 3))
    with torch.no_grad():
        layer.latent += 1.6
    layer.commit_latent()
    # Assert
    assert layer.latent is None and torch.equal(layer.scale, scale0)
    assert torch.equal(layer.codes.int(), torch.clamp(codes0.int() + 2, -8, 7))
