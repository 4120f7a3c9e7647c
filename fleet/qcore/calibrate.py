"""On-device calibration of a QCore model per stream batch, with its FLOP cost.

Methods (``CALIBRATIONS``):

* ``bfn``: one bit-flip step of every layer's codes predicted by the BFNs from the
  core's activations (docs/methods.md (Continual calibration on a device) step 1). Forward passes only.
* ``backprop-qcore``: back-prop calibration on the QCore (§4.4: Adam, CE). Latent
  float weights with an STE move the integer codes (the released code's cache makes
  its BP train biases/BN only; we follow the intent). Biases and BatchNorm affine
  parameters train too; BatchNorm stays in eval mode so 20 samples do not overwrite
  the running statistics.
* ``backprop-random``: the same on a random core of the same size (``CORE_POLICY``).
* ``none``: nothing.

FLOPs: forward = 2 * MACs per sample of the quantized Conv2d/Linear layers (norms,
activations and quantizer arithmetic are not counted); backward = 2 * forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fleet.qcore.bfn import BFNSet, FlipPair, capture_inputs
from fleet.qcore.quant import qcore_layers

__all__ = [
    "CalibrationContext",
    "backprop_calibrate",
    "record_flip_pairs",
    "CALIBRATIONS",
    "CODE_OPTIMIZERS",
    "CORE_POLICY",
    "build_calibration",
    "code_snapshot",
    "codes_changed",
]


#: Optimisers of the latent codes (``stream.code-optimizer``), by name: ``(params, lr) -> optimizer``.
CODE_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


@dataclass(frozen=True)
class CalibrationContext:
    """Read-only settings of one calibration call.

    Parameters
    ----------
    forward_flops : int
        Forward FLOPs of the model per sample (``model_flops(model, in_shape, matmul_only=True)``).
    epochs : int
        BP epochs per stream batch (default: 10; the code uses 50 off-device).
    lr : float
        Adam learning rate of biases and norm parameters (default: 0.01, the code's).
    code_lr : float
        Learning rate of the latent codes' optimiser, in quantization steps (default: 0.01;
        the code has no such parameter because its weights never move).
    batch_size : int
        BP batch size (default: 128; a 20-sample core is one full batch).
    code_optimizer : str
        ``"adam"`` (default; the code's optimiser) or ``"sgd"`` (momentum 0.9) for the latent codes. Adam's
        first steps move every code by about ``code_lr`` whatever its gradient, so once ``code_lr * steps``
        nears half a step, almost every code rounds over at once; SGD moves a code in proportion to its gradient.
    codes_only : bool
        Train the latent codes alone, leaving biases and norm parameters as deployed (default: False). Then
        every gain BP makes is a code change, the only thing a BFN can make.
    bfns : BFNSet or None
        Trained BFNs, needed by ``bfn`` (default: None).
    """

    forward_flops: int
    epochs: int = 10
    lr: float = 0.01
    code_lr: float = 0.01
    batch_size: int = 128
    codes_only: bool = False
    bfns: BFNSet | None = None
    code_optimizer: str = "adam"

    def __post_init__(self) -> None:
        if self.code_optimizer not in CODE_OPTIMIZERS:
            raise ValueError(f"code optimizer {self.code_optimizer!r} not in {list(CODE_OPTIMIZERS)}")


def backprop_calibrate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    ctx: CalibrationContext,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> int:
    """BP calibration of a QCore model on ``(x, y)``; returns the FLOPs spent.

    ``on_step(step, layer_inputs)`` (optional) sees each step's layer inputs before
    the update, for recording BFN training pairs.
    """
    layers = qcore_layers(model)
    for layer in layers.values():
        layer.start_latent()
    model.eval()  # frozen BN statistics and activation ranges
    latents = [layer.latent for layer in layers.values() if layer.latent is not None]
    others = [] if ctx.codes_only else [p for n, p in model.named_parameters()
                                        if p.requires_grad and not n.endswith("latent")]
    opts: list[torch.optim.Optimizer] = []
    if latents:
        opts.append(CODE_OPTIMIZERS[ctx.code_optimizer](latents, ctx.code_lr))
    if others:
        opts.append(torch.optim.Adam(others, lr=ctx.lr))
    step = 0
    for _ in range(ctx.epochs):
        for i in range(0, len(y), ctx.batch_size):
            for opt in opts:
                opt.zero_grad()
            if on_step is None:
                logits = model(x[i : i + ctx.batch_size])
            else:
                inputs, logits = capture_inputs(model, x[i : i + ctx.batch_size])
                on_step(step, inputs)
            F.cross_entropy(logits, y[i : i + ctx.batch_size]).backward()
            for opt in opts:
                opt.step()
            step += 1
    for layer in layers.values():
        layer.commit_latent()
    model.zero_grad(set_to_none=True)  # codes-only leaves gradients on biases and norms it never applies
    return 3 * ctx.forward_flops * ctx.epochs * len(y)


def code_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every quantized layer's integer codes, copied."""
    return {n: layer.codes.clone() for n, layer in qcore_layers(model).items()}


def codes_changed(model: nn.Module, before: dict[str, torch.Tensor]) -> float:
    """Fraction of the model's integer codes that differ from ``before`` (a :func:`code_snapshot`)."""
    layers = qcore_layers(model)
    moved = sum(int((layers[n].codes != c).sum()) for n, c in before.items())
    return moved / max(1, sum(c.numel() for c in before.values()))


def record_flip_pairs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: CalibrationContext,
    bfns: BFNSet, every: int = 1,
) -> dict[str, list[FlipPair]]:
    """Run BP calibration and record BFN training pairs (off-device, §4.4).

    At every ``every``-th step t we keep, per layer, the BFN features of its inputs
    on the core and its current codes c_t; after calibration the target is
    ``sign(c_end - c_t)``: the direction BP still moves each code from that state.
    """
    layers = qcore_layers(model)
    snaps: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def on_step(step: int, inputs: dict[str, torch.Tensor]) -> None:
        if step % every == 0:
            feats = {n: bfns[n].features(a) for n, a in inputs.items()}
            snaps.append((feats, {n: layers[n].current_codes() for n in inputs}))

    backprop_calibrate(model, x, y, ctx, on_step)
    pairs: dict[str, list[FlipPair]] = {n: [] for n in layers}
    for feats, codes in snaps:
        for n in layers:
            target = torch.sign(layers[n].codes.float() - codes[n].float())
            pairs[n].append((feats[n], codes[n], target))
    return pairs


Calibration = Callable[[nn.Module, torch.Tensor, torch.Tensor, CalibrationContext], int]


def _calibrate_none(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    ctx: CalibrationContext) -> int:
    return 0


def _calibrate_bfn(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   ctx: CalibrationContext) -> int:
    if ctx.bfns is None:
        raise ValueError("calibration 'bfn' needs trained BFNs (CalibrationContext.bfns)")
    # Labels are not used: the BFN sees activations only.
    return ctx.forward_flops * len(x) + ctx.bfns.apply(model, x)


def _calibrate_backprop(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        ctx: CalibrationContext) -> int:
    return backprop_calibrate(model, x, y, ctx)


CALIBRATIONS: dict[str, Calibration] = {
    "bfn": _calibrate_bfn,
    "backprop-qcore": _calibrate_backprop,
    "backprop-random": _calibrate_backprop,
    "none": _calibrate_none,
}

# Which core each method calibrates on: the miss-sampled QCore (updated per batch),
# a uniformly re-sampled core of the same size, or the fixed deployment core.
CORE_POLICY: dict[str, str] = {
    "bfn": "qcore",
    "backprop-qcore": "qcore",
    "backprop-random": "random",
    "none": "fixed",
}


def build_calibration(name: str) -> Calibration:
    """Calibration function by name; ValueError lists the valid names."""
    if name not in CALIBRATIONS:
        raise ValueError(f"unknown calibration '{name}'; valid: {', '.join(CALIBRATIONS)}")
    return CALIBRATIONS[name]
