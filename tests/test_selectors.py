"""Coreset selectors: budgets, mixing, moderate, forgetting, persistence, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fleet.coreset import (
    CORESET_KEY,
    SELECTORS,
    SelectionContext,
    build_selector,
    normalize,
    select_or_reuse,
    should_reselect,
    top_k,
)
from fleet.coreset.budget import budget, class_budgets
from fleet.coreset.selectors import moderate_scores

# Crafted dataset: class 0 has 4 samples with low scores, class 1 has 6 with high ones.
Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.15, 0.05, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])


def ctx_for(
    q: nn.Module | None = None, f: nn.Module | None = None, **kw: object
) -> SelectionContext:
    args: dict[str, object] = {"epoch": 0, "total_epochs": 10, "num_classes": 2}
    args.update(kw)
    return SelectionContext(q, f, rng=np.random.default_rng(0), **args)  # type: ignore[arg-type]


class Head(nn.Module):
    """Logits = x @ I + bias, through a last nn.Linear (so features = x)."""

    def __init__(self, dim: int, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.head = nn.Linear(dim, dim)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(dim))
            self.head.bias.copy_(bias if bias is not None else torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_balanced_top_k_per_class_budgets() -> None:
    # class 0: round(0.5*4)=2 -> .2 (1), .15 (2); class 1: round(0.5*6)=3 -> 4, 5, 6
    assert top_k(SCORES, Y, 0.5, balanced=True).tolist() == [1, 2, 4, 5, 6]


def test_global_top_k_ignores_classes() -> None:
    assert top_k(SCORES, Y, 0.5, balanced=False).tolist() == [4, 5, 6, 7, 8]


def test_budget_is_the_fraction_asked_not_one_per_class() -> None:
    # total round(0.1 * 10) = 1; quotas 0.4 (class 0) and 0.6 (class 1): the one sample goes to class 1
    got = top_k(SCORES, Y, 0.1, balanced=True)
    assert got.tolist() == [4] and got.dtype == np.int64


@pytest.mark.parametrize(("counts", "fraction", "want"), [
    ([5, 3, 2], 0.5, [3, 1, 1]),          # total 5; quotas 2.5, 1.5, 1.0; the leftover unit to the .5 tie, class 0
    ([40, 30, 20, 10], 0.1, [4, 3, 2, 1]),  # exact quotas
    ([7, 7, 7], 0.1, [1, 1, 0]),          # total round(2.1) = 2; equal remainders go to the smaller class ids
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 0.1, [1] + [0] * 11),  # 12 samples at 10%: 1, not 12
    ([3], 1.0, [3]),
])
def test_class_budgets_by_largest_remainder(counts: list[int], fraction: float, want: list[int]) -> None:
    got = class_budgets(np.array(counts), fraction)
    assert got.tolist() == want
    assert int(got.sum()) == budget(sum(counts), fraction)
    assert top_k(SCORES, Y, 0.1, balanced=False).tolist() == [4]


def test_ties_break_by_lowest_index() -> None:
    assert top_k(np.ones(10), Y, 0.5, balanced=True).tolist() == [0, 1, 4, 5, 6]


def test_normalize_zscore_and_rank() -> None:
    # mean 2, std sqrt(2/3) -> (-1.2247, 0, 1.2247)
    assert normalize(np.array([1.0, 2.0, 3.0]), "zscore") == pytest.approx(
        [-1.224745, 0, 1.224745]
    )
    assert normalize(np.array([5.0, 5.0]), "zscore").tolist() == [0.0, 0.0]
    assert normalize(np.array([30.0, 10.0, 20.0]), "rank").tolist() == [1.0, 0.0, 0.5]


def test_evs_selector_selects_highest_error_per_class() -> None:
    # Prepare: logits = log p; EVS against label 0 grows as p[0] falls.
    p0 = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.7, 0.1])
    probs = torch.stack([p0, 1 - p0], 1)  # (6, 2)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    x = probs.log()
    # Execute
    out = build_selector("evs").select(x, y, 0.34, ctx_for(Head(2)), {})
    # Assert: class 0 (label 0): EVS ~ 1 - p0 -> index 1 (p0 = .2); class 1 (label 1):
    # EVS ~ p0 -> index 4 (p0 = .7). round(0.34 * 3) = 1 each.
    assert out.indices.tolist() == [1, 4]
    assert out.scoring_passes == 6
    assert out.scores is not None and out.scores[1] == pytest.approx(math.sqrt(2) * 0.8)


def _q_and_f() -> tuple[Head, Head, torch.Tensor, torch.Tensor]:
    p_q, p_f = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    return (
        Head(3),
        Head(3, bias=p_f.log() - p_q.log()),
        p_q.log().repeat(4, 1),
        torch.zeros(4, dtype=torch.long),
    )


@pytest.mark.parametrize(
    ("name", "epoch", "expected"),
    [
        # EVS = sqrt(.26) = .509902, DS = sqrt(.24) = .489898, RES = .396058
        ("acs", 0, 0.509902),
        ("acs", 10, 0.489898),
        (
            "acs",
            5,
            math.cos(math.pi / 4) * 0.509902 + (1 - math.cos(math.pi / 4)) * 0.489898,
        ),
        ("quarc", 0, 0.509902 + 0.396058),
        ("quarc", 10, 0.489898 + 0.396058),
        ("ds", 3, 0.489898),
        ("res", 3, 0.396058),
        ("evs+res", 3, 0.509902 + 0.396058),  # QuaRC Table IV's pairs: the terms added, no schedule
        ("ds+res", 3, 0.489898 + 0.396058),
    ],
)
def test_mixed_scores_by_hand(name: str, epoch: int, expected: float) -> None:
    q, f, x, y = _q_and_f()
    out = build_selector(name).select(x, y, 0.5, ctx_for(q, f, epoch=epoch), {})
    assert out.scores == pytest.approx(np.full(4, expected), abs=1e-5)
    assert out.scoring_passes == 8


def test_code_schedule_is_used_when_asked() -> None:
    q, f, x, y = _q_and_f()
    out = build_selector("acs").select(
        x, y, 0.5, ctx_for(q, f, epoch=5, schedule="code"), {}
    )
    assert out.scores == pytest.approx(
        np.full(4, 0.5 * 0.509902 + 0.5 * 0.489898), abs=1e-5
    )


def test_selection_restores_train_mode() -> None:
    q, f, x, y = _q_and_f()
    q.train()
    f.eval()
    build_selector("quarc").select(x, y, 0.5, ctx_for(q, f), {})
    assert q.training and not f.training


def test_full_and_random() -> None:
    x, y = torch.zeros(10, 1), torch.from_numpy(Y)
    full = build_selector("full").select(x, y, 0.3, ctx_for(), {})
    assert full.indices.tolist() == list(range(10)) and full.scoring_passes == 0
    rnd = build_selector("random").select(x, y, 0.5, ctx_for(), {})
    assert np.bincount(Y[rnd.indices]).tolist() == [2, 3]  # class-balanced budgets
    assert rnd.scoring_passes == 0


def test_random_kept_or_redrawn() -> None:
    x, y = torch.zeros(200, 1), torch.zeros(200, dtype=torch.long)
    ctx = ctx_for()
    kept = build_selector("random")
    first = kept.select(x, y, 0.1, ctx, {})
    again = kept.select(x, y, 0.1, ctx, first.state)
    assert again.indices.tolist() == first.indices.tolist()
    redraw = build_selector("random", redraw=True)
    a = redraw.select(x, y, 0.1, ctx, {})
    b = redraw.select(x, y, 0.1, ctx, a.state)
    assert a.indices.tolist() != b.indices.tolist()


def test_moderate_rule_on_crafted_features() -> None:
    # class 0: median (2, 0); d = 2, 1, 0, 2, 8; median d = 2 -> keep 0 and 3 (|d-2|=0)
    # class 1: median (0, 2); d = 2, sqrt(13)=3.606, 1, sqrt(72)=8.485, 0; median d = 2
    #          -> |d - 2| = 0, 1.606, 1, 6.485, 2 -> keep idx 5 (0) and 7 (1)
    feats = np.array(
        [
            [0, 0],
            [1, 0],
            [2, 0],
            [4, 0],
            [10, 0],
            [0, 0],
            [3, 4],
            [0, 1],
            [6, 8],
            [0, 2],
        ],
        dtype=np.float64,
    )
    y = np.array([0] * 5 + [1] * 5)
    scores = moderate_scores(feats, y)
    assert scores[5:] == pytest.approx(
        [0, -(math.sqrt(13) - 2), -1, -(math.sqrt(72) - 2), -2]
    )
    fp = nn.Sequential(nn.Identity(), nn.Linear(2, 2))  # features = input of the Linear
    out = build_selector("moderate").select(
        torch.tensor(feats, dtype=torch.float32),
        torch.from_numpy(y),
        0.4,
        ctx_for(None, fp),
        {},
    )
    assert out.indices.tolist() == [0, 3, 5, 7]
    assert out.scoring_passes == 10


def test_forgetting_counts_events_on_a_crafted_sequence() -> None:
    # Prepare: 6 samples; 0..3 observed for 4 epochs, 4 and 5 never.
    seq = [[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 0, 1], [0, 0, 1, 1]]
    sel = build_selector("forgetting")
    state: dict[str, np.ndarray] = {}
    # Execute
    for correct in seq:
        state = sel.observe(np.arange(4), np.array(correct, dtype=bool), state)
    state = sel.observe(np.array([2]), np.array([True]), state)  # partial record
    out = sel.select(
        torch.zeros(6, 1), torch.zeros(6, dtype=torch.long), 0.5, ctx_for(), state
    )
    # Assert: sample 0: 1->0 twice = 2; sample 2: 1->0 once, then 0->1 = 1;
    # sample 1 never learned -> max + 1 = 3; sample 3 learned, never forgotten = 0.
    assert state["forgetting-count"].tolist() == [2, 0, 1, 0]
    assert state["forgetting-learned"].tolist() == [True, False, True, True]
    assert out.scores is not None
    assert out.scores[:4].tolist() == [2.0, 3.0, 1.0, 0.0]
    assert np.all((out.scores[4:] > 0) & (out.scores[4:] < 1))  # unobserved: between
    assert out.indices.tolist() == [0, 1, 2]
    assert out.scoring_passes == 0


def test_forgetting_without_records_is_a_random_draw() -> None:
    out = build_selector("forgetting").select(
        torch.zeros(10, 1), torch.from_numpy(Y), 0.5, ctx_for(), {}
    )
    assert np.bincount(Y[out.indices]).tolist() == [2, 3]


def test_should_reselect_schedule() -> None:
    assert [should_reselect(p, 3) for p in range(7)] == [
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    with pytest.raises(ValueError):
        should_reselect(0, 0)


def test_persistence_reuses_stored_selection() -> None:
    # Prepare
    q, f, x, y = _q_and_f()
    x = x + torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    sel = build_selector("quarc")
    ctx = ctx_for(q, f)
    # Execute: participation 0 selects, 1 reuses, 2 reselects (reselect_every = 2)
    first = select_or_reuse(sel, x, y, 0.5, ctx, {}, participation=0, reselect_every=2)
    second = select_or_reuse(
        sel, x, y, 0.5, ctx, first.state, participation=1, reselect_every=2
    )
    third = select_or_reuse(
        sel, x, y, 0.5, ctx, second.state, participation=2, reselect_every=2
    )
    # Assert
    assert first.state[CORESET_KEY].tolist() == first.indices.tolist()
    assert (
        second.indices.tolist() == first.indices.tolist() and second.scoring_passes == 0
    )
    assert third.scoring_passes == 8


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_bad_fraction_raises(name: str, fraction: float) -> None:
    q, f, x, y = _q_and_f()
    with pytest.raises(ValueError, match="fraction"):
        build_selector(name).select(x, y, fraction, ctx_for(q, f), {})


def test_unknown_selector_and_context_errors() -> None:
    with pytest.raises(ValueError, match="quarc"):
        build_selector("el2n")
    with pytest.raises(ValueError, match="score_norm"):
        ctx_for(score_norm="minmax")
    with pytest.raises(ValueError, match="schedule"):
        ctx_for(schedule="cosine")
    with pytest.raises(ValueError, match="fpmodel"):
        build_selector("ds").select(
            torch.zeros(2, 3),
            torch.zeros(2, dtype=torch.long),
            0.5,
            ctx_for(Head(3)),
            {},
        )
