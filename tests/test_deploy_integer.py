"""The integer-only path and the QDQ ONNX file: they compute what the fake-quantized model computes."""

from __future__ import annotations

import copy
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from fleet.deploy.integer import _fixed_point, lower
from fleet.deploy.onnx_export import export_onnx, onnx_logits
from fleet.model.architectures import MLP, ResNet20, SmallCNN
from fleet.model.bnstats import reestimate_bn
from fleet.quant.convert import init_quantizers, quantize_model


def _model(arch: type[nn.Module], shape: tuple[int, int, int], wb: int, ab: int, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    q = quantize_model(arch(shape, 10), wb, ab, **kw)  # type: ignore[arg-type]
    x = torch.randn(256, *shape)
    init_quantizers(q, x)
    reestimate_bn(q, x)
    return q.eval()


CASES = [(SmallCNN, (1, 12, 12), 2, 2), (SmallCNN, (3, 8, 8), 4, 4), (MLP, (1, 8, 8), 2, 2), (MLP, (1, 8, 8), 8, 8)]


@pytest.mark.parametrize(("arch", "shape", "wb", "ab"), CASES)
def test_the_integer_path_computes_the_fake_quantized_logits(arch, shape, wb: int, ab: int) -> None:
    q = _model(arch, shape, wb, ab)
    x = torch.randn(200, *shape)
    with torch.no_grad():
        ref = q(x)
    out = lower(q)(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.995
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)


def test_the_quantized_layers_run_on_integer_codes_and_the_rest_is_named() -> None:
    q = _model(SmallCNN, (1, 12, 12), 2, 2)
    integer = lower(q)
    assert set(integer.layers) == {"conv2", "conv3"}  # ACS keeps the stem and the classifier in float
    assert integer.float_ops == ["conv1", "pool3", "classifier"]
    layer = integer.layers["conv2"]
    assert layer.w_codes.dtype == torch.int32 and int(layer.w_codes.min()) >= -2 and int(layer.w_codes.max()) <= 1
    assert (layer.a_min, layer.a_max) == (0, 3)  # ReLU-fed: unsigned 2-bit


def test_per_channel_steps_and_a_residual_network() -> None:
    q = _model(ResNet20, (3, 8, 8), 4, 4, per_channel=True)
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        ref = q(x)
    integer = lower(q)
    assert any("add" in op for op in integer.float_ops)  # the residual sums run in float
    assert torch.allclose(integer(x), ref, atol=1e-3, rtol=1e-3)


def test_requantization_multipliers_are_31_bit_integers_with_one_shift() -> None:
    mult = torch.tensor([0.00123, -0.5, 3.0e-6], dtype=torch.float64)
    m0, n = _fixed_point(mult)
    assert m0.dtype == torch.int64 and int(m0.abs().max()) < 2**31
    assert torch.allclose(m0.double() * 2.0**-n, mult, rtol=1e-6, atol=2.0**-n)


def test_an_unsupported_module_is_a_one_line_error_naming_it() -> None:
    q = copy.deepcopy(_model(MLP, (1, 8, 8), 4, 4))
    q.act1 = nn.GELU()
    with pytest.raises(ValueError, match=r"^integer path: module 'act1' \(GELU\) is not supported$"):
        lower(q)


@pytest.mark.parametrize(("arch", "shape", "wb", "ab"), CASES[:3])
def test_the_onnx_file_is_valid_qdq_and_onnxruntime_agrees_with_the_integer_path(tmp_path: Path, arch, shape,
                                                                                  wb: int, ab: int) -> None:
    q = _model(arch, shape, wb, ab)
    x = torch.randn(200, *shape)
    path = export_onnx(q, tmp_path / "m.onnx", x[:1])
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    codes = [i for i in proto.graph.initializer if i.name.endswith(".w_codes")]
    assert codes and all(i.data_type == onnx.TensorProto.INT8 for i in codes)
    got = onnx_logits(path, x)
    assert (got.argmax(1) == lower(q)(x).argmax(1)).float().mean() >= 0.995
    with torch.no_grad():
        assert torch.allclose(got, q(x), atol=5e-3, rtol=1e-3)


def test_keep_fp_int8_puts_the_float_layers_at_8_bits_and_leaves_no_float_op() -> None:
    from fleet.config.scenario import parse_config
    from fleet.model.assembly import trainable_model

    torch.manual_seed(0)
    ref = SmallCNN((1, 12, 12), 10).eval()
    cfg = parse_config({"quant.keep-fp": "int8", "model.arch": "cnn"})
    model = trainable_model(cfg, ref, 2, 2)
    bits = {n: (m.weight_quant.bits, m.act_quant.bits) for n, m in model.named_modules() if hasattr(m, "act_quant")}
    assert bits == {"conv1": (8, 8), "conv2": (2, 2), "conv3": (2, 2), "classifier": (8, 8)}
    x = torch.randn(64, 1, 12, 12)
    init_quantizers(model, x)
    model.eval()
    integer = lower(model)
    assert integer.float_ops == ["pool3"]  # average pooling; every layer runs on integer codes
    with torch.no_grad():
        assert torch.allclose(integer(x), model(x), atol=1e-4, rtol=1e-4)


class _SharedRelu(nn.Module):
    """One ReLU module called twice, and an average pool that counts its zero padding (PyTorch's default)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.flatten, self.fc = nn.Flatten(), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.relu(self.conv2(self.relu(self.conv1(x)))))))


def test_a_module_called_twice_and_a_padded_average_pool_export_as_pytorch_computes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    q = quantize_model(_SharedRelu(), 4, 4)
    x = torch.randn(32, 1, 6, 6)
    init_quantizers(q, x)
    q.eval()
    got = onnx_logits(export_onnx(q, tmp_path / "m.onnx", x[:1]), x, fused=False)
    with torch.no_grad():
        assert torch.allclose(got, q(x), atol=1e-4)
        assert torch.allclose(lower(q)(x), q(x), atol=1e-4)


def test_a_model_the_deployment_check_cannot_lower_is_a_warning_not_a_failed_run(tmp_path: Path) -> None:
    from simulations.store.deploy import _checked_deploy

    q = copy.deepcopy(_model(MLP, (1, 8, 8), 4, 4))
    q.act1 = nn.GELU()
    out = _checked_deploy(q, tmp_path, torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    assert out == {"deploy_check": "skipped: integer path: module 'act1' (GELU) is not supported"}
    assert not (tmp_path / "model.onnx").exists()
