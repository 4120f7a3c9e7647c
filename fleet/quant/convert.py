"""Quantization-aware layers and model surgery from a float model.

A float model becomes a fake-quantized one by swapping each ``nn.Conv2d`` /
``nn.Linear`` (``MAPPING``) for its quantized twin, by module name, on a deep copy.
Module names are unchanged, so state keys, ``block_names`` and the float model's
parameters keep lining up with the quantized copy.

Examples
--------
>>> from fleet.model.architectures import build_model
>>> fp = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
>>> q = quantize_model(fp, weight_bits=4, act_bits=4)
>>> sorted(quant_layers(q))  # conv1 (first layer) and classifier stay float
['conv2', 'conv3']
>>> init_quantizers(q, torch.randn(8, 1, 8, 8))
>>> q(torch.randn(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fleet.quant.quantizers import IdentityQuantizer, LsqQuantizer
from fleet.quant.signs import relu_fed_layers, resolve_act_signed
from fleet.quant.spec import FLOAT_BITS, QuantInfo, QuantSpec, check_bits

__all__ = [
    "QConv2d",
    "QLinear",
    "MAPPING",
    "default_keep_fp",
    "quantize_model",
    "quant_layers",
    "quant_info",
    "init_quantizers",
    "set_initialized",
]



def _check_layer_bits(bits: int, what: str) -> int:
    if bits == FLOAT_BITS:
        return bits
    try:
        return check_bits(bits)
    except ValueError:
        raise ValueError(f"{what} must be 2..8 or {FLOAT_BITS} (float), got {bits!r}") from None


def _weight_quantizer(weight: torch.Tensor, bits: int, per_channel: bool) -> nn.Module:
    if _check_layer_bits(bits, "weight_bits") == FLOAT_BITS:
        return IdentityQuantizer()
    # Weights are symmetric signed, as in ACS's LSQ layers.
    return LsqQuantizer(bits, True, per_channel, weight.shape[0], weight.ndim, is_weight=True)


def _act_quantizer(bits: int, signed: bool) -> nn.Module:
    if _check_layer_bits(bits, "act_bits") == FLOAT_BITS:
        return IdentityQuantizer()
    return LsqQuantizer(bits, signed, per_channel=False, is_weight=False)


class _FakeQuantized(nn.Module):
    """Mixin placed before ``nn.Conv2d``/``nn.Linear``: the layer's constructor, plus a weight quantizer and an
    input (activation) quantizer."""

    weight: torch.Tensor  # declared as nn.Conv2d/nn.Linear declare it (an nn.Parameter at runtime)

    def __init__(
        self,
        *args: Any,
        weight_bits: int = 4,
        act_bits: int = 4,
        per_channel: bool = False,
        act_signed: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.weight_quant = _weight_quantizer(self.weight, weight_bits, per_channel)
        self.act_quant = _act_quantizer(act_bits, act_signed)


class QConv2d(_FakeQuantized, nn.Conv2d):
    """``nn.Conv2d`` whose input and weight are fake-quantized (LSQ).

    Parameters
    ----------
    *args, **kwargs
        As ``nn.Conv2d``.
    weight_bits, act_bits : int
        Bit-widths, 2..8, or 32 for float (default: 4, 4).
    per_channel : bool
        One weight step per output channel (default: False).
    act_signed : bool
        Signed activation range, as ACS's ``ActLSQ`` (default: True).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve the quantized input with the quantized weight."""
        # _conv_forward is F.conv2d plus the non-zero padding modes.
        return self._conv_forward(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    @classmethod
    def from_float(
        cls,
        layer: nn.Conv2d,
        weight_bits: int,
        act_bits: int,
        per_channel: bool = False,
        act_signed: bool = True,
    ) -> QConv2d:
        """Build a quantized copy of ``layer`` (weights and bias copied)."""
        q = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            groups=layer.groups,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            weight_bits=weight_bits,
            act_bits=act_bits,
            per_channel=per_channel,
            act_signed=act_signed,
        )
        _copy_params(layer, q)
        return q


class QLinear(_FakeQuantized, nn.Linear):
    """``nn.Linear`` whose input and weight are fake-quantized (LSQ); options as :class:`QConv2d`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the quantized weight to the quantized input."""
        return F.linear(self.act_quant(x), self.weight_quant(self.weight), self.bias)

    @classmethod
    def from_float(
        cls,
        layer: nn.Linear,
        weight_bits: int,
        act_bits: int,
        per_channel: bool = False,
        act_signed: bool = True,
    ) -> QLinear:
        """Build a quantized copy of ``layer`` (weights and bias copied)."""
        q = cls(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            weight_bits=weight_bits,
            act_bits=act_bits,
            per_channel=per_channel,
            act_signed=act_signed,
        )
        _copy_params(layer, q)
        return q


def _copy_params(src: nn.Conv2d | nn.Linear, dst: QConv2d | QLinear) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        if src.bias is not None:
            assert dst.bias is not None  # dst was built with bias=src.bias is not None
            dst.bias.copy_(src.bias)
    dst.train(src.training)


MAPPING: dict[type[nn.Module], type[QConv2d] | type[QLinear]] = {
    nn.Conv2d: QConv2d,
    nn.Linear: QLinear,
}


def default_keep_fp(model: nn.Module) -> list[str]:
    """Names of the layers ACS keeps in float.

    The first Conv2d/Linear in module order (the stem), the last Linear (the
    classifier), every Conv2d whose name contains ``"downsample"``, and for
    torchvision's MobileNetV2 the last 1x1 conv (``features.18.0``, 320 -> 1280).
    """
    layers = [(n, m) for n, m in model.named_modules() if type(m) in MAPPING]
    keep: list[str] = []
    if layers:
        keep.append(layers[0][0])
    linears = [n for n, m in layers if type(m) is nn.Linear]
    if linears:
        keep.append(linears[-1])
    keep += [n for n, m in layers if "downsample" in n and type(m) is nn.Conv2d]
    tv_models = sys.modules.get("torchvision.models")  # not imported: the model cannot be torchvision's
    if tv_models is not None and isinstance(model, tv_models.MobileNetV2):
        keep.append(f"features.{len(model.features) - 1}.0")
    return list(dict.fromkeys(keep))  # de-duplicate, keep order


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, module)


def quantize_model(
    model: nn.Module,
    weight_bits: int,
    act_bits: int,
    keep_fp: Sequence[str] | None = None,
    weights_only: bool = False,
    per_channel: bool = False,
    act_signed: bool | str = "auto",
) -> nn.Module:
    """Return a fake-quantized deep copy of ``model`` (the input is untouched).

    Parameters
    ----------
    model : nn.Module
        Float model.
    weight_bits, act_bits : int
        2..8, or 32 for float (identity quantizer).
    keep_fp : sequence of str or None
        Exact module names left float; None means :func:`default_keep_fp`
        (default: None). A name that matches no module raises ValueError.
    weights_only : bool
        Float activations everywhere (default: False).
    per_channel : bool
        Per-output-channel weight steps (default: False; ACS is per-tensor).
    act_signed : bool or "auto"
        Signed activation range; ``"auto"`` (default) makes it unsigned for a layer fed by
        ReLU/ReLU6 (:func:`fleet.quant.signs.relu_fed_layers`) and signed elsewhere; ``True``
        everywhere is ACS's code.
    """
    _check_layer_bits(weight_bits, "weight_bits")
    _check_layer_bits(act_bits, "act_bits")
    names = dict(model.named_modules())
    keep = default_keep_fp(model) if keep_fp is None else list(keep_fp)
    unknown = [n for n in keep if n not in names]
    if unknown:
        raise ValueError(f"keep_fp names match no module: {', '.join(map(repr, unknown))}")
    qmodel = copy.deepcopy(model)
    abits = FLOAT_BITS if weights_only else act_bits
    targets = [(n, m) for n, m in qmodel.named_modules() if type(m) in MAPPING and n not in keep]
    relu_fed = relu_fed_layers(model) if act_signed == "auto" and targets else set()
    for name, layer in targets:
        signed = resolve_act_signed(act_signed, name, relu_fed)
        qlayer = MAPPING[type(layer)].from_float(layer, weight_bits, abits, per_channel, signed)
        if name == "":
            return qlayer  # the model itself is a single layer
        _set_submodule(qmodel, name, qlayer)
    if hasattr(model, "block_names"):
        # torch types a module's dynamic attributes as Tensor | Module; block_names is a list[str]
        qmodel.block_names = list(model.block_names)  # type: ignore[assignment, arg-type]
    return qmodel


def quant_layers(model: nn.Module) -> dict[str, QConv2d | QLinear]:
    """Quantized layers by module name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (QConv2d, QLinear))}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def quant_info(model: nn.Module) -> QuantInfo:
    """Collect the :class:`QuantInfo` of every LSQ-quantized weight in ``model``."""
    weights: dict[str, QuantSpec] = {}
    for name, layer in quant_layers(model).items():
        wq = layer.weight_quant
        if isinstance(wq, LsqQuantizer):
            weights[_join(name, "weight")] = QuantSpec(
                wq.bits, _join(name, "weight_quant.step"), wq.signed
            )
    return QuantInfo(weights)


def set_initialized(model: nn.Module, value: bool = True) -> None:
    """Set every LSQ quantizer's ``initialized`` flag.

    Use ``True`` after loading steps from elsewhere (e.g. a global model), since
    the flags are local-only and a fresh model would otherwise re-initialise
    (and overwrite) the loaded steps on its first training forward.
    """
    for m in model.modules():
        if isinstance(m, LsqQuantizer):
            m.initialized.fill_(int(value))


@torch.no_grad()
def init_quantizers(model: nn.Module, x: torch.Tensor) -> None:
    """Initialise every not-yet-initialised quantizer's step with one forward on ``x``.

    The forward runs in train mode (quantizers initialise only in training, as in
    ACS) under ``no_grad``. Each module's train/eval mode is restored afterwards,
    and so are BatchNorm buffers, so the only side effect is on the quantizers.
    Quantizers that are already initialised keep their steps.
    """
    modes = {m: m.training for m in model.modules()}
    bn_buffers = [
        (buf, buf.clone())
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for buf in m.buffers()
    ]
    try:
        model.train()
        model(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
        for buf, saved in bn_buffers:
            buf.copy_(saved)
