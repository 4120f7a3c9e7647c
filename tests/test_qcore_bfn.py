"""Bit-flipping networks: shapes per layer kind, code-only updates, FLOPs, training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fleet.hardware.flops import model_flops
from fleet.model.architectures import build_model
from fleet.qcore.bfn import BFNSet, build_bfn, capture_inputs, fit_bfns
from fleet.qcore.calibrate import CalibrationContext, record_flip_pairs
from fleet.qcore.quant import CodeConv2d, CodeLinear, qcore_layers, to_qcore
from fleet.quant.spec import qrange


def test_linear_bfn_shapes() -> None:
    # Prepare
    layer = CodeLinear(torch.randn(7, 5), None, bits=4, act_bits=4)
    bfn = build_bfn(layer, hidden=8)
    a = torch.rand(20, 5)  # (core, in_features)
    # Execute
    feats = bfn.features(a)
    step = bfn.delta(a, layer.codes)
    # Assert
    assert feats.shape == (5, 4)
    assert step.shape == layer.codes.shape == (7, 5)
    assert set(step.unique().tolist()) <= {-1, 0, 1}


def test_conv2d_bfn_shapes() -> None:
    layer = CodeConv2d(nn.Conv2d(3, 6, 3, padding=1), bits=2, act_bits=2)
    bfn = build_bfn(layer, hidden=8)
    a = torch.rand(20, 3, 9, 9)  # (core, C, H, W)
    assert bfn.features(a).shape == (3, 4)
    step = bfn.delta(a, layer.codes)
    assert step.shape == (6, 3, 3, 3) and set(step.unique().tolist()) <= {-1, 0, 1}
    # a batch of recorded pairs also works (for fitting)
    assert bfn(torch.rand(5, 3, 4), layer.codes.expand(5, -1, -1, -1, -1)).shape == (5, 6, 3, 3, 3)


def test_bfn_output_does_not_depend_on_core_order() -> None:
    layer = CodeLinear(torch.randn(3, 4), None, bits=4, act_bits=None)
    bfn = build_bfn(layer)
    a = torch.randn(20, 4)
    torch.testing.assert_close(bfn(bfn.features(a), layer.codes),
                               bfn(bfn.features(a.flip(0)), layer.codes))


def test_unsupported_layer_kind_raises() -> None:
    with pytest.raises(ValueError, match="valid kinds: linear, conv2d"):
        build_bfn(nn.Conv1d(2, 2, 3))


def test_apply_changes_only_codes_within_range() -> None:
    # Prepare: force a +1 step everywhere through the output bias
    torch.manual_seed(0)
    model = to_qcore(build_model("cnn", (1, 8, 8), 10), 2, torch.rand(8, 1, 8, 8))
    bfns = BFNSet(model, hidden=4)
    x_core = torch.rand(20, 1, 8, 8)
    bfns.set_reference(model, x_core)
    for name in bfns.names:
        nn.init.zeros_(bfns[name].net[2].weight)
        nn.init.constant_(bfns[name].net[2].bias, 0.9)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: v.clone() for k, v in model.named_parameters()}
    # Execute
    flops = bfns.apply(model, x_core)
    # Assert
    qmin, qmax = qrange(2)
    for name, layer in qcore_layers(model).items():
        before = state[f"{name}.codes"].int()
        assert torch.equal(layer.codes.int(), torch.clamp(before + 1, qmin, qmax))
    for k, v in model.state_dict().items():
        if not k.endswith(".codes"):
            assert torch.equal(v, state[k]), k
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k
    assert flops > 0


def test_capture_inputs_and_flops_count() -> None:
    model = to_qcore(build_model("mlp", (1, 8, 8), 10), 4, torch.rand(8, 1, 8, 8))
    inputs, logits = capture_inputs(model, torch.rand(3, 1, 8, 8))
    assert {k: tuple(v.shape) for k, v in inputs.items()} == {
        "fc1": (3, 64), "fc2": (3, 128), "classifier": (3, 64)}
    assert logits.shape == (3, 10)
    # 2 * MACs = 2 * (64*128 + 128*64 + 64*10)
    assert model_flops(model, (1, 8, 8), matmul_only=True) == 2 * (64 * 128 + 128 * 64 + 64 * 10)


def test_recorded_pairs_fit_reduces_loss() -> None:
    # Prepare
    torch.manual_seed(0)
    model = to_qcore(build_model("mlp", (1, 8, 8), 10), 4, torch.rand(16, 1, 8, 8))
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
    bfns = BFNSet(model, hidden=8)
    bfns.set_reference(model, x)
    ctx = CalibrationContext(model_flops(model, (1, 8, 8), matmul_only=True), epochs=6, code_lr=0.3)
    # Execute
    pairs = record_flip_pairs(model, x, y, ctx, bfns, every=2)
    feats, codes, target = pairs["fc1"][0]
    before = torch.mean((bfns["fc1"](feats, codes) - target) ** 2).item()
    losses = fit_bfns(bfns, pairs, torch.Generator().manual_seed(0), steps=60)
    # Assert
    assert len(pairs["fc1"]) == 3 and target.shape == (128, 64)
    assert set(target.unique().tolist()) <= {-1.0, 0.0, 1.0} and target.abs().sum() > 0
    assert losses["fc1"] < before
