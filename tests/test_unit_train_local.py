"""train_local on a 2-layer MLP and a handful of seeded samples: proximal term, max_steps, determinism.

The references are plain PyTorch loops written out here (SGD without momentum, constant rate, the same
seeded batch order ``torch.randperm(n, generator=gen)`` per epoch), so a change in what one local step
means shows up as a mismatch, not as a slightly different accuracy.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from fleet.config.scenario import parse_config
from fleet.train.loop import train_local

N, IN, CLASSES = 16, 4, 3
PLAIN_SGD = {"train.optimizer": "sgd", "train.momentum": 0.0, "train.lr": 0.1, "train.lr-schedule": "constant",
             "train.batch-size": 4, "train.local-epochs": 3, "train.weight-decay": 0.0}


def _tc(**over: object):  # noqa: ANN202 - a TrainConfig
    return parse_config({**PLAIN_SGD, **over}).train


def _data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, IN, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, 8), nn.ReLU(), nn.Linear(8, CLASSES))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _plain_sgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, bs: int, epochs: int,
               seed: int, mu: float = 0.0) -> float:
    """Textbook minibatch SGD (+ mu/2 ||w - w_global||^2 when mu > 0); returns the last epoch's mean loss."""
    anchor = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        total, batches = 0.0, 0
        for s in range(0, len(y), bs):
            idx = perm[s:s + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if mu > 0:
                loss = loss + mu / 2 * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + float(loss.detach()), batches + 1
    return total / batches


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_train_local_equals_plain_sgd_with_the_proximal_term(mu: float) -> None:
    # Prepare: two identical copies of the "global" model, the same data and batch-order seed
    x, y = _data()
    ours, ref = _model(), _model()

    # Execute
    res = train_local(ours, x, y, _tc(), gen=torch.Generator().manual_seed(3), prox_mu=mu)
    ref_loss = _plain_sgd(ref, x, y, lr=0.1, bs=4, epochs=3, seed=3, mu=mu)

    # Assert: the same weights and loss as the textbook loop (mu = 0: plain training; mu > 0: mu/2, not mu)
    torch.testing.assert_close(_flat(ours), _flat(ref), rtol=0, atol=1e-6)
    assert res.loss == pytest.approx(ref_loss, rel=1e-6)
    assert res.steps == 12 and res.samples == 48  # 3 epochs x 4 batches of 4


def test_proximal_term_keeps_the_weights_closer_to_the_global_model() -> None:
    # Prepare
    x, y = _data()
    start = _model()
    w_global = _flat(start)

    # Execute: the same run (same batch order) at mu = 0, 0.5 and 5
    dist = {}
    for mu in (0.0, 0.5, 5.0):
        model = copy.deepcopy(start)
        train_local(model, x, y, _tc(), gen=torch.Generator().manual_seed(3), prox_mu=mu)
        dist[mu] = float((_flat(model) - w_global).norm())

    # Assert: the stronger the pull, the closer to the global weights (and mu = 0 moved at all)
    assert dist[0.0] > 0.0
    assert dist[0.0] > dist[0.5] > dist[5.0], dist


# n = 18, batch 4 -> batches of 4, 4, 4, 4, 2 per epoch; 2 epochs -> 10 planned steps, 36 samples
@pytest.mark.parametrize(("max_steps", "steps", "samples"), [
    (None, 10, 36), (1, 1, 4), (5, 5, 18), (6, 6, 22), (10, 10, 36), (50, 10, 36)])
def test_max_steps_stops_after_exactly_that_many_optimizer_steps(max_steps: int | None, steps: int,
                                                                  samples: int) -> None:
    # Prepare: count every optimizer.step() process-wide, and every on_batch call
    x, y = _data(n=18)
    model = _model()
    calls = {"step": 0}
    handle = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: calls.__setitem__("step", calls["step"] + 1))
    batches: list[int] = []
    try:
        # Execute
        res = train_local(model, x, y, _tc(**{"train.local-epochs": 2}), gen=torch.Generator().manual_seed(1),
                          max_steps=max_steps, on_batch=lambda idx, correct: batches.append(len(idx)))
    finally:
        handle.remove()

    # Assert
    assert calls["step"] == steps
    assert len(batches) == steps and sum(batches) == samples
    assert res.steps == steps and res.samples == samples
    assert batches == ([4, 4, 4, 4, 2] * 2)[:steps]


def test_on_batch_sees_every_sample_once_per_epoch() -> None:
    # Prepare
    x, y = _data()
    seen: list[torch.Tensor] = []

    # Execute: one epoch
    train_local(_model(), x, y, _tc(**{"train.local-epochs": 1}), gen=torch.Generator().manual_seed(5),
                on_batch=lambda idx, correct: seen.append(idx.clone()))

    # Assert: the batches partition range(N), in a shuffled order
    flat = torch.cat(seen)
    assert sorted(flat.tolist()) == list(range(N))
    assert flat.tolist() != list(range(N))


def test_same_seed_same_result_and_another_seed_differs() -> None:
    # Prepare: the scenario's default trainer (Adam, cosine schedule), batch 4
    x, y = _data()
    start = _model()
    tc = parse_config({"train.batch-size": 4, "train.local-epochs": 2}).train

    def run(seed: int) -> tuple[torch.Tensor, float, list[list[int]]]:
        model, order = copy.deepcopy(start), []
        res = train_local(model, x, y, tc, gen=torch.Generator().manual_seed(seed),
                          on_batch=lambda idx, correct: order.append(idx.tolist()))
        return _flat(model), res.loss, order

    # Execute
    (w1, l1, o1), (w2, l2, o2), (w3, _, o3) = run(11), run(11), run(12)

    # Assert: bit-identical for the same seed; another seed shuffles differently and ends elsewhere
    assert torch.equal(w1, w2) and l1 == l2 and o1 == o2
    assert o3 != o1 and not torch.equal(w1, w3)
