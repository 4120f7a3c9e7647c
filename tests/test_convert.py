"""Model surgery: which layers get quantized, names, state split, quantizer init."""

from __future__ import annotations

import doctest

import pytest
import torch
from torch import nn

from fleet.model.architectures import build_model
from fleet.quant import convert
from fleet.quant.convert import (
    QConv2d,
    QLinear,
    default_keep_fp,
    init_quantizers,
    quant_info,
    quant_layers,
    quantize_model,
    set_initialized,
)
from fleet.quant.quantizers import IdentityQuantizer, LsqQuantizer
from fleet.quant.spec import split_state


def _cnn() -> nn.Module:
    torch.manual_seed(0)  # parameter init only; tests compare models, not values
    return build_model("cnn", in_shape=(1, 8, 8), num_classes=10)


def test_doctests() -> None:
    result = doctest.testmod(convert, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


@pytest.mark.parametrize(
    "arch,expected",
    [
        ("mlp", ["fc1", "classifier"]),
        ("cnn", ["conv1", "classifier"]),
        ("resnet20", ["conv1", "fc", "layers.3.downsample.0", "layers.6.downsample.0"]),
        (
            "resnet18",
            ["conv1", "fc", "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"],
        ),
        ("mobilenet_v2", ["features.0.0", "classifier.1", "features.18.0"]),
    ],
)
def test_default_keep_fp(arch: str, expected: list[str]) -> None:
    model = build_model(arch, in_shape=(3, 32, 32), num_classes=10)
    assert default_keep_fp(model) == expected


def test_quantize_model_swaps_all_but_kept_layers_and_keeps_names() -> None:
    # Prepare
    fp = build_model("resnet20", in_shape=(3, 32, 32), num_classes=10)
    fp_state = {k: v.clone() for k, v in fp.state_dict().items()}
    # Execute
    q = quantize_model(fp, weight_bits=4, act_bits=4)
    # Assert: the input is untouched
    assert not quant_layers(fp)
    assert all(torch.equal(v, fp.state_dict()[k]) for k, v in fp_state.items())
    # stem + 9 blocks x 2 convs + 2 downsample convs + fc = 22 layers;
    # stem, fc and the 2 downsample convs stay float -> 18 quantized
    assert len(quant_layers(q)) == 18
    assert {n for n, _ in q.named_modules()} >= {n for n, _ in fp.named_modules()}
    for name in default_keep_fp(fp):
        assert type(q.get_submodule(name)) in (nn.Conv2d, nn.Linear)
    assert set(fp.state_dict()) <= set(q.state_dict())
    assert q.block_names == fp.block_names  # type: ignore[attr-defined]
    layer = q.get_submodule("layers.0.conv1")
    assert isinstance(layer, QConv2d) and torch.equal(
        layer.weight, fp.get_submodule("layers.0.conv1").weight
    )


def test_keep_fp_override_and_unknown_name() -> None:
    fp = _cnn()
    q = quantize_model(fp, 4, 4, keep_fp=["conv3"])
    assert sorted(quant_layers(q)) == ["classifier", "conv1", "conv2"]
    with pytest.raises(ValueError, match="'conv9'"):
        quantize_model(fp, 4, 4, keep_fp=["conv1", "conv9"])


def test_weights_only_and_float_bits() -> None:
    fp = _cnn()
    wo = quantize_model(fp, 2, 4, weights_only=True)
    layer = wo.get_submodule("conv2")
    assert isinstance(layer.act_quant, IdentityQuantizer)
    assert isinstance(layer.weight_quant, LsqQuantizer) and layer.weight_quant.bits == 2
    a_only = quantize_model(fp, 32, 3)
    layer = a_only.get_submodule("conv2")
    assert isinstance(layer.weight_quant, IdentityQuantizer)
    assert isinstance(layer.act_quant, LsqQuantizer) and layer.act_quant.bits == 3


@pytest.mark.parametrize("bits", [0, 1, 9, 33])
def test_bad_bits_rejected(bits: int) -> None:
    with pytest.raises(ValueError, match="weight_bits"):
        quantize_model(_cnn(), bits, 4)
    with pytest.raises(ValueError, match="act_bits"):
        quantize_model(_cnn(), 4, bits)


def test_float_layers_compute_like_float() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    lin = nn.Linear(5, 2)
    qconv = QConv2d.from_float(conv, 32, 32)
    qlin = QLinear.from_float(lin, 32, 32)
    x, z = torch.randn(2, 3, 6, 6), torch.randn(2, 5)
    assert torch.equal(qconv(x), conv(x)) and torch.equal(qlin(z), lin(z))


def test_per_channel_step_shapes() -> None:
    q = quantize_model(build_model("mlp", (1, 8, 8), 10), 4, 4, keep_fp=[], per_channel=True)
    assert tuple(q.get_submodule("fc1").weight_quant.step.shape) == (128, 1)
    q = quantize_model(_cnn(), 4, 4, per_channel=True)
    assert tuple(q.get_submodule("conv2").weight_quant.step.shape) == (32, 1, 1, 1)
    assert tuple(q.get_submodule("conv2").act_quant.step.shape) == (1,)


def test_quant_info() -> None:
    q = quantize_model(_cnn(), 3, 4, act_signed=False)
    info = quant_info(q)
    assert sorted(info.weights) == ["conv2.weight", "conv3.weight"]
    spec = info["conv2.weight"]
    assert (spec.bits, spec.step_key, spec.signed) == (3, "conv2.weight_quant.step", True)
    assert spec.step_key in q.state_dict()
    assert "conv1.weight" not in info and len(info) == 2


def test_split_state_keeps_flags_and_counters_local() -> None:
    q = quantize_model(_cnn(), 4, 4)
    agg, local = split_state(q.state_dict())
    assert sorted(local) == sorted(
        [f"{layer}.{p}_quant.initialized" for layer in ("conv2", "conv3") for p in ("weight", "act")]
        + [f"bn{i}.num_batches_tracked" for i in (1, 2, 3)]
    )
    assert "conv2.weight_quant.step" in agg and "bn1.running_mean" in agg
    assert set(agg) | set(local) == set(q.state_dict()) and not set(agg) & set(local)


def test_init_quantizers_sets_steps_and_restores_mode_and_bn() -> None:
    # Prepare
    q = quantize_model(_cnn(), 4, 4).eval()
    bn_before = {k: v.clone() for k, v in q.state_dict().items() if k.startswith("bn")}
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    # Execute
    init_quantizers(q, x)
    # Assert
    assert not q.training and not any(m.training for m in q.modules())
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in bn_before.items())
    w = q.get_submodule("conv2").weight
    wq = q.get_submodule("conv2").weight_quant
    assert wq.initialized.item() == 1
    assert wq.step.item() == pytest.approx(2 * w.abs().mean().item() / 7**0.5, rel=1e-5)
    aq = q.get_submodule("conv3").act_quant
    assert aq.initialized.item() == 1 and aq.step.item() != 1.0


def test_set_initialized() -> None:
    q = quantize_model(_cnn(), 4, 4)
    set_initialized(q, True)
    flags = [m.initialized.item() for m in q.modules() if isinstance(m, LsqQuantizer)]
    assert flags == [1, 1, 1, 1]
