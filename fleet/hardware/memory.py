"""Peak training memory of one device round, estimated without running a backward pass.

The estimate adds up what a PyTorch-style training step keeps alive at the peak
(the start of backward): weights (and, for QAT, the float latent weights next to the
integer codes), gradients, optimizer state, the activations autograd saved for
backward, quantizer state, the frozen teacher with its largest live activation, and
the input batch. Activation sizes come from one hooked batch-1 forward per
architecture (``profile_activations``); everything else is arithmetic, so checking a
device against its budget costs no forward pass. ``tests/test_memory.py`` compares
the estimate with memory measured through ``torch.autograd.graph.saved_tensors_hooks``.

Units: bytes; budgets in MB are MiB (2**20 bytes).

Examples
--------
>>> from fleet.model.architectures import build_model
>>> m = build_model("mlp", in_shape=(1, 8, 8), num_classes=10)
>>> est = estimate_peak_memory(m, (1, 8, 8), batch_size=4)
>>> est.parts["optimizer"] == est.parts["gradients"]  # SGD momentum: one copy
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "MEMORY_POLICIES",
    "ActivationProfile",
    "MemoryEstimate",
    "apply_memory_policy",
    "estimate_peak_memory",
    "fit_batch_size",
    "profile_activations",
]

MEMORY_POLICIES = ("fail", "shrink-batch")  # the values of devices.memory-policy
_FP32 = 4
_MIB = 2**20
_QUANTIZED = (nn.Conv2d, nn.Linear)
# What autograd saves for each module type: "in" = the input, "out" = the output,
# "none" = nothing batch-sized. Modules not listed save their output (a conservative
# guess for e.g. quantizer modules, which save an input-sized tensor).
_SAVES: tuple[tuple[type[nn.Module] | tuple[type[nn.Module], ...], str], ...] = (
    ((nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm), "in"),
    ((nn.ReLU, nn.Sigmoid, nn.Tanh), "out"),  # backward uses the result
    ((nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish,
      nn.Hardsigmoid, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d), "in"),
    ((nn.Flatten, nn.Identity, nn.Dropout), "none"),  # views / identity / 1-byte mask
)


def _saves(module: nn.Module) -> str:
    for types, what in _SAVES:
        if isinstance(module, types):
            return what
    return "out"


@dataclass(frozen=True)
class ActivationProfile:
    """Per-sample activation sizes of one architecture and input shape, in bytes.

    Parameters
    ----------
    saved : int
        Unique tensors autograd keeps for backward (model input excluded).
    largest_output : int
        Largest single module output (the live set of a no-grad forward).
    quant_inputs : int
        Inputs of Conv2d/Linear layers: the fake-quantized copies QAT saves in addition.
    input : int
        One input sample.
    """

    saved: int
    largest_output: int
    quant_inputs: int
    input: int


def profile_activations(model: nn.Module, in_shape: tuple[int, ...]) -> ActivationProfile:
    """Measure ``ActivationProfile`` with forward hooks on one batch-1 forward.

    Saved tensors are deduplicated by storage, so a ReLU output that the next conv
    also saves counts once; max-pool adds its int64 indices and in-place
    hardtanh/ReLU6 the clone PyTorch saves for it.
    """
    seen: set[int] = set()
    keep: list[torch.Tensor] = []  # keeps storages alive so data_ptr is not reused
    totals = {"saved": 0, "largest": 0, "quant": 0}

    def add_saved(t: torch.Tensor) -> None:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            keep.append(t)
            totals["saved"] += t.numel() * t.element_size()

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if any(True for _ in module.children()) or not isinstance(out, torch.Tensor):
            return
        inp = args[0]
        totals["largest"] = max(totals["largest"], out.numel() * out.element_size())
        what = _saves(module)
        if what == "in":
            add_saved(inp)
        elif what == "out":
            add_saved(out)
        if isinstance(module, nn.MaxPool2d):
            totals["saved"] += out.numel() * 8  # int64 argmax indices
        if isinstance(module, nn.Hardtanh) and getattr(module, "inplace", False):
            # in-place hardtanh_ (ReLU6 in torchvision) saves an extra clone
            totals["saved"] += out.numel() * out.element_size()
        if isinstance(module, _QUANTIZED):
            totals["quant"] += inp.numel() * inp.element_size()

    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros((1, *in_shape), device=device)  # (1, C, H, W)
    seen.add(x.untyped_storage().data_ptr())  # the input batch is its own part
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model.eval()  # shapes are mode-independent; eval avoids batch-1 BN errors
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return ActivationProfile(totals["saved"], totals["largest"], totals["quant"],
                             x.numel() * x.element_size())


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory.

    Parameters
    ----------
    total_bytes : int
        Sum of ``parts``.
    parts : dict of str to int
        Bytes per component: weights, latent_weights, gradients, optimizer,
        activations, quantizer_state, teacher_weights, teacher_activations, input.
    """

    total_bytes: int
    parts: dict[str, int]

    @property
    def total_mb(self) -> float:
        """Total in MiB."""
        return self.total_bytes / _MIB


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def estimate_peak_memory(
    model: nn.Module,
    in_shape: tuple[int, ...],
    batch_size: int,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    teacher: nn.Module | None = None,
    quantized: bool = False,
    *,
    bits: int = 8,
    activations: ActivationProfile | None = None,
    teacher_activations: ActivationProfile | None = None,
) -> MemoryEstimate:
    """Estimate the peak memory of one training step.

    Parameters
    ----------
    model : nn.Module
        The float model being trained (or its quantized copy).
    in_shape : tuple of int
        One sample's shape, ``(C, H, W)``.
    batch_size : int
        Training batch size.
    optimizer : str
        ``"sgd"`` (one momentum copy, none if ``momentum == 0``) or ``"adam"`` (two
        moment copies) (default: "sgd").
    momentum : float
        SGD momentum (default: 0.9).
    teacher : nn.Module, optional
        Frozen FP teacher run forward-only on the same batch (default: None).
    quantized : bool
        QAT: Conv2d/Linear weights are held as integer codes plus fp32 latent
        weights, with per-channel scales, a fake-quantized weight copy and a
        fake-quantized input copy saved per layer (default: False).
    bits : int
        Weight bit-width for the codes; codes take ``ceil(bits/8)`` bytes each,
        unpacked, as training runtimes store them (default: 8).
    activations, teacher_activations : ActivationProfile, optional
        Cached ``profile_activations`` results; measured here when omitted.
    """
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"unknown optimizer '{optimizer}'; valid: adam, sgd")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    acts = activations or profile_activations(model, in_shape)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    qlayers = [m for m in model.modules() if isinstance(m, _QUANTIZED)]
    q_params = sum(m.weight.numel() for m in qlayers)
    parts = dict.fromkeys(
        ("weights", "latent_weights", "gradients", "optimizer", "activations",
         "quantizer_state", "teacher_weights", "teacher_activations", "input"), 0)
    parts["weights"] = _state_bytes(model)
    parts["activations"] = acts.saved * batch_size
    if quantized:
        # the latent fp32 copy stays; the deployed weight is an unpacked int code
        parts["weights"] -= q_params * _FP32 - q_params * math.ceil(bits / 8)
        parts["latent_weights"] = q_params * _FP32
        out_channels = sum(
            m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in qlayers)
        # per-channel weight scale + one activation scale per layer + the
        # fake-quantized weight the layer saves for backward
        parts["quantizer_state"] = _FP32 * (out_channels + len(qlayers) + q_params)
        parts["activations"] += acts.quant_inputs * batch_size
    parts["gradients"] = trainable * _FP32
    copies = 2 if optimizer == "adam" else (1 if momentum != 0 else 0)
    parts["optimizer"] = copies * trainable * _FP32
    if teacher is not None:
        t_acts = teacher_activations or profile_activations(teacher, in_shape)
        parts["teacher_weights"] = _state_bytes(teacher)
        parts["teacher_activations"] = t_acts.largest_output * batch_size
    parts["input"] = acts.input * batch_size
    return MemoryEstimate(sum(parts.values()), parts)


def fit_batch_size(
    model: nn.Module,
    in_shape: tuple[int, ...],
    batch_size: int,
    budget_mb: float,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    teacher: nn.Module | None = None,
    quantized: bool = False,
    *,
    bits: int = 8,
    activations: ActivationProfile | None = None,
    teacher_activations: ActivationProfile | None = None,
) -> int | None:
    """Largest batch size ``<= batch_size`` whose estimate fits ``budget_mb`` MiB.

    Returns None when even batch 1 does not fit. Other parameters as in
    ``estimate_peak_memory``; activations are profiled once and reused.
    """
    acts = activations or profile_activations(model, in_shape)
    t_acts = teacher_activations
    if teacher is not None and t_acts is None:
        t_acts = profile_activations(teacher, in_shape)
    budget = budget_mb * _MIB

    def fits(b: int) -> bool:
        est = estimate_peak_memory(model, in_shape, b, optimizer, momentum, teacher,
                                   quantized, bits=bits, activations=acts,
                                   teacher_activations=t_acts)
        return est.total_bytes <= budget

    if batch_size < 1 or not fits(1):
        return None
    lo, hi = 1, batch_size  # fits(lo) holds; memory grows with the batch
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def apply_memory_policy(fitted: int | None, requested: int, policy: str) -> tuple[str, int]:
    """Turn ``fit_batch_size``'s answer into ``(status, batch_size)``.

    ``"shrink-batch"`` trains with the largest batch that fits; ``"fail"`` refuses
    any batch smaller than requested. Status is ``"ok"`` or ``"oom"`` (batch 0).
    """
    if policy not in MEMORY_POLICIES:
        raise ValueError(f"unknown memory policy '{policy}'; valid: {', '.join(MEMORY_POLICIES)}")
    if fitted is None or (policy == "fail" and fitted < requested):
        return "oom", 0
    return "ok", fitted
