"""QCore's quantizer: integer weight codes per output channel, sigma-clipped activations.

Follows docs/methods.md (The QCore quantizer) (the released code's ZeroQ/SQuant-derived quantizer):

* weights: per-output-channel asymmetric min-max, round to nearest, clamped to the
  signed range ``[-2^(b-1), 2^(b-1) - 1]`` with an integer zero-point. Unlike the
  released code (which caches a float tensor), the layer *stores the integer codes*
  as a buffer, so "bit flipping" can step a code by one (§4.5).
* activations (layer inputs): per tensor, range ``alpha = 12 * std(x)``, divided by
  1.25 if the input is signed, clipped to ``max|x|`` when ``b < 6``; fixed at the
  first batch.
* the first layer's input is not quantized; the last layer's input is 8-bit.

Back-prop calibration: the released code caches the quantized weights, so its BP
calibration only trains biases and norm layers. We follow the stated intent (BP
calibration changes weights): ``start_latent`` gives each layer a real-valued latent
code trained through a straight-through estimator on the *fixed* grid (scale and
zero-point do not move) and ``commit_latent`` rounds it back into integer codes.

Examples
--------
>>> lin = torch.nn.Linear(3, 2)
>>> q = CodeLinear.from_float(lin, bits=2, act_bits=None)
>>> int(q.codes.min()) >= -2 and int(q.codes.max()) <= 1
True
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fleet.quant.quantizers import round_ste
from fleet.quant.spec import check_bits, qrange

__all__ = [
    "SUPPORTED_BITS",
    "quantize_per_channel",
    "ActQuant",
    "CodeLinear",
    "CodeConv2d",
    "QUANT_LAYERS",
    "to_qcore",
    "qcore_layers",
]

SUPPORTED_BITS: tuple[int, ...] = (2, 3, 4, 5, 8)
LAST_LAYER_ACT_BITS = 8


def quantize_per_channel(
    w: torch.Tensor, bits: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max quantization per output channel (dim 0).

    Returns ``(codes, scale, zero_point)`` with ``w ~= (codes - zp) * scale``;
    codes are int8 in ``fleet.quant.spec.qrange(bits)``, scale and zero_point have shape ``(O,)``.

    Examples
    --------
    >>> codes, s, zp = quantize_per_channel(torch.tensor([[-1.0, 0.0, 2.0]]), 2)
    >>> codes.tolist(), s.tolist(), zp.tolist()
    ([[-2, -1, 1]], [1.0], [-1.0])
    """
    qmin, qmax = qrange(bits)
    flat = w.detach().reshape(w.shape[0], -1)  # (O, K)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values  # (O,)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)  # (O,)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)  # (O,)
    codes = torch.round(flat / scale[:, None]) + zero_point[:, None]  # (O, K)
    codes = codes.clamp(qmin, qmax).to(torch.int8).reshape(w.shape)
    return codes, scale, zero_point


class ActQuant(nn.Module):
    """Per-tensor activation fake-quantizer with a range fixed at the first batch.

    Parameters
    ----------
    bits : int
        Bit-width of the activation grid.
    """

    # buffers registered in __init__
    alpha: torch.Tensor
    signed: torch.Tensor
    initialized: torch.Tensor

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        # Allocated at final shape; ``initialized`` is a flag, never aggregated.
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def init_range(self, x: torch.Tensor) -> None:
        """Fix ``alpha`` from one batch (12 std, /1.25 if signed, clip at max for b<6)."""
        signed = bool((x < 0).any())
        alpha = 12.0 * x.float().std()
        if signed:
            alpha = alpha / 1.25
        if self.bits < 6:
            alpha = torch.minimum(alpha, x.abs().max())
        self.alpha.copy_(alpha.clamp_min(1e-8))
        self.signed.fill_(signed)
        self.initialized.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_range(x)
        if bool(self.signed):
            levels_lo, levels_hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
            step = self.alpha / 2 ** (self.bits - 1)
        else:
            levels_lo, levels_hi = 0, 2**self.bits - 1
            step = self.alpha / (2**self.bits - 1)
        q = round_ste(x / step).clamp(levels_lo, levels_hi)  # STE grad 1 inside range
        return q * step


class _QLayer(nn.Module):
    """Shared code/latent logic of the quantized Conv2d and Linear layers."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor
    latent: nn.Parameter | None  # registered as None in _setup; a Parameter while calibrating

    def _setup(self, weight: torch.Tensor, bias: torch.Tensor | None, bits: int,
               act_bits: int | None) -> None:
        self.bits = check_bits(bits, SUPPORTED_BITS)
        codes, scale, zp = quantize_per_channel(weight, bits)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zp)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_parameter("latent", None)
        self.act: nn.Module = nn.Identity() if act_bits is None else ActQuant(act_bits)

    def _bshape(self) -> tuple[int, ...]:
        return (-1,) + (1,) * (self.codes.dim() - 1)

    def dequantized(self) -> torch.Tensor:
        """Float weight ``(codes - zp) * scale``, shaped like the float weight."""
        zp, s = self.zero_point.view(self._bshape()), self.scale.view(self._bshape())
        return (self.codes.float() - zp) * s

    def weight(self) -> torch.Tensor:
        """Weight used in the forward pass: the codes, or the STE-quantized latent."""
        if self.latent is None:
            return self.dequantized()
        qmin, qmax = qrange(self.bits)
        zp, s = self.zero_point.view(self._bshape()), self.scale.view(self._bshape())
        # STE through both round and clamp: torch's clamp has zero gradient at its
        # bounds, and min-max puts a code on each bound per channel, which would
        # then never move, not even inwards. ``commit_latent`` clamps.
        q = round_ste(self.latent)
        q = q + (q.clamp(qmin, qmax) - q).detach()
        return (q - zp) * s

    @torch.no_grad()
    def current_codes(self) -> torch.Tensor:
        """Integer codes the layer computes with now (the rounded latent while training)."""
        if self.latent is None:
            return self.codes.clone()
        qmin, qmax = qrange(self.bits)
        return torch.round(self.latent).clamp(qmin, qmax).to(torch.int8)

    def start_latent(self) -> None:
        """Give the layer a trainable latent weight in *code units* (for BP calibration).

        The latent is a real-valued code on the fixed grid, so one unit of change is
        one quantization step at every bit-width and the optimiser's step size reads
        as "codes per step" (a float-unit latent under Adam lr 0.01 moves 2-bit codes
        little and 8-bit codes by many steps).
        """
        self.latent = nn.Parameter(self.codes.float().clone())

    @torch.no_grad()
    def commit_latent(self) -> None:
        """Round the latent weight onto the fixed grid, store it as codes, drop it."""
        if self.latent is None:
            return
        self.codes.copy_(self.current_codes())
        self.latent = None

    @torch.no_grad()
    def step_codes(self, delta: torch.Tensor) -> None:
        """Bit flip: ``codes <- clamp(codes + delta, qmin, qmax)``; nothing else changes."""
        if delta.shape != self.codes.shape:
            raise ValueError(f"delta shape {tuple(delta.shape)} != codes {tuple(self.codes.shape)}")
        qmin, qmax = qrange(self.bits)
        stepped = self.codes.to(torch.int16) + delta.round().clamp(-1, 1).to(torch.int16)
        self.codes.copy_(stepped.clamp(qmin, qmax).to(torch.int8))


class CodeLinear(_QLayer):
    """Linear layer computing with dequantized integer codes (see module docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, bits: int,
                 act_bits: int | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self._setup(weight, bias, bits, act_bits)

    @classmethod
    def from_float(cls, layer: nn.Linear, bits: int, act_bits: int | None) -> CodeLinear:
        """Quantize a float ``nn.Linear``."""
        return cls(layer.weight, layer.bias, bits, act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), self.weight(), self.bias)  # (N, O)


class CodeConv2d(_QLayer):
    """Conv2d layer computing with dequantized integer codes (see module docstring)."""

    def __init__(self, layer: nn.Conv2d, bits: int, act_bits: int | None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size = layer.kernel_size
        self.stride, self.padding = layer.stride, layer.padding
        self.dilation, self.groups = layer.dilation, layer.groups
        self._setup(layer.weight, layer.bias, bits, act_bits)

    @classmethod
    def from_float(cls, layer: nn.Conv2d, bits: int, act_bits: int | None) -> CodeConv2d:
        """Quantize a float ``nn.Conv2d``."""
        return cls(layer, bits, act_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.act(x), self.weight(), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)  # (N, O, H', W')


QUANT_LAYERS: dict[type[nn.Module], type[CodeLinear] | type[CodeConv2d]] = {
    nn.Linear: CodeLinear, nn.Conv2d: CodeConv2d}


def qcore_layers(model: nn.Module) -> dict[str, _QLayer]:
    """Quantized layers of ``model`` by module name, in forward (registration) order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _QLayer)}


def to_qcore(float_model: nn.Module, bits: int, calib_x: torch.Tensor | None = None) -> nn.Module:
    """Return a quantized copy of ``float_model`` (surgery on Conv2d and Linear layers).

    Parameters
    ----------
    float_model : nn.Module
        Float model; left untouched.
    bits : int
        Weight and activation bits, one of ``SUPPORTED_BITS``.
    calib_x : torch.Tensor, optional
        First batch ``(N, C, H, W)`` that fixes the activation ranges (default: None,
        the ranges are then fixed by the first forward pass).

    Notes
    -----
    The first quantized layer (in registration order, which is forward order for the
    registry's models) keeps a float input; the last one gets an 8-bit input.
    """
    check_bits(bits, SUPPORTED_BITS)
    model = copy.deepcopy(float_model)
    names = [n for n, m in model.named_modules() if type(m) in QUANT_LAYERS]
    if not names:
        raise ValueError(f"{type(model).__name__} has no Conv2d/Linear layer to quantize")
    for i, name in enumerate(names):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        act_bits = None if i == 0 else LAST_LAYER_ACT_BITS if i == len(names) - 1 else bits
        setattr(parent, child, QUANT_LAYERS[type(layer)].from_float(layer, bits, act_bits))
    model.eval()
    if calib_x is not None:
        with torch.no_grad():
            model(calib_x)
    return model
