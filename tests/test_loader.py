"""load_strategy: built-in names, a user package by import path, one-line errors."""

from pathlib import Path

import numpy as np
import pytest
from flwr.serverapp.strategy import FedAvg, FedMedian
from mock_replies import aggregated, make_reply

from strategies.loader import load_strategy

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "custom_strategy"
CLIPPED = "my_strategies.clipped_mean:ClippedMean"


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))


def _assert_one_line(err: pytest.ExceptionInfo[ValueError], prefix: str) -> None:
    msg = str(err.value)
    assert msg.startswith(prefix), msg
    assert "\n" not in msg


def test_builtin_name_goes_through_the_registry() -> None:
    assert type(load_strategy("median", {})) is FedMedian


def test_user_strategy_by_import_path(example_on_path: None) -> None:
    # Prepare
    strategy = load_strategy(CLIPPED, {"radius": 0.5})
    # Coordinate 0: values 0, 1, 100, median 1 -> clipped to 0.5, 1, 1.5 -> mean 1.0
    # Coordinate 1: values 2, 2, 2 -> 2
    replies = [
        make_reply({"w": [0.0, 2.0]}, 1, device=0),
        make_reply({"w": [1.0, 2.0]}, 1, device=1),
        make_reply({"w": [100.0, 2.0]}, 1, device=2),
    ]
    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Assert
    assert isinstance(strategy, FedAvg)
    assert strategy.radius == 0.5  # type: ignore[attr-defined]
    # sampling kwargs reached FedAvg through ClippedMean's **kwargs
    assert strategy.min_available_nodes == 1
    assert strategy.fraction_evaluate == 0.0
    np.testing.assert_allclose(aggregated(arrays)["w"], [1.0, 2.0])
    assert metrics is not None and metrics["bits"] == 32


def test_user_strategy_weights_by_num_examples(example_on_path: None) -> None:
    # radius large enough that nothing is clipped: (1 * 0 + 3 * 4) / 4 = 3
    strategy = load_strategy(CLIPPED, {"radius": 100.0})
    replies = [make_reply({"w": [0.0]}, 1), make_reply({"w": [4.0]}, 3, device=1)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(aggregated(arrays)["w"], [3.0])


def test_user_option_accepted_via_kwargs_chain(example_on_path: None) -> None:
    # ClippedMean(**kwargs) forwards to FedAvg, whose own options stay reserved
    with pytest.raises(ValueError) as e:
        load_strategy(CLIPPED, {"min-train-nodes": 5})
    _assert_one_line(e, "strategy.options.min_train_nodes: set by the fleet wrapper")


def test_unknown_user_option_lists_accepted(example_on_path: None) -> None:
    with pytest.raises(ValueError) as e:
        load_strategy(CLIPPED, {"clip": 0.1})
    _assert_one_line(e, "strategy.options.clip: not accepted by ClippedMean")
    assert "accepted options: radius" in str(e.value)


def test_user_constructor_error_is_caught(example_on_path: None) -> None:
    with pytest.raises(ValueError) as e:
        load_strategy(CLIPPED, {"radius": -1.0})
    _assert_one_line(e, "strategy.options.radius: ClippedMean rejected the options")
    assert "radius must be > 0" in str(e.value)


def test_wrong_module() -> None:
    with pytest.raises(ValueError) as e:
        load_strategy("no_such_package.mod:Thing", {})
    _assert_one_line(e, "strategy.name: cannot import module 'no_such_package.mod'")


def test_missing_attribute(example_on_path: None) -> None:
    with pytest.raises(ValueError) as e:
        load_strategy("my_strategies.clipped_mean:ClippedMedian", {})
    _assert_one_line(e, "strategy.name: module 'my_strategies.clipped_mean' has no")


@pytest.mark.parametrize("path", ["collections:OrderedDict", "numpy:mean"])
def test_not_a_strategy_subclass(path: str) -> None:
    with pytest.raises(ValueError) as e:
        load_strategy(path, {})
    _assert_one_line(e, f"strategy.name: '{path}' is not a subclass of")


@pytest.mark.parametrize("name", ["fedsgd", "pkg.mod:", ":Cls", "a:b:c"])
def test_malformed_or_unknown_name(name: str) -> None:
    with pytest.raises(ValueError) as e:
        load_strategy(name, {})
    _assert_one_line(e, "strategy.name:")


def test_abstract_strategy_fails_at_construction() -> None:
    with pytest.raises(ValueError) as e:
        load_strategy("flwr.serverapp.strategy:Strategy", {})
    _assert_one_line(e, "strategy.name: Strategy rejected the options: TypeError")
