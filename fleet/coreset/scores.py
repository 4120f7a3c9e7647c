"""Per-sample selection scores (ACS's EVS and DS, QuaRC's RES) and the scoring pass.

All scores are computed per sample on class probabilities ``p = softmax(logits)``
(docs/methods.md (ACS, QuaRC)). Higher score = more worth training on.

``score_pass`` runs the current quantized model and the frozen FP reference over a
device's local data once, in eval mode and without gradients, as ACS's selection
does, and returns logits, the three scores and (optionally) FP penultimate features.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ScorePass", "ds", "evs", "res", "res_from_logits", "score_pass", "FP_MEMO_BYTES"]

#: Bytes of float-reference outputs this process keeps (least recently used dropped first)
FP_MEMO_BYTES = 256 * 2**20
_FP_MEMO: OrderedDict[Hashable, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
_MEMO_BYTES = [0]  # bytes held in _FP_MEMO
_MEMO_LOCK = threading.Lock()  # the ClientApp may run devices in threads of one process


def evs(p_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Error vector score ``||p_q - onehot(y)||_2`` (ACS; EL2N on the live Q model).

    Parameters
    ----------
    p_q : Tensor
        Quantized-model probabilities, shape ``(N, C)``.
    y : Tensor
        Integer labels, shape ``(N,)``.

    Examples
    --------
    >>> p = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    >>> evs(p, torch.tensor([0, 0]))  # sqrt(0.25 + 0.25), 0
    tensor([0.7071, 0.0000])
    """
    onehot = F.one_hot(y.long(), num_classes=p_q.shape[1]).to(p_q.dtype)  # (N, C)
    out: torch.Tensor = torch.linalg.vector_norm(p_q - onehot, ord=2, dim=1)  # (N,)
    return out


def ds(p_q: torch.Tensor, p_f: torch.Tensor) -> torch.Tensor:
    """Disagreement score ``||p_q - p_f||_2`` between quantized and FP outputs (ACS).

    Examples
    --------
    >>> ds(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]))
    tensor([0.7071])
    """
    out: torch.Tensor = torch.linalg.vector_norm(p_q - p_f, ord=2, dim=1)  # (N,)
    return out


def res(p_q: torch.Tensor, p_f: torch.Tensor) -> torch.Tensor:
    """Relative-entropy score ``KL(p_q || p_f) = sum p_q log(p_q / p_f)`` (QuaRC Eq. 5).

    The quantized distribution is the first argument, as in the paper. Terms with
    ``p_q = 0`` contribute 0 (``xlogy`` convention); prefer ``res_from_logits``
    when logits are available, since it avoids ``log(0)`` in ``p_f``.

    Examples
    --------
    >>> p_q, p_f = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.75, 0.25]])
    >>> res(p_q, p_f)  # 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3)
    tensor([0.1438])
    >>> res(p_f, p_q)  # the other direction differs: 0.75 ln 1.5 + 0.25 ln 0.5
    tensor([0.1308])
    """
    terms: torch.Tensor = torch.special.xlogy(p_q, p_q) - torch.special.xlogy(p_q, p_f)
    return terms.sum(1)  # (N,)


def res_from_logits(z_q: torch.Tensor, z_f: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(z_q) || softmax(z_f))`` computed stably via log-softmax.

    Examples
    --------
    >>> z_q, z_f = torch.tensor([[0.0, 0.0]]), torch.log(torch.tensor([[3.0, 1.0]]))
    >>> res_from_logits(z_q, z_f)  # same as res([.5, .5], [.75, .25])
    tensor([0.1438])
    """
    lq = F.log_softmax(z_q, dim=1)  # (N, C)
    lf = F.log_softmax(z_f, dim=1)  # (N, C)
    return (lq.exp() * (lq - lf)).sum(1)  # (N,)


class ScorePass(TypedDict, total=False):
    """Output of ``score_pass``; keys present depend on which models were run.

    ``logits_q`` / ``logits_f``: ``(N, K)``; ``evs``: ``(N,)`` (needs Q);
    ``ds`` / ``res``: ``(N,)`` (need Q and F); ``features_f``: ``(N, D)`` FP
    penultimate features; ``passes``: samples x forward passes spent.
    """

    logits_q: torch.Tensor
    logits_f: torch.Tensor
    features_f: torch.Tensor
    evs: torch.Tensor
    ds: torch.Tensor
    res: torch.Tensor
    passes: int


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear head to tap")
    return linears[-1]


def _run(
    model: nn.Module, x: torch.Tensor, batch_size: int, features: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(N, K)`` and, if asked, the input of the last Linear ``(N, D)``."""
    feats: list[torch.Tensor] = []
    handle = None
    if features:
        # The input of the classifier is the penultimate feature for every
        # registry model (MLP, CNN, ResNets, MobileNetV2 after its dropout).
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            feats.append(inputs[0].detach().flatten(1).cpu())

        handle = _last_linear(model).register_forward_pre_hook(hook)
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    was_training = model.training
    model.eval()  # BN running stats, no dropout, no LSQ init during scoring
    logits: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size].to(device)  # (B, C, H, W)
                logits.append(model(xb).float().cpu())  # (B, K)
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    z = torch.cat(logits) if logits else torch.empty(0)
    return z, (torch.cat(feats) if features and feats else None)


def score_pass(
    qmodel: nn.Module | None,
    fpmodel: nn.Module | None,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 256,
    features: bool = False,
    fp_key: Hashable | None = None,
) -> ScorePass:
    """Run Q and/or F over the device's data once and compute the scores.

    Each model is put in eval mode under ``no_grad`` and restored to its previous
    train/eval mode afterwards.

    Parameters
    ----------
    qmodel : nn.Module or None
        Current quantized model; ``None`` skips it (no ``evs``/``ds``/``res``).
    fpmodel : nn.Module or None
        Frozen FP reference; ``None`` skips it (no ``ds``/``res``/features).
    x : Tensor
        Inputs, shape ``(N, C, H, W)`` (any shape the models accept).
    y : Tensor
        Labels, shape ``(N,)``; used for ``evs``.
    batch_size : int
        Scoring batch size (default: 256).
    features : bool
        Also capture the FP model's penultimate features (default: False).
    fp_key : hashable or None
        Names (F, x) for this process: F's outputs on x are fixed (F is frozen, a device's data does not
        change), so with a key they are computed once and reused (default: None, always computed). The
        outputs are the same tensors either way; ``passes`` still counts F's pass, which the method runs.

    Returns
    -------
    ScorePass
        A dict; ``passes`` = N x number of models run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if features and fpmodel is None:
        raise ValueError("features=True needs an FP model")
    n = int(x.shape[0])
    out: ScorePass = {"passes": 0}
    if qmodel is not None:
        z_q, _ = _run(qmodel, x, batch_size, features=False)
        out["logits_q"] = z_q
        out["evs"] = evs(z_q.softmax(1), y.cpu())
        out["passes"] += n
    if fpmodel is not None:
        z_f, f = _fp_outputs(fpmodel, x, batch_size, features, fp_key)
        out["logits_f"] = z_f
        if f is not None:
            out["features_f"] = f
        out["passes"] += n
    if qmodel is not None and fpmodel is not None:
        out["ds"] = ds(out["logits_q"].softmax(1), z_f.softmax(1))
        out["res"] = res_from_logits(out["logits_q"], z_f)
    return out


def _fp_outputs(fpmodel: nn.Module, x: torch.Tensor, batch_size: int, features: bool,
                key: Hashable | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """F's logits (and features) on x, from the process's memo when ``key`` names them (see score_pass)."""
    if key is None:
        return _run(fpmodel, x, batch_size, features=features)
    full_key = (key, batch_size, features, tuple(x.shape))
    with _MEMO_LOCK:
        hit = _FP_MEMO.get(full_key)
        if hit is not None:
            _FP_MEMO.move_to_end(full_key)
            return hit
    out = _run(fpmodel, x, batch_size, features=features)
    with _MEMO_LOCK:
        if full_key not in _FP_MEMO:
            _FP_MEMO[full_key] = out
            _MEMO_BYTES[0] += _nbytes(out)
        while len(_FP_MEMO) > 1 and _MEMO_BYTES[0] > FP_MEMO_BYTES:
            _MEMO_BYTES[0] -= _nbytes(_FP_MEMO.popitem(last=False)[1])
    return out


def _nbytes(v: tuple[torch.Tensor, torch.Tensor | None]) -> int:
    return sum(t.numel() * t.element_size() for t in v if t is not None)


def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's logits ``(N, K)`` on ``x``, in eval mode under ``no_grad`` (its mode restored)."""
    return _run(model, x, batch_size, False)[0]
