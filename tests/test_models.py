"""Model registry: every arch builds, maps its intended input to (N, num_classes) and names real blocks."""

from __future__ import annotations

import pytest
import torch

from fleet.model.architectures import MODELS, block_names, build_model

CASES = [
    ("mlp", (1, 8, 8)),
    ("cnn", (1, 28, 28)),
    ("cnn", (1, 8, 8)),
    ("resnet20", (3, 32, 32)),
    ("resnet18", (3, 32, 32)),
    ("mobilenet_v2", (3, 32, 32)),
]


def test_cases_cover_the_registry() -> None:
    assert {arch for arch, _ in CASES} == set(MODELS)


@pytest.mark.parametrize(("arch", "in_shape"), CASES, ids=[f"{a}-{s[1]}" for a, s in CASES])
def test_forward_shape_and_block_names(arch: str, in_shape: tuple[int, int, int]) -> None:
    # Prepare
    model = build_model(arch, in_shape=in_shape, num_classes=7).eval()  # asserts do not depend on init values
    x = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))  # (N, C, H, W)
    # Execute
    with torch.no_grad():
        out = model(x)  # (N, num_classes)
    # Assert
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    names = block_names(model)
    modules = dict(model.named_modules())
    assert names and len(set(names)) == len(names)
    assert all(n in modules for n in names), [n for n in names if n not in modules]
    assert sum(p.numel() for p in model.parameters()) > 0


def test_mlp_block_names_and_parameter_count_by_hand() -> None:
    # 64*128+128 + 128*64+64 + 64*10+10 = 8320 + 8256 + 650
    model = build_model("mlp", (1, 8, 8), 10)
    assert block_names(model) == ["act1", "act2"]
    assert sum(p.numel() for p in model.parameters()) == 17226


def test_resnet20_has_nine_blocks() -> None:
    model = build_model("resnet20", (3, 32, 32), 10)
    assert block_names(model) == [f"layers.{i}" for i in range(9)]


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(ValueError) as info:
        build_model("vgg16", (3, 32, 32), 10)
    assert str(info.value) == "unknown model 'vgg16'; valid: cnn, mlp, mobilenet_v2, resnet18, resnet20"


def test_block_names_of_a_plain_module_is_an_error() -> None:
    with pytest.raises(ValueError, match="Linear declares no block_names"):
        block_names(torch.nn.Linear(2, 2))
