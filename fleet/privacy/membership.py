"""Membership inference against a trained classifier: the measured leakage of a model's training set.

Two attacks, as pure functions of a model (an ``nn.Module`` returning logits) and tensors:

- the loss-threshold attack (Yeom et al. 2018, "Privacy Risk in Machine Learning"): a sample the model
  trained on tends to have a lower loss, so the score is ``-loss``;
- offline LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles"): shadow models
  trained on the attacker's own data (which holds none of the targets) give, for each target, samples of the
  logit-scaled confidence ``phi`` *out* of training; a target whose ``phi`` under the attacked model is far
  above its out-distribution is called a member.

Both are scored with :func:`roc_auc` and :func:`tpr_at_fpr` (the paper's "TPR at 1% FPR", which looks at the
few samples an attacker can name with confidence rather than at the average case).

Examples
--------
>>> roc_auc(np.array([0.9, 0.8, 0.1]), np.array([True, False, False]))
1.0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttackResult",
    "lira_offline_attack",
    "loss_threshold_attack",
    "membership_inference",
    "per_sample_logit_confidence",
    "per_sample_loss",
    "roc_auc",
    "tpr_at_fpr",
    "train_shadows",
]

Pair = tuple[Tensor, Tensor]  # (inputs (N, C, H, W) float, labels (N,) int64)

_MIN_STD = 1e-6  # a per-example spread below this is "tiny": the global spread is used instead
_PER_EXAMPLE_MIN_SHADOWS = 8  # below this many shadows, LiRA uses the fixed (global) variance


# --------------------------------------------------------------------------- metrics


def _checked(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as float64 and ``is_member`` as bool, both 1-D and of one length; NaN scores refused."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    m = np.asarray(is_member).astype(bool).ravel()
    if s.shape != m.shape:
        raise ValueError(f"scores and is_member differ in length: {s.shape[0]} != {m.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    return s, m


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks (O(n log n))."""
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    first = np.r_[True, sx[1:] != sx[:-1]]  # start of each run of equal values
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], sx.size]  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(sx.size, dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(first) - 1]
    return ranks


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve, by the Mann-Whitney U statistic (ties count one half).

    Parameters
    ----------
    scores : np.ndarray
        One score per sample; higher means "more likely a member".
    is_member : np.ndarray
        Whether each sample is a member (bool or 0/1).

    Returns
    -------
    float
        The probability that a random member outscores a random non-member; NaN if either group is empty.
    """
    s, m = _checked(scores, is_member)
    n1, n0 = int(m.sum()), int((~m).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    u = _average_ranks(s)[m].sum() - n1 * (n1 + 1) / 2.0
    return float(u / (n1 * n0))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float = 0.01) -> float:
    """The largest true-positive rate over thresholds whose false-positive rate is at most ``fpr``.

    A threshold ``t`` calls every sample with ``score >= t`` a member, so samples of equal score are always
    called together (a tie between a member and a non-member is not split in the attacker's favour). The
    threshold above every score (TPR 0, FPR 0) is always allowed.

    Parameters
    ----------
    scores, is_member : np.ndarray
        As for :func:`roc_auc`.
    fpr : float
        The largest false-positive rate allowed (0.01 is the LiRA paper's "TPR at 1% FPR").

    Returns
    -------
    float
        The TPR; NaN if either group is empty.
    """
    s, m = _checked(scores, is_member)
    n1, n0 = int(m.sum()), int((~m).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, m = s[order], m[order]
    last = np.r_[s[1:] != s[:-1], True]  # the end of each run of equal scores: one threshold per run
    tp, fp = np.cumsum(m)[last], np.cumsum(~m)[last]
    allowed = fp <= np.floor(fpr * n0 + 1e-9)  # an integer bound: no float trouble at fp / n0 == fpr
    return float(tp[allowed].max() / n1) if allowed.any() else 0.0


@dataclass(frozen=True)
class AttackResult:
    """One attack's outcome: its name, AUC, TPR at 1% FPR, and how many members and non-members it scored."""

    name: str
    auc: float
    tpr_at_1pct_fpr: float
    members: int
    non_members: int

    def to_dict(self) -> dict[str, str | float | int]:
        """Plain Python values (JSON-ready)."""
        return {"name": self.name, "auc": float(self.auc), "tpr_at_1pct_fpr": float(self.tpr_at_1pct_fpr),
                "members": int(self.members), "non_members": int(self.non_members)}


def _result(name: str, member_scores: np.ndarray, non_member_scores: np.ndarray) -> AttackResult:
    scores = np.concatenate([member_scores, non_member_scores])
    is_member = np.r_[np.ones(member_scores.size, bool), np.zeros(non_member_scores.size, bool)]
    return AttackResult(name, roc_auc(scores, is_member), tpr_at_fpr(scores, is_member, 0.01),
                        int(member_scores.size), int(non_member_scores.size))


# --------------------------------------------------------------------------- per-sample statistics


def _logits(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    """The model's logits for ``x`` in eval mode without gradients, on the CPU; the training flag restored."""
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    try:
        with torch.no_grad():
            out = [model(x[i:i + batch_size].to(device)).cpu() for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def per_sample_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> np.ndarray:
    """Cross-entropy of each sample (shape ``(N,)``, float64), in eval mode and without gradients."""
    logits = _logits(model, x, batch_size).double()
    return F.cross_entropy(logits, y.long(), reduction="none").numpy()


def per_sample_logit_confidence(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> np.ndarray:
    """LiRA's statistic ``phi = log(p_y) - log(1 - p_y)`` per sample (shape ``(N,)``, float64).

    Computed from the logits ``z`` without forming ``p``: ``phi = z_y - logsumexp_{c != y} z_c``, which stays
    finite where ``p_y`` rounds to 1 (a memorised sample).
    """
    logits = _logits(model, x, batch_size).double()
    true = logits.gather(1, y.long().view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.long().view(-1, 1), float("-inf"))
    return (true - torch.logsumexp(others, dim=1)).numpy()


# --------------------------------------------------------------------------- attacks


def loss_threshold_attack(model: nn.Module, members: Pair, non_members: Pair) -> AttackResult:
    """Yeom et al. (2018): the score of a sample is minus its loss under the attacked model."""
    return _result("loss-threshold", -per_sample_loss(model, *members), -per_sample_loss(model, *non_members))


def _out_spread(phi_out: np.ndarray) -> np.ndarray:
    """The per-target standard deviation of the shadows' ``phi`` (rows shadows, columns targets).

    With fewer than 8 shadows, every target gets the global spread of all shadow values (the paper's "fixed
    variance", recommended there for few shadows); with more, a target whose own spread is tiny gets it too.
    """
    global_std = max(float(np.std(phi_out)), _MIN_STD)
    if phi_out.shape[0] < _PER_EXAMPLE_MIN_SHADOWS:
        return np.full(phi_out.shape[1], global_std)
    std = np.std(phi_out, axis=0)
    return np.where(std < _MIN_STD, global_std, std)


def lira_offline_attack(model: nn.Module, shadows: list[nn.Module], members: Pair, non_members: Pair) -> AttackResult:
    """Offline LiRA (Carlini et al. 2022): a one-sided test of each target against its out-distribution.

    Every shadow is trained on the attacker's data, which holds none of the targets, so each shadow gives one
    *out* sample of ``phi`` (:func:`per_sample_logit_confidence`) per target. A Gaussian fitted to them (mean
    ``mu_out``, spread ``sigma_out``, see :func:`_out_spread`) scores the target by
    ``(phi_target - mu_out) / sigma_out``: the higher, the less likely the attacked model did not train on it.

    Parameters
    ----------
    model : nn.Module
        The attacked model.
    shadows : list[nn.Module]
        At least one shadow model (:func:`train_shadows`).
    members, non_members : tuple[Tensor, Tensor]
        The targets, ``(x, y)`` each.

    Returns
    -------
    AttackResult
        Named ``"lira-offline"``.
    """
    if not shadows:
        raise ValueError("offline LiRA needs at least one shadow model")
    x = torch.cat([members[0], non_members[0]])
    y = torch.cat([members[1], non_members[1]])
    phi_out = np.stack([per_sample_logit_confidence(s, x, y) for s in shadows])  # (shadows, targets)
    score = (per_sample_logit_confidence(model, x, y) - phi_out.mean(axis=0)) / _out_spread(phi_out)
    n = members[0].shape[0]
    return _result("lira-offline", score[:n], score[n:])


# --------------------------------------------------------------------------- shadows and the whole evaluation


def _train_one(make_model: Callable[[], nn.Module], x: Tensor, y: Tensor, g: torch.Generator,
               epochs: int, lr: float, batch_size: int) -> nn.Module:
    """One shadow on a random half of ``(x, y)``; every random draw comes from ``g`` or a seed drawn from it.

    The global RNG is forked, so the shadow's initialisation (and any dropout) is seeded without changing
    the caller's global random state.
    """
    half = torch.randperm(x.shape[0], generator=g)[: x.shape[0] // 2]
    xs, ys = x[half], y[half].long()
    init_seed = int(torch.randint(0, 2**62, (1,), generator=g))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = make_model()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(xs.shape[0], generator=g)
            for i in range(0, xs.shape[0], batch_size):
                idx = order[i:i + batch_size]
                opt.zero_grad()
                F.cross_entropy(model(xs[idx]), ys[idx]).backward()
                opt.step()
    return model.eval()


def train_shadows(make_model: Callable[[], nn.Module], x: Tensor, y: Tensor, n_shadows: int, epochs: int,
                  lr: float, batch_size: int, seed: int) -> list[nn.Module]:
    """Shadow models for offline LiRA, each trained with Adam and cross-entropy on a random half of the
    attacker's public data ``(x, y)``.

    Deterministic for a ``seed``: the halves, the shuffles and the initialisations all come from one
    ``torch.Generator`` seeded with it; the global random state is left as it was.

    Returns
    -------
    list[nn.Module]
        ``n_shadows`` models, in eval mode.
    """
    if x.shape[0] < 2:
        raise ValueError(f"shadows need at least 2 attacker samples, got {x.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    return [_train_one(make_model, x, y, g, epochs, lr, batch_size) for _ in range(n_shadows)]


def _subsample(pair: Pair, k: int, g: torch.Generator) -> Pair:
    idx = torch.randperm(pair[0].shape[0], generator=g)[:k]
    return pair[0][idx], pair[1][idx]


def membership_inference(model: nn.Module, make_model: Callable[[], nn.Module], members: Pair, non_members: Pair,
                         attacker_data: Pair, *, n_shadows: int = 4, epochs: int = 10, lr: float = 1e-3,
                         batch_size: int = 64, seed: int = 0, max_targets: int = 2000) -> dict[str, dict]:
    """Both attacks on balanced targets: the same number (at most ``max_targets``) of members and non-members.

    Parameters
    ----------
    model : nn.Module
        The attacked model.
    make_model : Callable[[], nn.Module]
        A fresh, untrained model of the attacked architecture (for the shadows).
    members, non_members : tuple[Tensor, Tensor]
        Samples the model trained on, and samples it did not; subsampled with ``seed`` to one count.
    attacker_data : tuple[Tensor, Tensor]
        The attacker's public data, disjoint from every target; with fewer than 2 samples LiRA is skipped.
    n_shadows, epochs, lr, batch_size, seed
        The shadows' training (:func:`train_shadows`); ``seed`` also draws the targets.
    max_targets : int
        The most members (and non-members) scored.

    Returns
    -------
    dict[str, dict]
        ``{"loss-threshold": AttackResult.to_dict(), "lira-offline": ...}``; LiRA skipped is
        ``{"skipped": "no attacker data"}``.
    """
    k = min(members[0].shape[0], non_members[0].shape[0], max_targets)
    if k == 0:
        raise ValueError("membership inference needs at least one member and one non-member")
    g = torch.Generator().manual_seed(seed)
    members, non_members = _subsample(members, k, g), _subsample(non_members, k, g)
    out: dict[str, dict] = {"loss-threshold": loss_threshold_attack(model, members, non_members).to_dict()}
    if attacker_data[0].shape[0] < 2:
        out["lira-offline"] = {"skipped": "no attacker data"}
        return out
    shadows = train_shadows(make_model, *attacker_data, n_shadows=n_shadows, epochs=epochs, lr=lr,
                            batch_size=batch_size, seed=seed)
    out["lira-offline"] = lira_offline_attack(model, shadows, members, non_members).to_dict()
    return out
