"""Activation signedness: ReLU-fed layers from the graph, unsigned codes, quantize_model and config."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fleet.config.scenario import parse_config
from fleet.config.schema import ConfigError
from fleet.model.architectures import build_model
from fleet.quant.convert import quant_layers, quantize_model
from fleet.quant.quantizers import LsqQuantizer
from fleet.quant.signs import relu_fed_layers, resolve_act_signed

X = torch.tensor([0.0, 0.2, 0.3, 0.6, 1.1, 1.4, 5.0])


def _fixed(bits: int, step: float, signed: bool) -> LsqQuantizer:
    """An activation quantizer with a hand-set step, marked initialised so forward keeps it."""
    q = LsqQuantizer(bits, signed=signed, is_weight=False)
    q.step.data.fill_(step)
    q.initialized.fill_(1)
    return q


# --- relu_fed_layers -------------------------------------------------------------------------


def test_cnn_relu_fed_layers() -> None:
    # conv1 takes the image; conv2 <- block1 (ReLU); conv3 <- pool2 <- block2; classifier <- flatten <- pool3 <- block3
    assert relu_fed_layers(build_model("cnn", (1, 8, 8), 10)) == {"conv2", "conv3", "classifier"}


def test_mlp_relu_fed_layers() -> None:
    # fc1 takes flatten(image); fc2 <- act1; classifier <- act2
    assert relu_fed_layers(build_model("mlp", (1, 8, 8), 10)) == {"fc2", "classifier"}


def test_mobilenet_v2_expansion_conv_is_not_relu_fed_but_depthwise_is() -> None:
    # Prepare
    model = build_model("mobilenet_v2", (3, 32, 32), 10)
    # Execute
    fed = relu_fed_layers(model)
    # Assert
    # features.2's 1x1 expansion takes features.1's linear bottleneck (a BatchNorm output, no ReLU6)
    assert "features.2.conv.0.0" not in fed
    # its depthwise conv and its 1x1 projection take ReLU6 outputs
    assert "features.2.conv.1.0" in fed
    assert "features.2.conv.2" in fed
    # the stem takes the image; the classifier takes flatten(avg_pool(ReLU6))
    assert "features.0.0" not in fed
    assert "classifier.1" in fed
    # features.4's expansion takes features.3's output, a residual sum: not ReLU-fed
    assert "features.4.conv.0.0" not in fed


class _Mixed(nn.Module):
    """One Linear fed by Tanh, one by F.relu through a view, one by F.relu6, one called from two sources."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.tanh = nn.Tanh()
        self.after_tanh = nn.Linear(4, 4)
        self.after_relu = nn.Linear(4, 4)
        self.after_relu6 = nn.Linear(4, 4)
        self.shared = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        t = self.after_tanh(self.tanh(h))
        r = self.after_relu(F.relu(h).view(-1, 4))
        r6 = self.after_relu6(F.relu6(h))
        s = self.shared(F.relu(h)) + self.shared(h)  # one of its two calls is not ReLU-fed
        return t + r + r6 + s


def test_tanh_fed_linear_is_signed_relu_fed_ones_are_not() -> None:
    assert relu_fed_layers(_Mixed()) == {"after_relu", "after_relu6"}


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.fc(self.relu(x))
        return self.fc(self.relu(-x))


def test_untraceable_model_gives_the_empty_set() -> None:
    assert relu_fed_layers(_Untraceable()) == set()


def test_resolve_act_signed() -> None:
    fed = {"conv2"}
    assert resolve_act_signed("auto", "conv2", fed) is False
    assert resolve_act_signed("auto", "conv1", fed) is True
    assert resolve_act_signed(True, "conv2", fed) is True
    assert resolve_act_signed(False, "conv1", fed) is False


# --- codes at 2 bits ----------------------------------------------------------------------------


def test_unsigned_two_bit_codes_by_hand() -> None:
    # Prepare: x / 0.5 = [0, 0.4, 0.6, 1.2, 2.2, 2.8, 10] -> round -> [0, 0, 1, 1, 2, 3, 10] -> clamp [0, 3]
    q = _fixed(2, 0.5, signed=False)
    want = [0, 0, 1, 1, 2, 3, 3]
    # Execute
    codes = q.codes(X)
    out = q(X)
    # Assert
    assert (q.qmin, q.qmax) == (0, 3)
    assert codes.tolist() == want
    assert torch.equal(out, torch.tensor(want, dtype=torch.float32) * 0.5)


def test_signed_two_bit_codes_use_only_zero_and_one_on_non_negative_input() -> None:
    # Prepare: same ratios, clamped to [-2, 1]
    q = _fixed(2, 0.5, signed=True)
    # Execute
    codes = q.codes(X)
    # Assert
    assert (q.qmin, q.qmax) == (-2, 1)
    assert codes.tolist() == [0, 0, 1, 1, 1, 1, 1]
    assert set(codes.tolist()) == {0, 1}
    assert torch.equal(q(X), codes.float() * 0.5)


def test_unsigned_codes_round_half_to_even() -> None:
    # x / 0.5 = [0.5, 1.5, 2.5] -> [0, 2, 2] (ties to even)
    q = _fixed(2, 0.5, signed=False)
    assert q.codes(torch.tensor([0.25, 0.75, 1.25])).tolist() == [0, 2, 2]


# --- quantize_model --------------------------------------------------------------------------


def test_quantize_model_auto_makes_relu_fed_layers_unsigned() -> None:
    # Prepare
    fp = build_model("cnn", (1, 8, 8), 10)
    # Execute
    q = quantize_model(fp, 2, 2)  # default act_signed = "auto"
    # Assert: conv1 and classifier stay float (default keep_fp); conv2, conv3 are ReLU-fed
    layers = quant_layers(q)
    assert sorted(layers) == ["conv2", "conv3"]
    for name in ("conv2", "conv3"):
        aq = layers[name].act_quant
        assert aq.signed is False and (aq.qmin, aq.qmax) == (0, 3)
        assert layers[name].weight_quant.signed is True  # weights stay symmetric signed


def test_quantize_model_act_signed_true_and_false_override_auto() -> None:
    fp = build_model("cnn", (1, 8, 8), 10)
    signed = quantize_model(fp, 2, 2, act_signed=True)
    unsigned = quantize_model(fp, 2, 2, act_signed=False)
    assert signed.conv2.act_quant.signed is True
    assert (signed.conv2.act_quant.qmin, signed.conv2.act_quant.qmax) == (-2, 1)
    assert unsigned.conv2.act_quant.signed is False


def test_quantize_model_auto_keeps_a_tanh_fed_layer_signed() -> None:
    # keep_fp=[] quantizes every layer of _Mixed
    q = quantize_model(_Mixed(), 4, 4, keep_fp=[])
    assert q.after_tanh.act_quant.signed is True
    assert q.shared.act_quant.signed is True
    assert q.after_relu.act_quant.signed is False
    assert q.after_relu6.act_quant.signed is False
    assert q.a.act_quant.signed is True


# --- config ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", True, False])
def test_config_accepts_act_signed_choices(value: object) -> None:
    assert parse_config({"quant.act-signed": value}).quant.act_signed == value


def test_config_default_act_signed_is_auto() -> None:
    assert parse_config({}).quant.act_signed == "auto"


@pytest.mark.parametrize("value", ["maybe", 1])
def test_config_rejects_bad_act_signed(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"quant.act-signed": value})
    assert str(info.value).startswith("quant.act-signed")
    assert info.value.key == "quant.act-signed"
