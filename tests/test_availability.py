"""Availability: long-run online rates, reproducibility, checkpointing, validation."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.hardware.availability import AvailabilityModel, AvailabilitySpec, availability_from_dict

MARKOV = AvailabilitySpec("markov", p_on_to_off=0.2, p_off_to_on=0.1, p_dropout=0.0)


def test_bernoulli_long_run_rate() -> None:
    # Prepare: 20 devices x 500 rounds = 10,000 draws; sd = sqrt(.3*.7/1e4) = 0.0046
    model = AvailabilityModel([AvailabilitySpec("bernoulli", p_online=0.3)] * 20, seed=7)
    # Execute
    rate = np.mean([model.online(r) for r in range(500)])
    # Assert: +-0.02 is more than 4 sd
    assert abs(rate - 0.3) < 0.02


def test_markov_long_run_rate_and_transitions() -> None:
    # Prepare: stationary online = 0.1 / (0.2 + 0.1) = 1/3
    model = AvailabilityModel([MARKOV] * 20, seed=11)
    # Execute
    states = np.stack([model.online(r) for r in range(1000)])  # (R, D)
    # Assert: rounds are correlated (mixing time ~ 1/0.3 rounds), so allow +-0.03
    assert abs(states.mean() - 1 / 3) < 0.03
    was_on = states[:-1]
    went_off = was_on & ~states[1:]
    assert abs(went_off.sum() / was_on.sum() - 0.2) < 0.02
    # starting from the stationary distribution: round 0 is already near 1/3
    first = np.stack([AvailabilityModel([MARKOV] * 200, seed=s).online(0) for s in range(10)])
    assert abs(first.mean() - 1 / 3) < 0.04


def test_online_is_reproducible_in_any_query_order() -> None:
    specs = [MARKOV, AvailabilitySpec("bernoulli", p_online=0.5), AvailabilitySpec()] * 5
    in_order = AvailabilityModel(specs, seed=3)
    expected = [in_order.online(r) for r in range(31)]
    # a fresh model asked round 30 directly, and one asked backwards, agree
    assert np.array_equal(AvailabilityModel(specs, seed=3).online(30), expected[30])
    backwards = AvailabilityModel(specs, seed=3)
    for r in reversed(range(31)):
        assert np.array_equal(backwards.online(r), expected[r])
    assert expected[5][2::3].all()  # "always" devices
    other_seed = [AvailabilityModel(specs, seed=4).online(r) for r in range(31)]
    assert not all(np.array_equal(a, b) for a, b in zip(expected, other_seed, strict=True))


def test_state_dict_round_trip() -> None:
    # Prepare
    a = AvailabilityModel([MARKOV] * 6, seed=5)
    for r in range(10):
        a.online(r)
    state = a.state_dict()
    # Execute
    b = AvailabilityModel([MARKOV] * 6, seed=5)
    b.load_state_dict(state)
    # Assert: plain ints and numpy arrays; the restored model continues the chain
    assert isinstance(state["round"], int) and isinstance(state["state"], np.ndarray)
    assert np.array_equal(b.online(11), a.online(11))
    with pytest.raises(ValueError, match="seed=5"):
        AvailabilityModel([MARKOV] * 6, seed=6).load_state_dict(state)


def test_dropped_is_deterministic_with_the_right_rate() -> None:
    spec = AvailabilitySpec("always", p_dropout=0.1)
    model = AvailabilityModel([spec] * 10, seed=2)
    draws = [model.dropped(r, d) for r in range(300) for d in range(10)]
    assert draws == [AvailabilityModel([spec] * 10, seed=2).dropped(r, d)
                     for r in range(300) for d in range(10)]
    assert abs(np.mean(draws) - 0.1) < 0.02  # sd = sqrt(.09/3000) = 0.0055
    never = AvailabilityModel([AvailabilitySpec(p_dropout=0.0)], seed=2)
    assert not any(never.dropped(r, 0) for r in range(100))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "sometimes"}, "availability.kind: unknown kind 'sometimes'"),
        ({"kind": "bernoulli", "p_online": 1.5}, "availability.p_online: must be in [0, 1], got 1.5"),
        ({"p_dropout": -0.1}, "availability.p_dropout: must be in [0, 1], got -0.1"),
        ({"kind": "markov", "p_on_to_off": 0.0, "p_off_to_on": 0.0},
         "availability.p_off_to_on: p_on_to_off + p_off_to_on must be > 0"),
    ],
)
def test_spec_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        AvailabilitySpec(**kwargs)
    assert str(info.value).startswith(message)


def test_from_dict_names_the_key() -> None:
    key = "devices.custom.b.availability"
    assert availability_from_dict({"kind": "bernoulli", "p_online": 0.4}, key).p_online == 0.4
    with pytest.raises(ValueError, match=r"^devices\.custom\.b\.availability\.p_on: unknown field"):
        availability_from_dict({"p_on": 0.4}, key)
    with pytest.raises(ValueError, match=r"^devices\.custom\.b\.availability\.p_online: must be a number"):
        availability_from_dict({"p_online": "high"}, key)
    with pytest.raises(ValueError, match=r"^devices\.custom\.b\.availability\.kind: unknown kind"):
        availability_from_dict({"kind": "often"}, key)
