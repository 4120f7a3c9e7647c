"""Training losses of QuaRC: soft-label KD and Cascaded Layer Correction (CLC).

``L_TOTAL = L_KD + beta * L_CLC`` (QuaRC Eq. 9, docs/methods.md (KD and CLC)):

- ``kd_loss``: cross-entropy against the teacher's soft labels at temperature 1,
  with no hard-label term (ACS's ``DistributionLoss``).
- ``clc_loss``: sum over the tapped layers of the batch-mean ``KL(Q_layer || F_layer)``
  between "layer output distributions". How a feature map becomes a distribution
  is not given by the paper [inferred]: ``"flat-softmax"`` (default) applies a
  softmax over each sample's flattened ``C*H*W`` map; ``"channel-softmax"``
  global-average-pools to ``(N, C)`` and applies a softmax over channels.
- ``FeatureTaps`` collects the outputs of named modules (``block_names``) with
  forward hooks; names survive quantization surgery, so one list taps Q and F.
- ``auto_beta`` picks beta from a target ratio ``beta * L_CLC = ratio * L_KD``,
  because the right beta depends on the feature-map size (docs/methods.md (Small-scale notes)).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn

from fleet.config.scenario import ScenarioConfig
from fleet.model.architectures import block_names

__all__ = ["CLC_MAPPINGS", "FeatureTaps", "auto_beta", "clc_layer_names", "clc_loss", "kd_loss"]

logger = logging.getLogger(__name__)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``-sum softmax(teacher) * log_softmax(student)`` (T = 1).

    The teacher is detached.

    Examples
    --------
    >>> kd_loss(torch.zeros(1, 2), torch.zeros(1, 2))  # -(0.5 ln .5 + 0.5 ln .5) = ln 2
    tensor(0.6931)
    """
    p_t = F.softmax(teacher_logits.detach(), dim=1)  # (N, K)
    return -(p_t * F.log_softmax(student_logits, dim=1)).sum(1).mean()


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1)  # (N, C*H*W)


def _channel(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).mean(2) if t.dim() > 2 else t  # (N, C): global average pool


CLC_MAPPINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "flat-softmax": _flat,
    "channel-softmax": _channel,
}


def clc_loss(
    q_feats: list[torch.Tensor],
    f_feats: list[torch.Tensor],
    mapping: str = "flat-softmax",
) -> torch.Tensor:
    """Cascaded layer correction: ``sum_l mean_batch KL(softmax(Q_l) || softmax(F_l))``.

    Parameters
    ----------
    q_feats, f_feats : list of Tensor
        Matching layer outputs of the quantized and FP models, each ``(N, ...)``.
        F's are detached (F is frozen).
    mapping : str
        Key of ``CLC_MAPPINGS`` (default: "flat-softmax").

    Examples
    --------
    >>> q, f = [torch.zeros(1, 2)], [torch.log(torch.tensor([[3.0, 1.0]]))]
    >>> clc_loss(q, f)  # KL([.5, .5] || [.75, .25]) = 0.5 ln(4/3)
    tensor(0.1438)
    """
    if mapping not in CLC_MAPPINGS:
        raise ValueError(
            f"unknown CLC mapping '{mapping}'; valid: {', '.join(CLC_MAPPINGS)}"
        )
    if len(q_feats) != len(f_feats):
        raise ValueError(f"{len(q_feats)} quantized vs {len(f_feats)} FP feature maps")
    to_logits = CLC_MAPPINGS[mapping]
    total = (
        q_feats[0].new_zeros((), dtype=torch.float32) if q_feats else torch.zeros(())
    )
    for q, f in zip(q_feats, f_feats, strict=True):
        lq = F.log_softmax(to_logits(q).float(), dim=1)  # (N, D)
        lf = F.log_softmax(to_logits(f.detach()).float(), dim=1)  # (N, D)
        total = total + (lq.exp() * (lq - lf)).sum(1).mean()
    return total


class FeatureTaps:
    """Context manager that records the outputs of named modules during forwards.

    ``features`` lists the latest output of each module in the order of ``names``.
    If a module runs twice in one forward, its last output is kept.

    Parameters
    ----------
    model : nn.Module
        Model to tap.
    names : list of str
        Module names as in ``model.named_modules()`` (e.g. ``block_names(model)``).

    Examples
    --------
    >>> m = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> with FeatureTaps(m, ["0"]) as taps:
    ...     _ = m(torch.zeros(4, 2))
    >>> [tuple(t.shape) for t in taps.features]
    [(4, 3)]
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules:
                valid = (
                    getattr(model, "block_names", None) or [n for n in modules if n][:8]
                )
                raise ValueError(
                    f"no module named '{name}' in {type(model).__name__}; "
                    f"valid block names include: {', '.join(valid)}"
                )
        self.model = model
        self.names = list(names)
        self._modules = [modules[n] for n in self.names]
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(_m: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self._outputs[name] = output

        return hook

    def __enter__(self) -> FeatureTaps:
        """Register the hooks."""
        for name, module in zip(self.names, self._modules, strict=True):
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove the hooks (captured outputs stay readable)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @property
    def features(self) -> list[torch.Tensor]:
        """Latest outputs in ``names`` order; raises if a module has not run yet."""
        missing = [n for n in self.names if n not in self._outputs]
        if missing:
            raise RuntimeError(f"no output captured yet for: {', '.join(missing)}")
        return [self._outputs[n] for n in self.names]

    def clear(self) -> None:
        """Forget the captured outputs (e.g. to free memory between steps)."""
        self._outputs.clear()


def auto_beta(l_kd: float, l_clc: float, ratio: float, fallback: float = 0.0) -> float:
    """Beta such that ``beta * l_clc == ratio * l_kd``.

    Parameters
    ----------
    l_kd, l_clc : float
        Loss values measured on the same batch (typically at the start of training).
    ratio : float
        Target ``beta * L_CLC / L_KD``, >= 0.
    fallback : float
        Returned (with a warning) when ``l_clc`` is 0 or not finite, e.g. when Q and F
        still agree exactly and no ratio can be met (default: 0.0).

    Examples
    --------
    >>> auto_beta(2.0, 0.01, 1.0)
    200.0
    """
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    if not l_clc > 0 or l_clc == float("inf"):
        logger.warning("auto_beta: L_CLC = %s, using fallback beta %s", l_clc, fallback)
        return fallback
    return ratio * l_kd / l_clc


def clc_layer_names(cfg: ScenarioConfig, model: nn.Module) -> list[str]:
    """``train.clc-layers`` resolved against the model's blocks ('all' = every block)."""
    text = cfg.train.clc_layers.strip()
    if text == "all":
        return block_names(model)
    return [n.strip() for n in text.split(",") if n.strip()]
