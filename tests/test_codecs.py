"""Uplink codecs: round trips, unbiased stochastic rounding, real packed sizes."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

from fleet.model.architectures import build_model
from fleet.quant import codecs
from fleet.quant.codecs import CODECS, build_codec, payload_nbytes
from fleet.quant.convert import init_quantizers, quant_info, quantize_model
from fleet.quant.spec import QuantInfo, QuantSpec


def _states(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = {
        "conv.weight": rng.normal(size=(4, 2, 3, 3)).astype(np.float32),  # 72 elements
        "fc.weight": rng.normal(size=(6, 50)).astype(np.float32),  # 300 elements
        "fc.bias": rng.normal(size=(6,)).astype(np.float32),
    }
    local = {k: v + rng.uniform(-0.1, 0.1, size=v.shape).astype(np.float32) for k, v in base.items()}
    return local, base


def test_doctests() -> None:
    result = doctest.testmod(codecs)
    assert result.failed == 0 and result.attempted > 0


def test_fp32_exact_and_size() -> None:
    local, base = _states()
    codec = build_codec("fp32")
    payload = codec.encode(local, base, np.random.default_rng(0), None)
    out = codec.decode(payload, base, None)
    assert all(np.array_equal(out[k], local[k]) and out[k].dtype == np.float32 for k in base)
    assert payload_nbytes(payload) == 4 * (72 + 300 + 6)


def test_fp16_within_half_precision() -> None:
    local, base = _states()
    codec = build_codec("fp16")
    payload = codec.encode(local, base, np.random.default_rng(0), None)
    out = codec.decode(payload, base, None)
    for k in base:
        assert out[k].dtype == np.float32 and out[k].shape == base[k].shape
        # fp16 round-to-nearest: relative error <= 2^-11 (half its epsilon 2^-10)
        assert np.all(np.abs(out[k] - local[k]) <= 2.0**-11 * np.abs(local[k]) + 1e-7)
    assert payload_nbytes(payload) == 2 * (72 + 300 + 6)


@pytest.mark.parametrize("name,bits", [("delta-int8", 8), ("delta-int4", 4)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_delta_codec_unbiased_and_sized(name: str, bits: int, per_channel: bool) -> None:
    # Prepare: fc.weight (300 >= min_numel 256) is coded; the rest goes as float32.
    local, base = _states(1)
    codec = build_codec(name, per_channel=per_channel)
    rng = np.random.default_rng(2)
    qmax = 2 ** (bits - 1) - 1
    delta = local["fc.weight"] - base["fc.weight"]
    if per_channel:
        scale = np.abs(delta).max(axis=1, keepdims=True) / qmax  # (6, 1)
    else:
        scale = np.full((1, 1), np.abs(delta).max() / qmax)
    # Execute
    n = 400
    decoded = []
    for _ in range(n):
        payload = codec.encode(local, base, rng, None)
        decoded.append(codec.decode(payload, base, None))
    # Assert: exact float tensors, codes within one step, mean within 5 sigma
    assert np.array_equal(decoded[0]["conv.weight"], local["conv.weight"])
    assert np.array_equal(decoded[0]["fc.bias"], local["fc.bias"])
    fc = np.stack([d["fc.weight"] for d in decoded])  # (n, 6, 50)
    assert np.all(np.abs(fc - local["fc.weight"]) <= scale * (1 + 1e-5))
    # one draw has std <= scale / 2, so the mean of n has std <= scale / (2 sqrt(n))
    assert np.all(np.abs(fc.mean(0) - local["fc.weight"]) <= 5 * scale / (2 * np.sqrt(n)))
    n_scales = 6 if per_channel else 1
    assert payload_nbytes(payload) == 4 * (72 + 6) + (300 * bits + 7) // 8 + 4 * n_scales


def test_delta_zero_delta_and_min_numel() -> None:
    local, base = _states()
    codec = build_codec("delta-int4", min_numel=1)
    payload = codec.encode(base, base, np.random.default_rng(0), None)
    out = codec.decode(payload, base, None)
    assert all(np.array_equal(out[k], base[k]) for k in base)
    assert payload_nbytes(payload) == (72 * 4 + 7) // 8 + (300 * 4 + 7) // 8 + 3 + 3 * 4


def test_qweights_exact_on_grid_and_sized() -> None:
    # Prepare: a 3-bit signed weight that already sits on the grid step * codes.
    rng = np.random.default_rng(3)
    step = np.array([0.25], dtype=np.float32)
    codes = rng.integers(-4, 4, size=(8, 40))
    local = {
        "fc.weight": (codes * step).astype(np.float32),
        "fc.weight_quant.step": step,
        "fc.bias": rng.normal(size=8).astype(np.float32),
    }
    base = {k: np.zeros_like(v) for k, v in local.items()}
    info = QuantInfo({"fc.weight": QuantSpec(3, "fc.weight_quant.step", True)})
    codec = build_codec("qweights")
    # Execute
    payload = codec.encode(local, base, np.random.default_rng(0), info)
    out = codec.decode(payload, base, info)
    # Assert: 320 codes * 3 bits = 120 bytes, step 4 bytes, bias 32 bytes
    assert all(np.array_equal(out[k], local[k]) for k in local)
    assert payload_nbytes(payload) == 120 + 4 + 32


def test_qweights_matches_fake_quant_weights_of_a_model() -> None:
    torch.manual_seed(0)
    q = quantize_model(build_model("cnn", (1, 8, 8), 10), 2, 4, per_channel=True)
    init_quantizers(q, torch.randn(8, 1, 8, 8))
    local = {k: v.numpy().astype(np.float32) for k, v in q.state_dict().items()
             if v.is_floating_point()}
    codec = build_codec("qweights")
    info = quant_info(q)
    out = codec.decode(codec.encode(local, local, np.random.default_rng(0), info), local, info)
    layer = q.get_submodule("conv2")
    with torch.no_grad():
        expected = layer.weight_quant.eval()(layer.weight).numpy()
    assert np.array_equal(out["conv2.weight"], expected)
    assert np.array_equal(out["bn2.running_var"], local["bn2.running_var"])


def test_qweights_needs_qinfo() -> None:
    local, base = _states()
    with pytest.raises(ValueError, match="qinfo"):
        build_codec("qweights").encode(local, base, np.random.default_rng(0), None)


def test_registry_errors() -> None:
    assert set(CODECS) == {"fp32", "fp16", "delta-int8", "delta-int4", "qweights"}
    with pytest.raises(ValueError, match="delta-int8"):  # lists the valid names
        build_codec("int3")
    with pytest.raises(ValueError, match="per_chanel"):
        build_codec("delta-int8", per_chanel=True)
    with pytest.raises(ValueError, match="min_numel"):
        build_codec("fp32", min_numel=3)
    assert build_codec("delta-int4").name == "delta-int4"


@pytest.mark.parametrize("name", ["delta-int4", "qweights"])
def test_non_finite_tensors_are_sent_raw(name: str) -> None:
    local = {"fc.weight": np.ones((4, 100), np.float32), "fc.weight_quant.step": np.ones(1, np.float32)}
    local["fc.weight"][0, 0] = np.nan
    base = {k: np.zeros_like(v) for k, v in local.items()}
    info = QuantInfo({"fc.weight": QuantSpec(4, "fc.weight_quant.step", True)})
    codec = build_codec(name)
    out = codec.decode(codec.encode(local, base, np.random.default_rng(0), info), base, info)
    assert np.isnan(out["fc.weight"][0, 0]) and np.all(out["fc.weight"].flat[1:] == 1.0)
