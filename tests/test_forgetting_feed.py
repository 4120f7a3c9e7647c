"""The forgetting selector fed by training: train_local's per-batch hook, observe, scores and top-k."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fleet.config.schema import TrainConfig
from fleet.coreset.budget import top_k
from fleet.coreset.forgetting import COUNT, LEARNED, PREV, ForgettingSelector, forgetting_scores
from fleet.train.loop import Schedule, train_local

TC = TrainConfig(local_epochs=2, optimizer="sgd", momentum=0.0, kd=False)


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randint(0, 3, (n,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 3)


# --- the hook ----------------------------------------------------------------------------------


def test_hook_sees_every_index_once_per_epoch() -> None:
    # Prepare: 23 samples, batch 10 -> batches of 10, 10, 3 per epoch
    x, y = _data(23)
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    # Execute
    res = train_local(_model(), x, y, TC, gen=torch.Generator().manual_seed(0), batch_size=10,
                      on_batch=lambda idx, ok: calls.append((idx.clone(), ok.clone())))
    # Assert
    assert res.steps == 6 and len(calls) == 6
    assert [len(i) for i, _ in calls] == [10, 10, 3, 10, 10, 3]
    for epoch in (calls[:3], calls[3:]):
        seen = torch.cat([i for i, _ in epoch])
        assert sorted(seen.tolist()) == list(range(23))
    for idx, ok in calls:
        assert ok.dtype == torch.bool and ok.shape == idx.shape


def test_hook_reports_whether_the_model_classified_each_sample_right() -> None:
    # Prepare: lr = 0 keeps the model fixed, so "correct" must be its own predictions on x
    model = _model()
    x, y = _data(23)
    with torch.no_grad():
        right = model(x).argmax(1) == y
    assert 0 < int(right.sum()) < 23  # both outcomes occur, so the check below can tell them apart
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    # Execute
    train_local(model, x, y, TC, gen=torch.Generator().manual_seed(0), batch_size=10,
                schedule=Schedule(lr=0.0), on_batch=lambda idx, ok: calls.append((idx, ok)))
    # Assert
    for idx, ok in calls:
        assert torch.equal(ok, right[idx])


def test_hook_stops_with_max_steps() -> None:
    x, y = _data(23)
    calls: list[int] = []
    res = train_local(_model(), x, y, TC, gen=torch.Generator().manual_seed(0), batch_size=10, max_steps=4,
                      on_batch=lambda idx, ok: calls.append(len(idx)))
    assert res.steps == 4 and calls == [10, 10, 3, 10]


def test_hook_feeds_observe_like_the_device_does() -> None:
    # Prepare: a fixed model (lr = 0) over 2 epochs: every sample seen twice with the same outcome
    model = _model()
    x, y = _data(23)
    with torch.no_grad():
        right = (model(x).argmax(1) == y).numpy()
    sel = ForgettingSelector()
    state: dict[str, np.ndarray] = {}

    def hook(idx: torch.Tensor, ok: torch.Tensor) -> None:
        nonlocal state
        state = sel.observe(idx.numpy(), ok.numpy(), state)

    # Execute
    train_local(model, x, y, TC, gen=torch.Generator().manual_seed(0), batch_size=10,
                schedule=Schedule(lr=0.0), on_batch=hook)
    # Assert: no outcome changed, so no forgetting events
    np.testing.assert_array_equal(state[PREV], right.astype(np.int8))
    np.testing.assert_array_equal(state[LEARNED], right)
    np.testing.assert_array_equal(state[COUNT], np.zeros(23, dtype=np.int32))


# --- observe, scores, top-k by hand ------------------------------------------------------------


def _two_observations() -> dict[str, np.ndarray]:
    sel = ForgettingSelector()
    idx = np.arange(6)
    state = sel.observe(idx, np.array([1, 1, 1, 0, 0, 1], dtype=bool), {})
    return sel.observe(idx, np.array([0, 1, 1, 0, 1, 0], dtype=bool), state)


def test_observe_counts_correct_to_wrong_transitions() -> None:
    # 0: 1 -> 0 (event); 1, 2: 1 -> 1; 3: 0 -> 0 (never learned); 4: 0 -> 1 (learned late); 5: 1 -> 0 (event)
    state = _two_observations()
    assert state[COUNT].tolist() == [1, 0, 0, 0, 0, 1]
    assert state[LEARNED].tolist() == [True, True, True, False, True, True]
    assert state[PREV].tolist() == [0, 1, 1, 0, 1, 0]


def test_scores_rank_forgotten_above_unforgettable_and_never_learned_first() -> None:
    # Prepare
    state = _two_observations()
    # Execute
    scores = forgetting_scores(state, 6, np.random.default_rng(0))
    # Assert: counts for learned samples; never-learned 3 gets max(count) + 1 = 2
    assert scores.tolist() == [1.0, 0.0, 0.0, 2.0, 0.0, 1.0]
    assert min(scores[[0, 5]]) > max(scores[[1, 2, 4]])


def test_top_k_keeps_never_learned_then_lowest_index_of_the_tie() -> None:
    # Prepare: scores [1, 0, 0, 2, 0, 1]; budget round(6 / 3) = 2
    scores = forgetting_scores(_two_observations(), 6, np.random.default_rng(0))
    # Execute
    keep = top_k(scores, np.zeros(6, dtype=np.int64), 1 / 3, balanced=False)
    # Assert: 3 (score 2), then the tie 0 / 5 at score 1 goes to the smaller index
    assert keep.tolist() == [0, 3]


def test_unobserved_samples_rank_between_forgotten_and_unforgettable() -> None:
    # Prepare: only samples 0..5 observed; 6..9 never were
    state = _two_observations()
    # Execute
    scores = forgetting_scores(state, 10, np.random.default_rng(0))
    # Assert
    unseen = scores[6:]
    assert np.all((unseen >= 0.25) & (unseen < 0.75))
    assert scores[:6].tolist() == [1.0, 0.0, 0.0, 2.0, 0.0, 1.0]
    # the draw is over all n samples, so the unseen values are that stream's entries 6..9
    np.testing.assert_array_equal(unseen, 0.25 + 0.5 * np.random.default_rng(0).random(10)[6:])
