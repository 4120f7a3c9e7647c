"""ONNX export of a fake-quantized model in the QDQ form, for edge runtimes (onnxruntime, TensorRT, TFLite
converters): quantized weights are int8 initializers holding the b-bit codes, each behind a ``DequantizeLinear``;
each quantized input is ``Clip`` to its b-bit range, ``QuantizeLinear`` and ``DequantizeLinear`` with its LSQ
step (zero point 0). Runtimes fuse these into integer kernels (onnxruntime's QDQ transformer makes
``QLinearConv``/``QLinearMatMul`` of them). Layers kept in float stay float. BatchNorm is exported as is.

The graph is built node by node from the same ``torch.fx`` trace as :mod:`fleet.deploy.integer` (the same set of
supported modules), with ``onnx.helper``: no dependency on torch's ONNX exporter. Opset 13 (per-channel
``DequantizeLinear``).
"""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from fleet.deploy.integer import Tracer
from fleet.quant.convert import QConv2d, QLinear
from fleet.quant.quantizers import LsqQuantizer

__all__ = ["export_onnx", "onnx_logits", "OPSET"]

OPSET = 13


class _Builder:
    """ONNX nodes and initializers, named after the fx nodes they come from."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name


def _f32(t: torch.Tensor | None) -> np.ndarray:
    assert t is not None
    return t.detach().cpu().numpy().astype(np.float32)


def _qdq_input(b: _Builder, name: str, x: str, aq: LsqQuantizer) -> str:
    """Clip to the b-bit range, then QuantizeLinear / DequantizeLinear on the step (zero point 0)."""
    step = float(aq.step.detach())
    zp = np.zeros((), dtype=np.uint8 if aq.qmin >= 0 else np.int8)
    lo, hi = b.const(f"{name}.a_lo", np.array(aq.qmin * step, np.float32)), \
        b.const(f"{name}.a_hi", np.array(aq.qmax * step, np.float32))
    clipped = b.op("Clip", [x, lo, hi], f"{name}.a_clip")
    s, z = b.const(f"{name}.a_scale", np.array(step, np.float32)), b.const(f"{name}.a_zero", zp)
    q = b.op("QuantizeLinear", [clipped, s, z], f"{name}.a_q")
    return b.op("DequantizeLinear", [q, s, z], f"{name}.a_dq")


def _weight(b: _Builder, name: str, m: nn.Conv2d | nn.Linear) -> str:
    wq = getattr(m, "weight_quant", None)
    if not isinstance(wq, LsqQuantizer):
        return b.const(f"{name}.weight", _f32(m.weight))
    with torch.no_grad():
        codes = wq.codes(m.weight).cpu().numpy().astype(np.int8)
    steps = wq.step.detach().cpu().numpy().astype(np.float32).reshape(-1)
    w = b.const(f"{name}.w_codes", codes)
    per_channel = steps.size > 1
    s = b.const(f"{name}.w_scale", steps if per_channel else steps.reshape(()))
    z = b.const(f"{name}.w_zero", np.zeros(steps.shape if per_channel else (), np.int8))
    return b.op("DequantizeLinear", [w, s, z], f"{name}.w_dq", **({"axis": 0} if per_channel else {}))


def _layer(b: _Builder, name: str, m: nn.Conv2d | nn.Linear, x: str) -> str:
    aq = getattr(m, "act_quant", None)
    if isinstance(aq, LsqQuantizer):
        x = _qdq_input(b, name, x, aq)
    bias = [b.const(f"{name}.bias", _f32(m.bias))] if m.bias is not None else []
    inputs = [x, _weight(b, name, m), *bias]
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ValueError(f"onnx export: '{name}' needs explicit zero padding")
        ph, pw = m.padding
        return b.op("Conv", inputs, name, strides=list(m.stride), pads=[ph, pw, ph, pw],
                    dilations=list(m.dilation), group=m.groups, kernel_shape=list(m.kernel_size))
    return b.op("Gemm", inputs, name, transB=1)


def _module(b: _Builder, name: str, m: nn.Module, x: str) -> str:
    if isinstance(m, QConv2d | QLinear | nn.Conv2d | nn.Linear):
        return _layer(b, name, m, x)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        assert m.running_mean is not None and m.running_var is not None
        c = m.num_features
        ins = [b.const(f"{name}.{k}", v) for k, v in (
            ("scale", _f32(m.weight) if m.weight is not None else np.ones(c, np.float32)),
            ("B", _f32(m.bias) if m.bias is not None else np.zeros(c, np.float32)),
            ("mean", _f32(m.running_mean)), ("var", _f32(m.running_var)))]
        return b.op("BatchNormalization", [x, *ins], name, epsilon=float(m.eps))
    if isinstance(m, nn.ReLU):
        return b.op("Relu", [x], name)
    if isinstance(m, nn.ReLU6):
        lo, hi = b.const(f"{name}.lo", np.array(0.0, np.float32)), b.const(f"{name}.hi", np.array(6.0, np.float32))
        return b.op("Clip", [x, lo, hi], name)
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        k, st, p = (_pair(v) for v in (m.kernel_size, m.stride or m.kernel_size, m.padding))
        attrs: dict[str, Any] = {"kernel_shape": k, "strides": st, "pads": p + p, "ceil_mode": int(m.ceil_mode)}
        if isinstance(m, nn.MaxPool2d) and _pair(m.dilation) != [1, 1]:
            attrs["dilations"] = _pair(m.dilation)
        if isinstance(m, nn.AvgPool2d):
            if m.divisor_override is not None:
                raise ValueError(f"onnx export: '{name}' has a divisor_override, which ONNX cannot express")
            attrs["count_include_pad"] = int(m.count_include_pad)  # PyTorch counts the padding by default
        return b.op("MaxPool" if isinstance(m, nn.MaxPool2d) else "AveragePool", [x], name, **attrs)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if _pair(m.output_size) != [1, 1]:
            raise ValueError(f"onnx export: '{name}' pools to {m.output_size}; only output size 1 is supported")
        return b.op("GlobalAveragePool", [x], name)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ValueError(f"onnx export: '{name}' flattens dims {m.start_dim}..{m.end_dim}; only 1..-1")
        return b.op("Flatten", [x], name, axis=1)
    if isinstance(m, nn.Identity | nn.Dropout):
        return b.op("Identity", [x], name)
    raise ValueError(f"onnx export: module '{name}' ({type(m).__name__}) is not supported")


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def _function(b: _Builder, node: fx.Node, args: list[Any]) -> str:
    if node.target in (operator.add, torch.add) and not node.kwargs:
        return b.op("Add", [args[0], args[1]], node.name)
    if node.target in (F.relu, torch.relu, "relu"):
        return b.op("Relu", [args[0]], node.name)
    if node.target in (torch.flatten, "flatten") and tuple(args[1:]) == (1,) and not node.kwargs:
        return b.op("Flatten", [args[0]], node.name, axis=1)
    if node.target is F.adaptive_avg_pool2d and _pair(args[1] if len(args) > 1 else node.kwargs.get(
            "output_size", 0)) == [1, 1]:
        return b.op("GlobalAveragePool", [args[0]], node.name)
    raise ValueError(f"onnx export: '{node.name}' ({node.target}) is not supported")


def export_onnx(model: nn.Module, path: str | Path, sample: torch.Tensor) -> Path:
    """Write ``model`` (fake-quantized, evaluated in eval mode) as a QDQ ONNX file; ``sample``: one input batch,
    for the input's shape (the batch dimension is dynamic). Checked with ``onnx.checker``."""
    import onnx
    from onnx import TensorProto, helper

    was = model.training
    model.eval()
    try:
        gm = fx.GraphModule(model, Tracer().trace(model))
        modules, b = dict(gm.named_modules()), _Builder()
        env: dict[str, str] = {}
        out = ""
        for node in gm.graph.nodes:
            args = [env[a.name] if isinstance(a, fx.Node) else a for a in node.args]
            if node.op == "placeholder":
                env[node.name] = "input"
            elif node.op == "output":
                out = b.op("Identity", [args[0]], "logits")
            elif node.op == "call_module":
                # named after the fx node: a module called twice (torchvision's shared ReLU) makes two ONNX nodes
                env[node.name] = _module(b, node.name, modules[str(node.target)], args[0])
            else:
                env[node.name] = _function(b, node, args)
    finally:
        model.train(was)
    shape: list[Any] = ["batch", *sample.shape[1:]]
    graph = helper.make_graph(b.nodes, "edgefleet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", "classes"])], b.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgefleet")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - onnx's ValidationError: a graph we built wrongly, one line
        raise ValueError(f"onnx export: the graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    path = Path(path)
    onnx.save(proto, str(path))
    return path


def onnx_logits(path: str | Path, x: torch.Tensor, batch_size: int = 512, fused: bool = True) -> torch.Tensor:
    """The exported model's logits on ``x``, computed by onnxruntime (CPU, one thread). ``fused``: with the
    runtime's graph optimisations, which turn QDQ pairs into integer kernels, as a device runs it; without, each
    node as written (the QDQ graph's reference semantics)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    if not fused:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {"input": x[s:s + batch_size].numpy().astype(np.float32)})[0]
            for s in range(0, len(x), batch_size)]
    return torch.from_numpy(np.concatenate(outs)) if outs else torch.zeros(0)
