"""``strategy.name`` / ``strategy.options`` through the scenario path: load_config, preflight, the CLI.

The fast tests never start Ray: every bad strategy must fail in `preflight` (one line, naming the
key) and make ``fleet run`` exit with code 2 before a run directory is created. The one slow test
runs the example user strategy (``examples/custom_strategy``) on a real, tiny fleet.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.serverapp.strategy import FedAvg
from whole_run import run_flat

from fleet.config.scenario import ConfigError
from simulations.cli import main
from simulations.run.scenario import load_config, preflight
from strategies.loader import load_strategy

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "custom_strategy"
CLIPPED = "my_strategies.clipped_mean:ClippedMean"

# (overrides, key the one-line error must start with, a fragment of the message)
BAD_STRATEGIES: list[tuple[dict[str, object], str, str]] = [
    ({"strategy.name": "no_such_package.aggregation:Mean"}, "strategy.name",
     "cannot import module 'no_such_package.aggregation'"),
    ({"strategy.name": "collections:OrderedDict"}, "strategy.name",
     "is not a subclass of flwr.serverapp.strategy.Strategy"),
    ({"strategy.name": "fedprox", "strategy.options.mu": 0.1}, "strategy.options.mu",
     "not accepted by FedProx; accepted options: proximal_mu"),
    ({"strategy.name": CLIPPED, "strategy.options.clip": 0.05}, "strategy.options.clip",
     "not accepted by ClippedMean; accepted options: radius"),
]
IDS = ["wrong-import-path", "not-a-strategy", "builtin-bad-option", "user-bad-option"]


@pytest.fixture
def example_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))


@pytest.mark.parametrize(("overrides", "key", "fragment"), BAD_STRATEGIES, ids=IDS)
def test_preflight_names_the_strategy_key(
    example_on_path: None, overrides: dict[str, object], key: str, fragment: str
) -> None:
    # Prepare: the config itself parses; only the strategy is wrong
    cfg, _ = load_config("quickstart", overrides)

    # Execute
    with pytest.raises(ConfigError) as info:
        preflight(cfg)

    # Assert: one line, naming the key
    assert info.value.key == key
    msg = str(info.value)
    assert msg.startswith(f"{key}: ") and fragment in msg, msg
    assert "\n" not in msg


@pytest.mark.parametrize(("overrides", "key", "fragment"), BAD_STRATEGIES, ids=IDS)
def test_cli_run_exits_2_with_one_line(
    example_on_path: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    overrides: dict[str, object], key: str, fragment: str,
) -> None:
    # Prepare
    out = tmp_path / "run"
    argv = ["run", "quickstart", "--out", str(out), "--quiet", "--no-report"]
    for k, v in overrides.items():
        argv += ["--set", f"{k}={v}"]

    # Execute
    code = main(argv)

    # Assert: exit code 2, exactly one line on stderr naming the key, nothing written
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: {key}: ") and fragment in lines[0], lines[0]
    assert not out.exists()


def test_constructor_error_names_the_option() -> None:
    # Prepare: a value of the right type that the constructor itself refuses
    cfg, _ = load_config("quickstart", {"strategy.name": "trimmed-mean", "strategy.options.beta": 0.7})

    # Execute
    with pytest.raises(ConfigError) as info:
        preflight(cfg)

    # Assert
    assert str(info.value).startswith("strategy.options.beta: FedTrimmedAvg rejected the options")


def test_example_strategy_passes_preflight(example_on_path: None) -> None:
    # Prepare
    cfg, _ = load_config("quickstart", {"strategy.name": CLIPPED, "strategy.options.radius": 0.05})

    # Execute
    warnings = preflight(cfg)
    strategy = load_strategy(cfg.strategy.name, dict(cfg.strategy.options), cfg.strategy.path)

    # Assert: loads with its option and the wrapper's sampling kwargs
    assert warnings == []
    assert type(strategy).__name__ == "ClippedMean" and isinstance(strategy, FedAvg)
    assert strategy.radius == 0.05  # type: ignore[attr-defined]
    assert strategy.min_available_nodes == 1 and strategy.fraction_evaluate == 0.0


@pytest.mark.slow
def test_example_strategy_runs_a_real_fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the package importable here and in Ray's worker processes, a private cache
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(EXAMPLE_DIR) + (os.pathsep + old if old else ""))
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))
    flat = {
        "federation.num-devices": 4, "federation.devices-per-round": 3, "federation.rounds": 2,
        "federation.seed": 1, "data.dataset": "digits", "model.arch": "mlp", "model.pretrain-epochs": 3,
        "train.batch-size": 16, "ray.num-cpus": 1,
        "strategy.name": CLIPPED, "strategy.options.radius": 0.05,
    }

    # Execute
    summary, rounds, _ = run_flat(flat, tmp_path / "run", "clipped")

    # Assert: both rounds ran with the user strategy and accepted every update
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    assert summary["strategy"] == CLIPPED
    assert [r["devices_completed"] for r in rounds] == [0, 3, 3]  # round 0: the starting model
    assert summary["final_accuracy"] > 0.2  # above chance (0.1) on digits
