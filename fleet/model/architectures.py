"""Model registry: the float architectures a fleet can train.

Every model exposes ``block_names``: the names of the modules whose outputs are
the "intermediate layers" of the network (one per block), used by cascaded layer
correction (QuaRC) and by the QGT bottleneck report. Names survive quantization
surgery, so the same list addresses the quantized copy.

Examples
--------
>>> m = build_model("mlp", in_shape=(1, 8, 8), num_classes=10)
>>> m(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["MODELS", "build_model", "block_names"]


class MLP(nn.Module):
    """Two hidden layers, for 8x8 digits (default widths 128, 64)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, h, w = in_shape
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c * h * w, 128)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(128, 64)
        self.act2 = nn.ReLU()
        self.classifier = nn.Linear(64, num_classes)
        self.block_names = ["act1", "act2"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)  # (N, C*H*W)
        x = self.act1(self.fc1(x))
        x = self.act2(self.fc2(x))
        return self.classifier(x)


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; works on 8x8, 28x28 and 32x32 inputs."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, _, _ = in_shape
        self.conv1 = nn.Conv2d(c, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.block1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.block2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.block3 = nn.ReLU()
        self.pool3 = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(64, num_classes)
        self.block_names = ["block1", "block2", "block3"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block1(self.bn1(self.conv1(x)))  # (N, 16, H, W)
        x = self.pool2(self.block2(self.bn2(self.conv2(x))))  # (N, 32, H/2, W/2)
        x = self.pool3(self.block3(self.bn3(self.conv3(x))))  # (N, 64, 1, 1)
        return self.classifier(self.flatten(x))


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block with a 1x1 downsample conv when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 inputs (He et al. 2016, CIFAR variant: 3 stages x 3 blocks)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        c, _, _ = in_shape
        self.conv1 = nn.Conv2d(c, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        layers: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate((16, 32, 64)):
            for i in range(3):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        self.block_names = [f"layers.{i}" for i in range(len(layers))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (N, 16, H, W)
        x = self.layers(x)  # (N, 64, H/4, W/4)
        return self.fc(self.flatten(self.pool(x)))


def _resnet18(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    # torchvision's ImageNet stem (7x7 stride 2 + maxpool) leaves 1x1 maps on 32x32
    # inputs; the usual small-input adaptation is a 3x3 stride-1 stem and no maxpool.
    import torchvision  # lazily: importing it costs about 1 s (it imports torch._dynamo), most runs never need it

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.block_names = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    return model


def _mobilenet_v2(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes)
    # CIFAR-style adaptation (as in ACS's QMobilenetv2): stride-1 stem and a
    # stride-1 24-channel stage, so 32x32 inputs keep 4x4 maps before pooling.
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_shape[0], stem.out_channels, 3, 1, 1, bias=False)
    model.features[2].conv[1][0].stride = (1, 1)
    model.block_names = [f"features.{i}" for i in range(1, len(model.features))]
    return model


def _mlp(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return MLP(in_shape, num_classes)


def _cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return SmallCNN(in_shape, num_classes)


def _resnet20(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return ResNet20(in_shape, num_classes)


ModelFactory = Callable[[tuple[int, int, int], int], nn.Module]

MODELS: dict[str, ModelFactory] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet20": _resnet20,
    "resnet18": _resnet18,
    "mobilenet_v2": _mobilenet_v2,
}


def build_model(arch: str, in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build a float model by registry name.

    Parameters
    ----------
    arch : str
        One of ``MODELS``.
    in_shape : tuple of int
        Input shape ``(C, H, W)``.
    num_classes : int
        Number of output classes.
    """
    if arch not in MODELS:
        raise ValueError(f"unknown model '{arch}'; valid: {', '.join(sorted(MODELS))}")
    return MODELS[arch](tuple(in_shape), num_classes)  # type: ignore[arg-type]


def block_names(model: nn.Module) -> list[str]:
    """Names of the block modules whose outputs CLC aligns (see module docstring)."""
    names = getattr(model, "block_names", None)
    if names is None:
        raise ValueError(f"{type(model).__name__} declares no block_names")
    return list(names)
