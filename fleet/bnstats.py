"""BatchNorm statistics re-estimated on data the server may use (its public split).

Averaging BatchNorm running statistics across non-IID devices gives the mean of per-device means
and the mean of per-device variances, which is not the variance of the union (the spread between
devices' means is lost), and each device's statistics were measured with its own model, not the
averaged one. Re-estimating them with the aggregated model on public data removes both errors
(``strategy.bn-stats = "public"``; docs/strategies.md).

Examples
--------
>>> import torch
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)).eval()
>>> _ = reestimate_bn(m, torch.randn(64, 2))
>>> bool(m[1].num_batches_tracked > 0), m.training
(True, False)
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["has_batchnorm", "reestimate_bn"]


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reestimate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Replace every BatchNorm's running mean/var by the exact average over ``x`` (the model's own outputs).

    Only the running statistics change (no parameter, no quantizer step); the model is returned in
    the mode it came in.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or len(x) == 0:
        return model
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in bns]
    try:
        model.eval()
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average: the exact mean over the batches seen
            bn.train()
        for s in range(0, len(x), batch_size):
            model(x[s:s + batch_size])
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        for m, mode in modes.items():
            m.training = mode
    return model
