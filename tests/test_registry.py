"""Built-in inner strategies: construction, options, and aggregation by hand."""

import numpy as np
import pytest
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
)
from mock_replies import aggregated, configure_one_round, make_reply, server_identity

from strategies.bitaware import BitAwareFedAvg
from strategies.registry import STRATEGIES, build_inner_strategy


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> None:
    server_identity(monkeypatch)


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavg", FedAvg),
        ("fedprox", FedProx),
        ("fedadam", FedAdam),
        ("fedyogi", FedYogi),
        ("fedavgm", FedAvgM),
        ("median", FedMedian),
        ("trimmed-mean", FedTrimmedAvg),
        ("krum", Krum),
        ("bit-aware", BitAwareFedAvg),
    ],
)
def test_builds_each_builtin_with_wrapper_sampling(name: str, cls: type) -> None:
    # Execute
    strategy = build_inner_strategy(name, {})
    # Assert
    assert type(strategy) is cls
    assert strategy.fraction_train == 1e-9  # type: ignore[attr-defined]
    assert strategy.min_train_nodes == 1  # type: ignore[attr-defined]
    assert strategy.min_available_nodes == 1  # type: ignore[attr-defined]
    assert strategy.fraction_evaluate == 0.0  # type: ignore[attr-defined]


def test_registry_covers_the_documented_names() -> None:
    assert sorted(STRATEGIES) == sorted(
        ["fedavg", "fedprox", "fedadam", "fedyogi", "fedavgm", "median",
         "trimmed-mean", "krum", "bit-aware"]
    )


def test_kebab_case_options_are_passed_through() -> None:
    # Execute
    adam = build_inner_strategy("fedadam", {"eta": 0.5, "eta-l": 0.2, "beta-1": 0.8})
    avgm = build_inner_strategy("fedavgm", {"server-momentum": 0.9})
    krum = build_inner_strategy("krum", {"num-malicious-nodes": 2})
    # Assert
    assert (adam.eta, adam.eta_l, adam.beta_1) == (0.5, 0.2, 0.8)  # type: ignore
    assert avgm.server_momentum == 0.9  # type: ignore[attr-defined]
    assert krum.num_malicious_nodes == 2  # type: ignore[attr-defined]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"^strategy\.name: .*fedavg.*trimmed") as e:
        build_inner_strategy("fedsgd", {})
    assert "\n" not in str(e.value)


def test_unknown_option_names_key_and_lists_accepted_ones() -> None:
    with pytest.raises(ValueError) as e:
        build_inner_strategy("fedprox", {"mu": 0.1})
    msg = str(e.value)
    assert msg.startswith("strategy.options.mu: not accepted by FedProx")
    assert "accepted options: proximal_mu" in msg
    assert "\n" not in msg


def test_option_with_no_accepted_options_says_none() -> None:
    with pytest.raises(ValueError, match=r"^strategy\.options\.eta: .*\(none\)$"):
        build_inner_strategy("fedavg", {"eta": 0.1})


def test_sampling_options_are_reserved_for_the_wrapper() -> None:
    with pytest.raises(ValueError, match=r"^strategy\.options\.fraction_train: set by"):
        build_inner_strategy("fedavg", {"fraction-train": 0.5})


def test_wrong_value_type_names_key() -> None:
    with pytest.raises(ValueError, match=r"^strategy\.options\.beta: expected float"):
        build_inner_strategy("trimmed-mean", {"beta": "0.1"})


def test_constructor_error_is_one_line_naming_key() -> None:
    with pytest.raises(ValueError) as e:
        build_inner_strategy("trimmed-mean", {"beta": 0.7})
    msg = str(e.value)
    assert msg.startswith("strategy.options.beta: FedTrimmedAvg rejected the options")
    assert "\n" not in msg


def test_fedavg_weighted_mean() -> None:
    # Prepare: (1 * [1, 2] + 3 * [4, 8]) / 4 = [3.25, 6.5]
    strategy = build_inner_strategy("fedavg", {})
    replies = [
        make_reply({"w": [1, 2]}, 1, device=0),
        make_reply({"w": [4, 8]}, 3, device=1),
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    np.testing.assert_allclose(aggregated(arrays)["w"], [3.25, 6.5])


def test_median_is_coordinatewise() -> None:
    # Prepare: medians of {1, 2, 9} and {10, 20, -5} are 2 and 10
    strategy = build_inner_strategy("median", {})
    replies = [
        make_reply({"w": [1, 10]}, 1, device=0),
        make_reply({"w": [2, 20]}, 100, device=1),
        make_reply({"w": [9, -5]}, 1, device=2),
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: unweighted, whatever num-examples says
    np.testing.assert_allclose(aggregated(arrays)["w"], [2.0, 10.0])


def test_trimmed_mean_cuts_one_per_tail_of_five() -> None:
    # Prepare: beta=0.2 of 5 cuts 1 per tail: {1,2,3,4,100} -> mean(2,3,4) = 3
    strategy = build_inner_strategy("trimmed-mean", {"beta": 0.2})
    values = [100.0, 1.0, 3.0, 2.0, 4.0]
    replies = [make_reply({"w": [v]}, 1, device=i) for i, v in enumerate(values)]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    np.testing.assert_allclose(aggregated(arrays)["w"], [3.0])


def test_krum_picks_the_most_central_update() -> None:
    # Prepare: A=[1,1], B=[2,1], C=[1,2], D=[11,11]; f=0 so n-f-2 = 2 neighbours.
    # Squared distances: A-B 1, A-C 1, B-C 2, A-D 200, B-D 181, C-D 181.
    # Scores: A 1+1=2, B 1+2=3, C 1+2=3, D 181+181=362 -> A wins.
    strategy = build_inner_strategy("krum", {"num_malicious_nodes": 0})
    points = {"D": [11, 11], "B": [2, 1], "A": [1, 1], "C": [1, 2]}
    replies = [make_reply({"w": p}, 1, device=i) for i, p in enumerate(points.values())]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert
    np.testing.assert_allclose(aggregated(arrays)["w"], [1.0, 1.0])


def test_fedadam_one_step_after_configure_train(identity: None) -> None:
    # Prepare: x=[1,2], client=[2,1] -> delta=[1,-1]. beta_1=beta_2=0.5, tau=0.5,
    # eta=1, round 1: m = 0.5*delta, v = 0.5*delta^2 = [0.5, 0.5],
    # eta_norm = sqrt(1 - 0.5^2) / (1 - 0.5^2) = 1/sqrt(0.75),
    # step = eta_norm * 0.5 / (sqrt(0.5) + 0.5) = 0.4783 per coordinate.
    strategy = build_inner_strategy(
        "fedadam", {"eta": 1.0, "beta_1": 0.5, "beta_2": 0.5, "tau": 0.5}
    )
    configure_one_round(strategy, {"w": [1.0, 2.0]})
    # Execute
    arrays, _ = strategy.aggregate_train(1, [make_reply({"w": [2.0, 1.0]}, 5)])
    # Assert
    step = (1 / np.sqrt(0.75)) * 0.5 / (np.sqrt(0.5) + 0.5)
    np.testing.assert_allclose(aggregated(arrays)["w"], [1 + step, 2 - step], rtol=1e-6)


def test_fedavgm_momentum_over_two_rounds(identity: None) -> None:
    # Prepare: lr=1, momentum=0.5, x0=[1,2].
    # Round 1: reply [2,1]; pg = x0 - [2,1] = [-1,1]; v = pg; x1 = x0 - v = [2,1].
    # Round 2: reply [3,0]; pg = [2,1] - [3,0] = [-1,1]; v = 0.5*[-1,1] + [-1,1]
    # = [-1.5,1.5]; x2 = [2,1] - v = [3.5,-0.5].
    strategy = build_inner_strategy(
        "fedavgm", {"server_learning_rate": 1.0, "server_momentum": 0.5}
    )
    configure_one_round(strategy, {"w": [1.0, 2.0]}, server_round=1)
    x1, _ = strategy.aggregate_train(1, [make_reply({"w": [2.0, 1.0]}, 1)])
    configure_one_round(strategy, aggregated(x1), server_round=2)
    # Execute
    x2, _ = strategy.aggregate_train(2, [make_reply({"w": [3.0, 0.0]}, 1)])
    # Assert
    np.testing.assert_allclose(aggregated(x1)["w"], [2.0, 1.0])
    np.testing.assert_allclose(aggregated(x2)["w"], [3.5, -0.5])


def test_fedprox_puts_mu_in_the_config(identity: None) -> None:
    # Prepare
    strategy = build_inner_strategy("fedprox", {"proximal-mu": 0.01})
    # Execute
    config = configure_one_round(strategy, {"w": [0.0]}, server_round=3)
    # Assert
    assert config["proximal-mu"] == 0.01
    assert config["server-round"] == 3
