"""Integer-code export: exact weights, matching predictions, real sizes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fleet.model.architectures import build_model
from fleet.quant.convert import init_quantizers, quant_layers, quantize_model
from fleet.quant.export import export_nbytes, export_quantized, load_exported, save_export


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Small forwards: two intra-op threads only add contention on a busy 2-core box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Small inputs keep the test fast; both archs are resolution-agnostic (adaptive pooling).
@pytest.mark.parametrize("arch,in_shape,n", [("cnn", (1, 12, 12), 1000), ("resnet20", (3, 8, 8), 500)])
@pytest.mark.parametrize("bits", [4, 2])
def test_loaded_model_predicts_like_fake_quant(
    arch: str, in_shape: tuple[int, int, int], n: int, bits: int, tmp_path: Path
) -> None:
    # Prepare
    torch.manual_seed(bits)  # parameter init of build_model
    gen = torch.Generator().manual_seed(0)
    fp = build_model(arch, in_shape=in_shape, num_classes=10)
    q = quantize_model(fp, bits, bits, per_channel=bits == 2)
    init_quantizers(q, torch.randn(32, *in_shape, generator=gen))
    q.eval()
    # Execute: through a safetensors file, as a device would receive it
    save_export(tmp_path / "model.safetensors", export_quantized(q))
    loaded = load_exported(load_file(tmp_path / "model.safetensors"), fp)
    x = torch.randn(n, *in_shape, generator=gen)
    with torch.no_grad():
        expected, got = q(x), loaded(x)
    # Assert
    agreement = (expected.argmax(1) == got.argmax(1)).float().mean().item()
    assert agreement >= 0.999
    for name, layer in quant_layers(q).items():
        with torch.no_grad():
            fake = layer.weight_quant(layer.weight)
        assert torch.equal(loaded.get_submodule(name).weight, fake)  # exactly codes * step


def test_export_contents_and_size() -> None:
    torch.manual_seed(0)
    fp = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
    q = quantize_model(fp, 3, 4)
    init_quantizers(q, torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    arrays = export_quantized(q)
    # conv2: 32*16*9 = 4608 weights at 3 bits = 1728 bytes; conv3: 64*32*9 = 18432 -> 6912
    assert arrays["conv2.weight::codes"].nbytes == 4608 * 3 // 8
    assert arrays["conv3.weight::codes"].nbytes == 18432 * 3 // 8
    assert arrays["conv2.weight::shape"].tolist() == [32, 16, 3, 3]
    assert arrays["conv2.weight::qspec"].tolist() == [3, 1]
    assert arrays["conv2.act_quant::qspec"].tolist() == [4, 0]  # unsigned: conv2's input follows a ReLU
    assert "conv2.weight" not in arrays and "conv1.weight" in arrays  # conv1 stays float
    assert not [k for k in arrays if k.endswith(("initialized", "num_batches_tracked"))]
    assert all(v.dtype == np.float32 for k, v in arrays.items() if "::" not in k)
    assert export_nbytes(arrays) == sum(v.nbytes for v in arrays.values())
    float_bytes = 4 * sum(p.numel() for p in fp.parameters())
    assert export_nbytes(arrays) < float_bytes / 3


def test_load_exported_rejects_missing_entries() -> None:
    torch.manual_seed(0)
    fp = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
    arrays = export_quantized(quantize_model(fp, 4, 4))
    del arrays["bn1.running_mean"]
    with pytest.raises(ValueError, match="bn1.running_mean"):
        load_exported(arrays, fp)
