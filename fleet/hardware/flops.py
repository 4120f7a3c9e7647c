"""Forward FLOPs of a model per sample, counted once with forward hooks on a one-sample input.

The one FLOP counter of the project: the virtual clock (``fleet.hardware.clock``), the start-up deadline
check and QCore's on-device cost all use it.
"""

from __future__ import annotations

from typing import Protocol, TypeGuard

import torch
from torch import nn

__all__ = ["model_flops"]

# Elementwise modules: one FLOP per output element.
_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish,
                nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)


class _ConvShape(Protocol):
    kernel_size: tuple[int, ...]
    in_channels: int
    groups: int


class _LinearShape(Protocol):
    in_features: int
    out_features: int


def _has_conv_shape(module: nn.Module) -> TypeGuard[_ConvShape]:
    return hasattr(module, "kernel_size") and hasattr(module, "in_channels") and hasattr(module, "groups")


def _has_linear_shape(module: nn.Module) -> TypeGuard[_LinearShape]:
    return hasattr(module, "in_features") and hasattr(module, "out_features")


def _macs(module: nn.Module, out: torch.Tensor) -> int | None:
    """Multiply-accumulates of a convolution or linear layer (None for anything else). Read from the layer's
    shape attributes, so QCore's integer-code layers count like the ``nn.Conv2d``/``nn.Linear`` they replace."""
    if _has_conv_shape(module):
        kh, kw = module.kernel_size
        return out.numel() * (module.in_channels // module.groups) * kh * kw
    if _has_linear_shape(module):
        return (out.numel() // module.out_features) * module.in_features * module.out_features
    return None


def _module_flops(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, matmul_only: bool) -> int:
    """Forward FLOPs of one module for the hooked (1-sample) call."""
    macs = _macs(module, out) if isinstance(module, (nn.Conv2d, nn.Linear)) or matmul_only else None
    if macs is not None:
        bias = 0 if matmul_only or getattr(module, "bias", None) is None else out.numel()
        return 2 * macs + bias
    if matmul_only:
        return 0
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return 2 * out.numel()  # folded to y = a*x + b per element
    if isinstance(module, _ELEMENTWISE):
        return out.numel()
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                           nn.AdaptiveMaxPool2d)):
        return inp.numel()  # every input element is read once by some window
    return 0


def model_flops(model: nn.Module, in_shape: tuple[int, ...], matmul_only: bool = False) -> int:
    """Forward FLOPs per sample, measured once with forward hooks on a 1-sample input.

    Counted: 2*MACs (+ bias adds) of ``Conv2d``/``Linear`` (subclasses included, so
    quantized layers that subclass them count), 2 per element for batch norm, 1 per
    element for activations, 1 per input element for pooling. Not counted: residual
    additions and other functional ops outside modules, and fake-quantization
    (``device_round_cost(qat_overhead=...)`` covers it). Conv/Linear dominate for
    every registry model, so the omissions are a few percent.

    Parameters
    ----------
    model : nn.Module
        Model to measure; its train/eval flags are restored afterwards.
    in_shape : tuple of int
        Input shape of one sample, ``(C, H, W)``.
    matmul_only : bool
        Count only 2*MACs of convolutions and linear layers (no bias, batch norm, activations or pooling), on
        any module that has their shape attributes (QCore's accounting).
    """
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        leaf = len(list(module.children())) == 0
        if (leaf or matmul_only) and isinstance(out, torch.Tensor):
            total += _module_flops(module, args[0], out, matmul_only)

    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        # eval: batch-1 batch norm in train mode would fail on (1, C) inputs and
        # would update running statistics; the FLOP count does not depend on it.
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *in_shape), device=device))  # (1, C, H, W)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return int(total)
