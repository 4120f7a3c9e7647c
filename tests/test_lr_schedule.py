"""Learning-rate schedules: hand values, job windows, the rates train_local really uses, kept optimizer state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import fleet.train.loop
from fleet.config.schema import TrainConfig
from fleet.quant.convert import QLinear
from fleet.train.loop import OPT_PREFIX, Schedule, load_optimizer_state, optimizer_state, train_local
from fleet.train.schedule import lr_factor, progress, round_window

# --- lr_factor, progress, round_window -------------------------------------------------------


@pytest.mark.parametrize(("p", "want"), [
    (0.0, 1.0),
    (0.25, 0.8535533905932737),  # 0.5 * (1 + cos(pi / 4)) = 0.5 + sqrt(2) / 4
    (0.5, 0.5),
    (1.0, 0.0),
])
def test_cosine_by_hand(p: float, want: float) -> None:
    assert lr_factor("cosine", p) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize(("p", "want"), [
    (0.0, 1.0), (0.49, 1.0), (0.5, 0.1), (0.74, 0.1), (0.75, 0.01), (1.0, 0.01),
])
def test_step_by_hand(p: float, want: float) -> None:
    assert lr_factor("step", p) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_constant_is_one(p: float) -> None:
    assert lr_factor("constant", p) == 1.0


def test_progress_outside_the_job_is_clamped() -> None:
    assert lr_factor("cosine", -0.5) == 1.0
    assert lr_factor("cosine", 1.5) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("step", 2.0) == pytest.approx(0.01, rel=1e-12)


def test_unknown_schedule_raises() -> None:
    with pytest.raises(ValueError, match="unknown lr schedule 'linear'"):
        lr_factor("linear", 0.5)


def test_progress_by_hand() -> None:
    assert progress((0.0, 1.0), 0, 8) == 0.0
    assert progress((0.0, 1.0), 2, 8) == 0.25
    assert progress((0.5, 1.0), 5, 10) == 0.75
    assert progress((0.2, 0.3), 0, 0) == 0.2  # no steps: the window's start, no division by zero


def test_round_window() -> None:
    assert round_window("run", 3, 10) == (0.2, 0.3)
    assert round_window("run", 1, 4) == (0.0, 0.25)
    assert round_window("run", 10, 10) == (0.9, 1.0)
    assert round_window("round", 3, 10) == (0.0, 1.0)


# --- through train_local ---------------------------------------------------------------------


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def _record_rates(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Make train_local's optimizer append its first group's rate at every step()."""
    rates: list[float] = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):  # type: ignore[no-untyped-def,override]
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    def make(model: nn.Module, tc: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
        return RecordingSGD(model.parameters(), lr=tc.lr if lr is None else lr, momentum=tc.momentum)

    monkeypatch.setattr(fleet.train.loop, "make_optimizer", make)
    return rates


SGD_TC = TrainConfig(local_epochs=2, optimizer="sgd", momentum=0.0, kd=False)


def test_train_local_follows_cosine_over_its_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 40 samples, batch 10, 2 epochs -> 8 steps over the whole job
    rates = _record_rates(monkeypatch)
    x, y = _data()
    # Execute
    res = train_local(_model(), x, y, SGD_TC, gen=torch.Generator().manual_seed(0), batch_size=10,
                      schedule=Schedule(lr=0.01, shape="cosine", window=(0.0, 1.0)))
    # Assert
    assert res.steps == 8
    want = [0.01 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert rates == pytest.approx(want, rel=1e-12)


def test_run_scope_window_starts_halfway_down(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the second of two rounds of a run: window (0.5, 1.0)
    rates = _record_rates(monkeypatch)
    x, y = _data()
    # Execute
    train_local(_model(), x, y, SGD_TC, gen=torch.Generator().manual_seed(0), batch_size=10,
                schedule=Schedule(lr=0.01, shape="cosine", window=(0.5, 1.0)))
    # Assert: step k is at p = 0.5 + 0.5 * k / 8
    assert rates[0] == pytest.approx(0.005, rel=1e-12)
    want = [0.01 * 0.5 * (1 + math.cos(math.pi * (0.5 + k / 16))) for k in range(8)]
    assert rates == pytest.approx(want, rel=1e-12)


def test_default_schedule_is_train_lr_and_lr_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: no Schedule: tc.lr = 0.1 with "step"; milestones at steps 4 (p = 0.5) and 6 (p = 0.75) of 8
    rates = _record_rates(monkeypatch)
    x, y = _data()
    tc = TrainConfig(local_epochs=2, optimizer="sgd", momentum=0.0, kd=False, lr=0.1, lr_schedule="step")
    # Execute
    train_local(_model(), x, y, tc, gen=torch.Generator().manual_seed(0), batch_size=10)
    # Assert
    assert rates == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2, rel=1e-12)


def test_every_param_group_is_scaled_from_its_own_base_rate() -> None:
    # Prepare: an activation step size (found by type: a quantized layer's act_quant) gets
    # lr * act_step_lr_scale (0.5); record all groups' rates at each step
    def with_step() -> nn.Module:
        return nn.Sequential(QLinear(3, 2, weight_bits=32, act_bits=4))

    seen: list[list[float]] = []
    real = fleet.train.loop.make_optimizer

    def make(model: nn.Module, tc: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
        opt = real(model, tc, lr)
        inner = opt.step
        opt.step = lambda *a, **k: (seen.append([g["lr"] for g in opt.param_groups]), inner(*a, **k))[1]
        return opt

    x, y = _data()
    tc = TrainConfig(local_epochs=2, optimizer="sgd", momentum=0.0, kd=False, act_step_lr_scale=0.5)
    mp = pytest.MonkeyPatch()
    mp.setattr(fleet.train.loop, "make_optimizer", make)
    try:
        # Execute
        train_local(with_step(), x, y, tc, gen=torch.Generator().manual_seed(0), batch_size=10,
                    schedule=Schedule(lr=0.01, shape="cosine"))
    finally:
        mp.undo()
    # Assert: groups (rest, act steps); both follow the cosine from their own base
    assert len(seen) == 8
    for k, (rest, act) in enumerate(seen):
        f = 0.5 * (1 + math.cos(math.pi * k / 8))
        assert rest == pytest.approx(0.01 * f, rel=1e-12)
        assert act == pytest.approx(0.005 * f, rel=1e-12)


# --- optimizer state kept between calls ------------------------------------------------------

ADAM_TC = TrainConfig(local_epochs=1, optimizer="adam", kd=False)


def test_train_local_returns_no_state_unless_asked() -> None:
    x, y = _data()
    res = train_local(_model(), x, y, ADAM_TC, gen=torch.Generator().manual_seed(0), batch_size=10)
    assert res.opt_state is None


def test_adam_state_carried_between_calls_counts_all_steps() -> None:
    # Prepare
    model = _model()
    x, y = _data()
    gen = torch.Generator().manual_seed(0)
    # Execute: two rounds of 1 epoch (4 steps each), the state carried
    first = train_local(model, x, y, ADAM_TC, gen=gen, batch_size=10, opt_state={})
    second = train_local(model, x, y, ADAM_TC, gen=gen, batch_size=10, opt_state=first.opt_state)
    fresh = train_local(model, x, y, ADAM_TC, gen=gen, batch_size=10, opt_state={})
    # Assert
    s1, s2 = first.opt_state, second.opt_state
    assert s1 is not None and s2 is not None and fresh.opt_state is not None
    # params 0 (weight) and 1 (bias), each with step, exp_avg, exp_avg_sq
    assert sorted(s2) == [f"{OPT_PREFIX}{i}.{k}" for i in (0, 1) for k in ("exp_avg", "exp_avg_sq", "step")]
    assert all(k.startswith("opt.") and isinstance(v, np.ndarray) for k, v in s2.items())
    assert s2["opt.0.exp_avg"].shape == (2, 3) and s2["opt.1.exp_avg"].shape == (2,)
    assert float(s1["opt.0.step"]) == 4 and float(s1["opt.1.step"]) == 4
    assert float(s2["opt.0.step"]) == 8 and float(s2["opt.1.step"]) == 8
    assert float(fresh.opt_state["opt.0.step"]) == 4  # an empty state starts over


def test_optimizer_state_round_trips_through_load() -> None:
    # Prepare: an Adam with 2 steps of state
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.ones(4, 3)).sum().backward()
        opt.step()
    flat = optimizer_state(opt)
    # Execute: into a fresh optimizer, with a foreign key that must be ignored
    again = torch.optim.Adam(model.parameters(), lr=0.01)
    load_optimizer_state(again, {**flat, "forgetting-count": np.zeros(3, dtype=np.int32)})
    # Assert
    back = optimizer_state(again)
    assert sorted(back) == sorted(flat)
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k])
    assert float(back["opt.0.step"]) == 2
