"""Integer-only inference of a fake-quantized model: what a device without a float unit would run.

:func:`lower` traces the model (``torch.fx``, the quantized layers as leaves) and prepares, per quantized layer,
its weight as b-bit integer codes and its input quantizer (step, range). :meth:`IntegerModel.__call__` then runs:

- **quantize** a float input: ``q = clamp(round(x / s_a), qmin, qmax)`` (the device's sensor data, or a float
  island's output);
- **integer accumulation**: ``acc = conv(q, w_codes)`` in int32 (computed exactly: every partial sum of b-bit codes
  is an integer far below 2^31, and float64 holds each one exactly; the bound is asserted);
- **BatchNorm folded** into the accumulator's per-channel affine ``v = m * acc + c`` (with the layer's bias);
- **requantization** to the next quantized layer's codes in fixed point, ``q' = clamp((acc * M0 + B) >> n)``
  with ``M0`` a 31-bit integer multiplier and ``n`` a shift (round half up), when only monotone operations
  (ReLU, max-pooling, flatten) stand between them: those commute with quantization, so they run on the codes;
- **float islands** elsewhere: layers kept in float (``quant.keep-fp``), average pooling, residual additions and
  the logits are computed in float32 from ``m * acc + c``. :attr:`IntegerModel.float_ops` names them.

Supported: chains and residual graphs of ``QConv2d``/``QLinear`` (per-tensor or per-channel weight steps),
``Conv2d``/``Linear`` kept float, BatchNorm, ReLU, max/average pooling, flatten, dropout, identity and addition.
Another module or function is a one-line error naming it.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from fleet.quant.convert import QConv2d, QLinear
from fleet.quant.quantizers import LsqQuantizer

__all__ = ["IntegerModel", "lower", "QuantizedLayer", "Tracer"]

_MONOTONE = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_RELU = (F.relu, torch.relu, "relu")  # call_function targets, and the call_method name
_FLATTEN = (torch.flatten, "flatten")
_MAX_ACC = 2**31 - 1


class Tracer(fx.Tracer):
    """The quantized layers are leaves: the integer path replaces them whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, QConv2d | QLinear) or super().is_leaf_module(m, qualname)


@dataclass
class QuantizedLayer:
    """A layer whose input and weight are both quantized: its integer constants."""

    name: str
    kind: str  # "conv" or "linear"
    w_codes: torch.Tensor  # int32, the weight's shape
    w_step: torch.Tensor  # (1,) or (out,) float64
    w_bits: int
    a_step: float
    a_min: int
    a_max: int
    a_bits: int
    bias: torch.Tensor | None  # float64
    conv_args: dict[str, Any] = field(default_factory=dict)  # stride, padding, dilation, groups


@dataclass
class _Acc:
    """``v = max(v_lo, m * acc + c)`` per channel (dim 1): an int32 accumulator and its pending affine."""

    acc: torch.Tensor  # int32 values held in float64
    m: torch.Tensor  # (C,) float64
    c: torch.Tensor  # (C,) float64
    relu: bool = False

    def value(self) -> torch.Tensor:
        shape = (1, -1) + (1,) * (self.acc.dim() - 2)
        v = self.acc * self.m.view(shape) + self.c.view(shape)
        return (v.clamp_min(0) if self.relu else v).float()


@dataclass
class _Codes:
    """``v = step * q``: integer codes on a quantizer's grid."""

    q: torch.Tensor  # int values held in float64
    step: float

    def value(self) -> torch.Tensor:
        return (self.q * self.step).float()


def _value(v: Any) -> torch.Tensor:
    return v.value() if isinstance(v, _Acc | _Codes) else v


def _layer(name: str, m: QConv2d | QLinear) -> QuantizedLayer | None:
    wq, aq = m.weight_quant, m.act_quant
    if not (isinstance(wq, LsqQuantizer) and isinstance(aq, LsqQuantizer)):
        return None  # a float island (weights-only or float layer)
    kind = "conv" if isinstance(m, QConv2d) else "linear"
    args = {"stride": m.stride, "padding": m.padding, "dilation": m.dilation, "groups": m.groups} \
        if isinstance(m, QConv2d) else {}
    if isinstance(m, QConv2d) and m.padding_mode != "zeros":
        raise ValueError(f"integer path: '{name}' pads with '{m.padding_mode}'; only zero padding is supported")
    with torch.no_grad():
        codes = wq.codes(m.weight).to(torch.int32)
    return QuantizedLayer(name, kind, codes, wq.step.detach().double().flatten(), wq.bits, float(aq.step.detach()),
                          aq.qmin, aq.qmax, aq.bits, None if m.bias is None else m.bias.detach().double(), args)


def _fixed_point(mult: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``mult`` (per channel) as int64 multipliers sharing one right shift: ``mult ~ M0 * 2**-n``, ``|M0| < 2**31``."""
    top = float(mult.abs().max()) or 1.0
    n = max(0, 30 - math.frexp(top)[1])  # the largest |M0| lands in [2**29, 2**30)
    return torch.round(mult * 2.0**n).to(torch.int64), n


class IntegerModel:
    """The lowered model (:func:`lower`); calling it returns float32 logits."""

    def __init__(self, model: nn.Module) -> None:
        self.graph = fx.GraphModule(model, Tracer().trace(model))
        self.modules = dict(self.graph.named_modules())
        self.layers: dict[str, QuantizedLayer] = {}
        self.float_ops: list[str] = []
        for node in self.graph.graph.nodes:
            self._check(node)
        self.requant = {n.name: self._consumer(n) for n in self.graph.graph.nodes}

    def _check(self, node: fx.Node) -> None:
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if isinstance(m, QConv2d | QLinear):
                layer = _layer(str(node.target), m)
                if layer is None:
                    self.float_ops.append(str(node.target))
                else:
                    self.layers[str(node.target)] = layer
            elif isinstance(m, nn.Conv2d | nn.Linear | nn.AdaptiveAvgPool2d | nn.AvgPool2d | nn.ReLU6):
                self.float_ops.append(str(node.target))
            elif not isinstance(m, _MONOTONE + (nn.modules.batchnorm._BatchNorm,)):
                raise ValueError(f"integer path: module '{node.target}' ({type(m).__name__}) is not supported")
        elif node.op == "call_function":
            if node.target in (operator.add, torch.add, F.adaptive_avg_pool2d) and not node.kwargs:
                self.float_ops.append(node.name)
            elif node.target not in _RELU + _FLATTEN:
                raise ValueError(f"integer path: function '{node.name}' ({node.target}) is not supported")
        elif node.op == "call_method" and node.target not in _RELU + _FLATTEN:
            raise ValueError(f"integer path: method '{node.name}' (.{node.target}) is not supported")

    def _consumer(self, node: fx.Node) -> QuantizedLayer | None:
        """The quantized layer this node's value reaches through monotone operations only, if any."""
        while len(node.users) == 1:
            (user,) = node.users
            if user.op == "call_module" and str(user.target) in self.layers:
                return self.layers[str(user.target)]
            if not self._is_monotone(user):
                return None
            node = user
        return None

    def _is_monotone(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules[str(node.target)], _MONOTONE)
        return node.target in _RELU + _FLATTEN

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        modes = {m: m.training for m in self.graph.modules()}
        self.graph.eval()  # the float islands (BatchNorm, dropout) at inference behaviour, whatever the model's mode
        try:
            env: dict[str, Any] = {}
            out: Any = None
            for node in self.graph.graph.nodes:
                args = [env[a.name] if isinstance(a, fx.Node) else a for a in node.args]
                if node.op == "placeholder":
                    env[node.name] = x.float()
                elif node.op == "output":
                    out = _value(args[0])
                else:
                    env[node.name] = self._requantize(node, self._step(node, args))
            return out
        finally:
            for m, mode in modes.items():
                m.training = mode

    def _step(self, node: fx.Node, args: list[Any]) -> Any:
        if node.op == "call_module":
            m = self.modules[str(node.target)]
            if str(node.target) in self.layers:
                return self._quantized(self.layers[str(node.target)], args[0])
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                return _batchnorm(m, args[0])
            if isinstance(m, nn.ReLU):
                return _relu(args[0])
            if isinstance(m, nn.MaxPool2d) and isinstance(args[0], _Codes):
                return _Codes(_maxpool(m, args[0].q), args[0].step)
            if isinstance(m, nn.Flatten) and isinstance(args[0], _Codes):
                return _Codes(m(args[0].q), args[0].step)
            if isinstance(m, nn.Identity | nn.Dropout):
                return args[0]
            return m(_value(args[0]))
        if node.target in _RELU:
            return _relu(args[0])
        if node.target in _FLATTEN and isinstance(args[0], _Codes):
            return _Codes(_flatten(args[0].q, args[1:], dict(node.kwargs)), args[0].step)
        if node.target in _FLATTEN:
            return _flatten(_value(args[0]), args[1:], dict(node.kwargs))
        if node.target is F.adaptive_avg_pool2d:
            return F.adaptive_avg_pool2d(_value(args[0]), *args[1:])
        return operator.add(_value(args[0]), _value(args[1]))  # the only other function _check lets through

    def _requantize(self, node: fx.Node, v: Any) -> Any:
        """An accumulator whose consumer is reached through monotone operations becomes that consumer's codes."""
        layer = self.requant.get(node.name)
        if layer is None or not isinstance(v, _Acc):
            return v
        mult, shift = _fixed_point(v.m / layer.a_step)
        bias = torch.round(v.c / layer.a_step * 2.0**shift).to(torch.int64)
        shape = (1, -1) + (1,) * (v.acc.dim() - 2)
        fixed = v.acc.to(torch.int64) * mult.view(shape) + bias.view(shape)
        q = torch.div(fixed + (1 << (shift - 1)) if shift else fixed, 2**shift, rounding_mode="floor")  # half up
        lo = max(layer.a_min, 0) if v.relu else layer.a_min
        return _Codes(q.clamp(lo, layer.a_max).double(), layer.a_step)

    def _quantized(self, layer: QuantizedLayer, x: Any) -> _Acc:
        if isinstance(x, _Codes) and x.step == layer.a_step:
            q = x.q
        else:
            q = torch.round(_value(x).double() / layer.a_step).clamp(layer.a_min, layer.a_max)
        # Exact integer accumulation: float32 when no sum can reach 2**24 (every partial sum of codes is then
        # an exactly representable integer), float64 otherwise (exact below 2**53)
        fan_in = layer.w_codes[0].numel()
        bound = fan_in * int(layer.w_codes.abs().max()) * max(abs(layer.a_min), abs(layer.a_max))
        dtype = torch.float32 if bound < 2**24 else torch.float64
        w = layer.w_codes.to(dtype)
        qd = q.to(dtype)
        if layer.kind == "linear" and qd.dim() != 2:
            raise ValueError(f"integer path: '{layer.name}' gets a {qd.dim()}-D input; only (N, features) is supported")
        acc = (F.conv2d(qd, w, None, **layer.conv_args) if layer.kind == "conv" else F.linear(qd, w)).double()
        if float(acc.abs().max()) > _MAX_ACC:
            raise OverflowError(f"integer path: '{layer.name}' overflows its int32 accumulator")
        m = (layer.w_step * layer.a_step).expand(acc.shape[1]).clone()
        c = layer.bias.clone() if layer.bias is not None else torch.zeros(acc.shape[1], dtype=torch.float64)
        return _Acc(acc, m, c)


def _batchnorm(bn: nn.modules.batchnorm._BatchNorm, x: Any) -> Any:
    """Fold an eval-mode BatchNorm into a pending accumulator's affine, else apply it in float."""
    if not isinstance(x, _Acc) or x.relu:
        return bn(_value(x))
    assert bn.running_var is not None and bn.running_mean is not None  # eval-mode statistics
    inv = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    g = (bn.weight.double() if bn.weight is not None else torch.ones_like(inv)) * inv
    b = (bn.bias.double() if bn.bias is not None else torch.zeros_like(inv)) - bn.running_mean.double() * g
    return _Acc(x.acc, x.m * g, x.c * g + b)


def _relu(x: Any) -> Any:
    if isinstance(x, _Acc):
        return _Acc(x.acc, x.m, x.c, relu=True)
    if isinstance(x, _Codes):
        return _Codes(x.q.clamp_min(0), x.step)
    return F.relu(x)


def _flatten(t: torch.Tensor, args: list[Any], kwargs: dict[str, Any]) -> torch.Tensor:
    return torch.flatten(t, *args, **kwargs)


def _maxpool(m: nn.MaxPool2d, q: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(q, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def lower(model: nn.Module) -> IntegerModel:
    """The integer-only program of a fake-quantized model (the model is not changed). The integer constants
    (codes, steps) are taken now; the float islands use the model's own modules, so lower again after
    changing the model."""
    was = model.training
    model.eval()
    try:
        return IntegerModel(model)
    finally:
        model.train(was)

