"""Float training and round-to-nearest post-training quantization of a fake-quantized model.

QGT's own mode (``train.qgt-mode = "ptq"``, docs/methods.md (QGT), a reconstruction of
ALGORITHMS.md §3.2): the device trains in float, with the grid regulariser, and the model is
then quantized by round-to-nearest. The model keeps its quantized module tree (``QConv2d`` /
``QLinear`` with LSQ quantizers, built by surgery as in QAT), so its state keys, the codecs,
aggregation, evaluation and export are the same as in QAT; only *when* the quantizers act changes:

- :func:`float_training` turns every LSQ quantizer into the identity while a training job runs:
  the forward is the float model's, gradients reach the latent weights directly (no rounding, no
  straight-through estimator) and step sizes get none.
- :func:`round_to_nearest` then sets each weight step from the trained weights by a rule of
  :data:`fleet.quant.clipping.PTQ_STEPS` (``train.ptq-step``; default ``mse``, the step minimising the squared
  rounding error, per channel when the layer is per-channel); the eval forward is then
  ``q(w) = s * clamp(round(w / s), qmin, qmax)``, round-to-nearest of the float weights.
- :func:`calibrate_activations` sets the activation steps by the same rule, from one forward on a few
  training samples, each on its input as quantized by the layers before it (activations are not part of QGT).

Examples
--------
>>> import torch.nn.functional as F
>>> from fleet.quant.convert import quantize_model
>>> q = quantize_model(nn.Linear(4, 2), weight_bits=2, act_bits=32, keep_fp=[])
>>> with float_training(q):
...     torch.equal(q(torch.ones(1, 4)), F.linear(torch.ones(1, 4), q.weight, q.bias))
True
>>> round_to_nearest(q)
>>> w, s = q.weight.detach(), q.weight_quant.step.detach()
>>> from fleet.quant.clipping import mse_step
>>> torch.equal(s, mse_step(w, -2, 1))
True
>>> torch.equal(q.eval().weight_quant(w), s * torch.clamp(torch.round(w / s), -2, 1))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from fleet.quant.clipping import rtn_step
from fleet.quant.convert import init_quantizers, quant_layers
from fleet.quant.quantizers import LsqQuantizer

__all__ = ["CALIBRATION_SAMPLES", "has_quantizers", "float_training", "round_to_nearest",
           "calibrate_activations", "post_training_quantize"]

CALIBRATION_SAMPLES = 256  # training samples the activation steps are calibrated on (as the server's initial model)


def _quantizers(model: nn.Module) -> list[LsqQuantizer]:
    return [m for m in model.modules() if isinstance(m, LsqQuantizer)]


def has_quantizers(model: nn.Module) -> bool:
    """Whether ``model`` has any LSQ quantizer (weight or activation) to switch off and calibrate."""
    return bool(_quantizers(model))


@contextmanager
def float_training(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block every LSQ quantizer of ``model`` is the identity (``enabled = False``: a no-op).

    Each quantizer's ``fake_quant`` flag is restored on exit, also on an error: devices reuse one
    working model per thread across rounds (``fleet.artifacts.working_model``), and it must not stay float.
    """
    quantizers = _quantizers(model) if enabled else []
    saved = [q.fake_quant for q in quantizers]
    for q in quantizers:
        q.fake_quant = False
    try:
        yield
    finally:
        for q, flag in zip(quantizers, saved, strict=True):
            q.fake_quant = flag


@torch.no_grad()
def round_to_nearest(model: nn.Module, rule: str = "mse") -> None:
    """Set every LSQ weight step from its layer's current weights by ``rule`` (:func:`rtn_step`), marked initialised.

    The latent float weights are kept: the layer's forward rounds them to nearest on that grid, and the
    codecs and the export read the same weights and steps as after QAT.
    """
    for layer in quant_layers(model).values():
        wq = layer.weight_quant
        if isinstance(wq, LsqQuantizer):
            wq.step.copy_(rtn_step(wq, layer.weight, rule))
            wq.initialized.fill_(1)


@torch.no_grad()
def calibrate_activations(model: nn.Module, x: torch.Tensor, rule: str = "mse") -> None:
    """Re-set every LSQ activation step by ``rule`` from one training-mode forward on ``x`` (weights as they
    are; BatchNorm statistics restored): each quantizer sees its input as the quantized layers before it make it."""
    acts = [q for q in _quantizers(model) if not q.is_weight]
    if not acts or len(x) == 0:
        return

    def set_step(q: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        assert isinstance(q, LsqQuantizer)
        q.step.copy_(rtn_step(q, args[0], rule))
        q.initialized.fill_(1)

    for q in acts:
        q.initialized.fill_(0)
    hooks = [q.register_forward_pre_hook(set_step) for q in acts]
    try:
        init_quantizers(model, x)  # the weight quantizers are initialised: only the activation steps change
    finally:
        for h in hooks:
            h.remove()


def post_training_quantize(model: nn.Module, x: torch.Tensor, rule: str = "mse") -> None:
    """:func:`round_to_nearest`, then :func:`calibrate_activations` on ``x``, both by ``rule``."""
    round_to_nearest(model, rule)
    calibrate_activations(model, x, rule)
