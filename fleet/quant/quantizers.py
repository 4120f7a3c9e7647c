"""LSQ fake quantizers (Esser et al. 2020, as used by ACS and QuaRC; docs/methods.md (LSQ quantizer)).

A quantizer is a small ``nn.Module`` with one job: map a float tensor onto the
symmetric grid ``s * {qmin, ..., qmax}`` (zero-point fixed at 0) in the forward
pass, and let gradients through with the straight-through estimator (STE).

Gradient convention (the LSQ paper's and ACS's ``round_pass((w / a).clamp(Qn, Qp))``):
with ``v = x / s``,

* ``d out / d x = 1`` if ``qmin <= v <= qmax`` else ``0`` (STE inside the clamp range);
* ``d out / d s = round(v) - v`` inside the range, ``qmin`` or ``qmax`` outside,
  multiplied by the LSQ gradient scale ``g = 1 / sqrt(numel * Qp)``.

Notes on the alternatives that were measured and not used:

* ``torch._fake_quantize_learnable_per_tensor_affine`` gives identical forward
  values, but masks the gradient on ``round(v)`` instead of ``v`` (so it differs
  for ``v`` in ``(qmax, qmax + 0.5)`` and ``[qmin - 0.5, qmin)``), and its
  forward + backward took 6.1 ms against 3.7 ms for :class:`_LsqFakeQuant`
  (64x16x28x28, 1 CPU thread, torch 2.14).
* The plain autograd composition ``s * clamp(round_ste(x / s), qmin, qmax)`` also
  zeroes the gradient of values that round exactly onto ``qmin``/``qmax``,
  because ``torch.clamp``'s backward excludes the boundary.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fleet.quant.spec import FLOAT_BITS, check_bits, qrange

__all__ = [
    "LsqQuantizer",
    "IdentityQuantizer",
    "round_ste",
    "grad_scale",
    "lsq_fake_quant",
]

_EPS = 1e-8  # floor for an initial step, so an all-zero first batch gives no 0/0


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (ties to even) with a straight-through (identity) gradient.

    Examples
    --------
    >>> x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    >>> y = round_ste(x)
    >>> y.detach()
    tensor([ 0.,  2., -2.])
    >>> y.sum().backward(); x.grad
    tensor([1., 1., 1.])
    """
    # round() has zero gradient almost everywhere; the STE pretends it is identity.
    return (x.round() - x).detach() + x


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Return ``x`` unchanged in the forward pass; multiply its gradient by ``scale``.

    Examples
    --------
    >>> s = torch.tensor([2.0], requires_grad=True)
    >>> y = grad_scale(s, 0.25)
    >>> y.detach()
    tensor([2.])
    >>> (3 * y).sum().backward(); s.grad
    tensor([0.7500])
    """
    scaled = x * scale
    return (x - scaled).detach() + scaled


class _LsqFakeQuant(torch.autograd.Function):
    """Fused LSQ fake quantization: fewer full-tensor passes than autograd composition."""

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, step: torch.Tensor, g: float, qmin: int, qmax: int
    ) -> torch.Tensor:
        v = x / step  # (*x.shape), step broadcasts
        q = v.clamp(qmin, qmax)
        # STE mask on the unrounded ratio: inside the range iff clamping changed nothing.
        # Written as float via out=: bool tensors are several times slower on CPU here.
        inside = torch.eq(q, v, out=torch.empty_like(v))  # 1.0 inside, 0.0 outside
        q.round_()  # codes, as float
        ds = None
        if ctx.needs_input_grad[1]:
            # d out / d s per element: round(v) - v inside, the clamped code outside.
            # Written over v (no longer needed): fewer fresh allocations per call.
            ds = torch.addcmul(q, v, inside, value=-1.0, out=v)
        out = q.mul_(step)
        ctx.save_for_backward(inside, ds)
        ctx.step_shape = step.shape
        ctx.g = g
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inside, ds = ctx.saved_tensors
        gx = grad * inside if ctx.needs_input_grad[0] else None
        gs = None
        if ctx.needs_input_grad[1]:
            if ctx.step_shape.numel() == 1:
                gs = torch.dot(grad.reshape(-1), ds.reshape(-1)).reshape(ctx.step_shape)
            else:  # sum_to_size reduces the broadcast dims of a (C, 1, ..., 1) step
                gs = (grad * ds).sum_to_size(ctx.step_shape)
            gs = gs * ctx.g
        return gx, gs, None, None, None


def lsq_fake_quant(
    x: torch.Tensor, step: torch.Tensor, g: float, qmin: int, qmax: int
) -> torch.Tensor:
    """LSQ fake quantization ``step * round(clamp(x / step, qmin, qmax))``.

    ``g`` scales the gradient reaching ``step`` (see module docstring).

    Examples
    --------
    >>> x = torch.tensor([0.26, -0.9, 3.0], requires_grad=True)
    >>> s = torch.tensor([0.5], requires_grad=True)
    >>> y = lsq_fake_quant(x, s, 1.0, -2, 1)
    >>> y.detach()
    tensor([ 0.5000, -1.0000,  0.5000])
    >>> y.sum().backward(); x.grad, s.grad
    (tensor([1., 1., 0.]), tensor([1.2800]))
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or step.requires_grad)):
        # Inference path: in-place ops, nothing saved.
        return (x / step).clamp_(qmin, qmax).round_().mul_(step)
    return _LsqFakeQuant.apply(x, step, g, qmin, qmax)


class LsqQuantizer(nn.Module):
    """Learned-step-size (LSQ) symmetric quantizer for weights or activations.

    Parameters
    ----------
    bits : int
        Bit-width, 2..8.
    signed : bool
        Signed range ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b-1]`` (default: True,
        as ACS's ``ActLSQ``, which also uses the signed range for post-ReLU inputs).
    per_channel : bool
        One step per slice along dim 0 (weights only) (default: False).
    num_channels : int
        Size of dim 0 when ``per_channel`` (default: 1).
    ndim : int
        Number of dims of the quantized tensor, to shape a per-channel step as
        ``(C, 1, ..., 1)`` (default: 4).
    is_weight : bool
        Weight (gradient scale uses the weight's numel) or activation (uses the
        features per sample) (default: True).

    Notes
    -----
    ``step`` is allocated at its final shape here and only ever written in place,
    so state dicts always have the same shapes (STYLE.md pitfall 4). The first
    forward in **training** mode while ``initialized == 0`` sets
    ``step = 2 * mean|x| / sqrt(Qp)`` (per channel when per-channel), as ACS does
    on its first training forward; eval-mode forwards never change the step.
    An initial step is floored at 1e-8 (an all-zero tensor would give 0). The
    step is not clamped afterwards: like LSQ and ACS, it is assumed to stay > 0.
    Setting ``fake_quant = False`` makes the forward the identity (float training,
    :func:`fleet.quant.ptq.float_training`); it is an attribute, not state.

    Examples
    --------
    >>> q = LsqQuantizer(bits=2)
    >>> y = q(torch.tensor([1.0, -3.0, 0.2, 2.0]))  # step = 2 * 1.55 / sqrt(1) = 3.1
    >>> q.step.detach(), y.detach()
    (tensor([3.1000]), tensor([ 0.0000, -3.1000,  0.0000,  3.1000]))
    >>> q.codes(torch.tensor([1.0, -3.0, 0.2, 2.0, -9.0]))
    tensor([ 0, -1,  0,  1, -2], dtype=torch.int32)
    """

    initialized: torch.Tensor  # buffer registered in __init__
    fake_quant: bool = True  # off: forward is the identity (a plain attribute, not state: never aggregated)

    def __init__(
        self,
        bits: int,
        signed: bool = True,
        per_channel: bool = False,
        num_channels: int = 1,
        ndim: int = 4,
        is_weight: bool = True,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.signed = bool(signed)
        self.qmin, self.qmax = qrange(bits, signed)
        if per_channel and not is_weight:
            # Dim 0 of an activation is the batch; a per-sample step makes no sense.
            raise ValueError("per_channel is only supported for weights")
        if per_channel and (num_channels < 1 or ndim < 1):
            raise ValueError(f"bad per-channel shape: num_channels={num_channels}, ndim={ndim}")
        self.per_channel = bool(per_channel)
        self.is_weight = bool(is_weight)
        shape = (num_channels,) + (1,) * (ndim - 1) if per_channel else (1,)
        self.step = nn.Parameter(torch.ones(shape))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.uint8))

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, signed={self.signed}, per_channel={self.per_channel}, "
            f"is_weight={self.is_weight}"
        )

    def grad_factor(self, x: torch.Tensor) -> float:
        """LSQ gradient scale ``1 / sqrt(numel * Qp)`` for input ``x``."""
        if self.is_weight:
            numel = x.numel() // x.shape[0] if self.per_channel else x.numel()
        else:
            numel = x[0].numel() if x.ndim > 1 else x.numel()  # features per sample
        return 1.0 / math.sqrt(numel * self.qmax)

    @torch.no_grad()
    def initial_step(self, x: torch.Tensor) -> torch.Tensor:
        """The step ``2 * mean|x| / sqrt(Qp)`` (ACS initialisation) for ``x``, shaped as ``step``; no side effect.

        Examples
        --------
        >>> LsqQuantizer(bits=4).initial_step(torch.tensor([1.0, -3.0, 2.0, -6.0]))  # 2 * 3 / sqrt(7)
        tensor([2.2678])
        """
        if self.per_channel:
            mean_abs = x.detach().abs().flatten(1).mean(1)  # (C,)
        else:
            mean_abs = x.detach().abs().mean().reshape(1)  # (1,)
        return (2.0 * mean_abs / math.sqrt(self.qmax)).clamp_min(_EPS).reshape(self.step.shape)

    @torch.no_grad()
    def init_step(self, x: torch.Tensor) -> None:
        """Set ``step`` to :meth:`initial_step` of ``x`` and mark initialised."""
        self.step.copy_(self.initial_step(x))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (initialising the step on the first training forward); the identity while
        ``fake_quant`` is off."""
        if not self.fake_quant:
            # Float training (train.qgt-mode = "ptq", fleet.quant.ptq): no rounding, hence no STE, and the step
            # is neither initialised nor trained; post-training quantization sets it afterwards.
            return x
        if self.training and not bool(self.initialized):
            self.init_step(x)
        return lsq_fake_quant(x, self.step, self.grad_factor(x), self.qmin, self.qmax)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (int32) of ``x``; ``codes(x) * step`` equals ``forward(x)`` exactly."""
        return (x / self.step).clamp_(self.qmin, self.qmax).round_().to(torch.int32)


class IdentityQuantizer(nn.Module):
    """The "float" quantizer: returns its input (``bits = 32``).

    Examples
    --------
    >>> IdentityQuantizer()(torch.tensor([0.3]))
    tensor([0.3000])
    """

    bits = FLOAT_BITS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` unchanged."""
        return x
