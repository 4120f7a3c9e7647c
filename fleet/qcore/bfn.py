"""Bit-flipping networks (BFNs): predict a per-weight code step in {-1, 0, +1} from activations.

docs/methods.md (The bit-flipping network). The released ``Flipping`` net maps one layer's inputs on the
whole QCore to a tensor shaped like the layer's weight; at use time the output is
rounded and clamped to {-1, 0, +1}. Its training path is broken as released, so we
follow the stated intent: *learn the sign of the code change that back-prop
calibration makes*, from the layer's inputs on the core (see ``docs/qcore.md``).

Our architecture (one BFN per quantized layer; the paper shares one per kernel size
among equal-shaped 32->32 convs, our layers all differ in shape):

1. per input unit u (a Linear input feature or a Conv2d input channel), pool the
   core's inputs into ``[mean, std, mean - ref_mean, std - ref_std]`` (4 numbers),
   where ``ref_*`` are the same statistics on the QCore at deployment. Pooling over
   the core makes the net independent of the core's order and size (the released
   Conv1d over the core axis is tied to ``core_size`` and to sample order).
2. a shared MLP ``4 -> hidden -> O * k`` per unit (``k`` = kernel area, 1 for Linear)
   gives that unit's column of the weight, reshaped to the weight's shape. This
   mirrors ``Flipping``'s per-input-channel Conv1d + Linear-to-kernel layout.
3. two learned scalars mix in per-weight terms: the code's drift since deployment
   ``(codes - codes_ref) / 2^(b-1)`` and the code itself ``codes / 2^(b-1)``, so the
   net can learn to stop pushing a code BP would not move further.

Examples
--------
>>> from fleet.qcore.quant import CodeLinear
>>> layer = CodeLinear(torch.randn(3, 5), None, bits=4, act_bits=None)
>>> bfn = build_bfn(layer)
>>> bfn.delta(torch.randn(20, 5), layer.codes).shape
torch.Size([3, 5])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fleet.qcore.quant import CodeConv2d, CodeLinear, qcore_layers

__all__ = ["N_FEATURES", "BFN", "BFN_KINDS", "build_bfn", "capture_inputs", "BFNSet", "fit_bfns"]

N_FEATURES = 4


class BFN(nn.Module):
    """Bit-flipping network for one quantized layer (see module docstring).

    Parameters
    ----------
    weight_shape : tuple of int
        Shape of the layer's weight ``(O, U, *kernel)``.
    bits : int
        The layer's bit-width (normalises the code inputs).
    reduce_dims : tuple of int
        Input dims pooled per unit: ``(0,)`` for ``(N, U)`` inputs, ``(0, 2, 3)`` for
        ``(N, U, H, W)``.
    hidden : int
        Hidden width of the per-unit MLP (default: 32).
    """

    # buffers registered in __init__
    ref_mean: torch.Tensor
    ref_std: torch.Tensor
    ref_codes: torch.Tensor

    def __init__(self, weight_shape: tuple[int, ...], bits: int, reduce_dims: tuple[int, ...],
                 hidden: int = 32) -> None:
        super().__init__()
        self.weight_shape = tuple(weight_shape)
        self.out, self.units = weight_shape[0], weight_shape[1]
        self.kernel = weight_shape[2:]
        self.k = int(torch.tensor(self.kernel).prod()) if self.kernel else 1
        self.reduce_dims = reduce_dims
        self.code_norm = float(2 ** (bits - 1))
        self.hidden = hidden
        self.net = nn.Sequential(
            nn.Linear(N_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, self.out * self.k)
        )
        self.mix = nn.Parameter(torch.zeros(2))
        self.register_buffer("ref_mean", torch.zeros(self.units))
        self.register_buffer("ref_std", torch.zeros(self.units))
        self.register_buffer("ref_codes", torch.zeros(weight_shape, dtype=torch.int8))

    def _stats(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = a.detach().float()
        return a.mean(dim=self.reduce_dims), a.std(dim=self.reduce_dims, unbiased=False)  # (U,)

    @torch.no_grad()
    def set_reference(self, a: torch.Tensor, codes: torch.Tensor) -> None:
        """Store the deployment-time input statistics and codes."""
        self.ref_mean, self.ref_std = self._stats(a)
        self.ref_codes.copy_(codes)

    def features(self, a: torch.Tensor) -> torch.Tensor:
        """Per-unit features ``(U, 4)`` of the layer inputs ``a`` on the core."""
        mean, std = self._stats(a)
        return torch.stack([mean, std, mean - self.ref_mean, std - self.ref_std], dim=1)

    def forward(self, feats: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Real-valued step ``(..., O, U, *kernel)`` from features ``(..., U, 4)`` and codes."""
        lead = feats.shape[:-2]  # optional batch of recorded pairs
        cols = self.net(feats).view(*lead, self.units, self.out, *self.kernel)  # (.., U, O, *k)
        cols = cols.transpose(len(lead), len(lead) + 1)  # (.., O, U, *k)
        drift = (codes.float() - self.ref_codes.float()) / self.code_norm
        return cols + self.mix[0] * drift + self.mix[1] * codes.float() / self.code_norm

    @torch.no_grad()
    def step(self, feats: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Step in {-1, 0, +1} (int8) from features: the real-valued output rounded, then clamped."""
        return self(feats, codes).round().clamp(-1, 1).to(torch.int8)

    @torch.no_grad()
    def delta(self, a: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Step in {-1, 0, +1} (int8), shaped like the weight, from the layer's inputs on the core."""
        return self.step(self.features(a), codes)

    def flops(self, a_shape: tuple[int, ...]) -> int:
        """Forward FLOPs of ``delta`` on inputs of ``a_shape`` (pooling + MLP + mix)."""
        numel = int(torch.tensor(a_shape).prod())
        pooling = 4 * numel  # sum and sum of squares, one add and one mul-add each
        mlp = 2 * self.units * (N_FEATURES * self.hidden + self.hidden * self.out * self.k)
        per_weight = 6 * self.out * self.units * self.k  # two mixes, sum, round, clamp
        return pooling + mlp + per_weight


def _linear_bfn(layer: CodeLinear, hidden: int) -> BFN:
    return BFN(tuple(layer.codes.shape), layer.bits, (0,), hidden)


def _conv2d_bfn(layer: CodeConv2d, hidden: int) -> BFN:
    if layer.groups != 1:
        raise ValueError("BFN supports Conv2d with groups=1 only")
    return BFN(tuple(layer.codes.shape), layer.bits, (0, 2, 3), hidden)


# (layer class, factory taking a layer of that class and the hidden width)
BFN_KINDS: dict[str, tuple[type[nn.Module], Callable[[Any, int], BFN]]] = {
    "linear": (CodeLinear, _linear_bfn), "conv2d": (CodeConv2d, _conv2d_bfn)}


def build_bfn(layer: nn.Module, hidden: int = 32) -> BFN:
    """BFN for a quantized layer; ValueError for layer kinds not in ``BFN_KINDS``."""
    for cls, factory in BFN_KINDS.values():
        if isinstance(layer, cls):
            return factory(layer, hidden)
    raise ValueError(f"no BFN for {type(layer).__name__}; valid kinds: {', '.join(BFN_KINDS)}")


def capture_inputs(
    model: nn.Module, x: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Forward ``x`` once; return each quantized layer's raw input and the logits."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):  # noqa: ANN202
        return lambda _m, inp: seen.__setitem__(name, inp[0].detach())

    hooks = [m.register_forward_pre_hook(keep(n)) for n, m in qcore_layers(model).items()]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen, logits


class BFNSet(nn.Module):
    """One BFN per quantized layer of a model, keyed by module name.

    Parameters
    ----------
    model : nn.Module
        A model from ``to_qcore``.
    hidden : int
        Hidden width of each BFN (default: 32).
    """

    def __init__(self, model: nn.Module, hidden: int = 32) -> None:
        super().__init__()
        self.names = list(qcore_layers(model))
        self.nets = nn.ModuleDict({self._key(n): build_bfn(m, hidden)
                                   for n, m in qcore_layers(model).items()})

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def __getitem__(self, name: str) -> BFN:
        return self.nets[self._key(name)]  # type: ignore[return-value]

    @torch.no_grad()
    def set_reference(self, model: nn.Module, x_core: torch.Tensor) -> None:
        """Record deployment statistics of ``model`` on the QCore ``x_core``."""
        model.eval()
        inputs, _ = capture_inputs(model, x_core)
        layers = qcore_layers(model)
        for name in self.names:
            self[name].set_reference(inputs[name], layers[name].codes)

    # Public name kept: it shadows nn.Module.apply(fn) with another signature, so a parent module's .apply(fn)
    # must not reach a BFNSet (none is ever a submodule).
    @torch.no_grad()
    def apply(self, model: nn.Module, x_core: torch.Tensor) -> int:  # type: ignore[override]
        """Step every layer's codes once from one forward pass on the core.

        All deltas are computed from the same pass (before any code changes), then
        applied; only integer codes change. Returns the BFNs' own FLOPs (the caller
        charges the core forward pass).
        """
        model.eval()
        inputs, _ = capture_inputs(model, x_core)
        flops = 0
        for name, layer in qcore_layers(model).items():
            layer.step_codes(self[name].delta(inputs[name], layer.codes))
            flops += self[name].flops(tuple(inputs[name].shape))
        return flops


FlipPair = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (features (U, 4), codes, target)


def fit_bfns(
    bfns: BFNSet,
    pairs: dict[str, list[FlipPair]],
    gen: torch.Generator,
    *,
    steps: int = 150,
    batch_size: int = 16,
    lr: float = 0.01,
    clip: float = 2.0,
) -> dict[str, float]:
    """Fit each BFN by MSE to the recorded code-change signs (Adam, grad-norm clip).

    Follows the code's optimiser settings (Adam lr 0.01, clip 2.0, MSE); pairs are
    drawn in mini-batches of ``batch_size`` for ``steps`` steps per layer.

    Returns
    -------
    dict
        Mean MSE over all pairs after fitting, per layer name.
    """
    losses: dict[str, float] = {}
    for name, layer_pairs in pairs.items():
        if not layer_pairs:
            continue
        net = bfns[name]
        feats, codes, target = (torch.stack(t) for t in zip(*layer_pairs))  # (P, ...)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            idx = torch.randint(len(target), (min(batch_size, len(target)),), generator=gen)
            opt.zero_grad()
            loss = torch.mean((net(feats[idx], codes[idx]) - target[idx]) ** 2)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
        with torch.no_grad():
            losses[name] = torch.mean((net(feats, codes) - target) ** 2).item()
    return losses
