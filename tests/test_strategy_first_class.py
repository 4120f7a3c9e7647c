"""A user's strategy as a first-class citizen: its metrics recorded, its failures reported in one line naming it,
its folder importable without installing it, and a sweep that checks every point's strategy options first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord
from mock_replies import server_identity
from unit_builders import RosterGrid, by_device, device_reply

from fleet.arrays import record_from_numpy
from fleet.config.scenario import parse_config
from fleet.quant.codecs import build_codec
from simulations.run.sweep import run_sweep
from simulations.store.results import RunDir
from strategies.loader import load_strategy
from strategies.wrapper import FleetStrategy, RoundLog, StrategyError

FLOAT = {"data.dataset": "digits", "model.arch": "mlp", "quant.weight-bits": 32, "quant.act-bits": 32,
         "quant.codec": "fp32", "coreset.method": "full", "train.clc-beta": 0.0,
         "federation.num-devices": 2, "federation.devices-per-round": 2}
GLOBAL = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}
USER_MODULE = '''
from flwr.serverapp.strategy import FedAvg


class Exploding(FedAvg):
    def aggregate_train(self, server_round, replies):
        raise ZeroDivisionError("clip norm of an empty round")


class DropsKey(FedAvg):
    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        del arrays["b"]
        return arrays, metrics


class Reports(FedAvg):
    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        metrics["clip-fraction"] = 0.25
        return arrays, metrics
'''


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    """A folder holding a package of strategies, not installed anywhere."""
    pkg = tmp_path / "mine" / f"user_strats_{os.getpid()}"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "broken.py").write_text(USER_MODULE)
    return tmp_path / "mine"


def _name(folder: Path, cls: str) -> str:
    return f"{next(folder.iterdir()).name}.broken:{cls}"


def _aggregate(inner: object, monkeypatch: pytest.MonkeyPatch) -> tuple[FleetStrategy, tuple]:
    """One round of FleetStrategy around ``inner`` with two ok replies (updates 1 and 3)."""
    server_identity(monkeypatch)
    strategy = FleetStrategy(inner, parse_config(FLOAT), build_codec("fp32"), None,  # type: ignore[arg-type]
                             {"ref": np.zeros(1, np.float32)}, "h")
    grid = RosterGrid(2)
    strategy.discover(grid, timeout=5.0)
    msgs = by_device(strategy.configure_train(1, record_from_numpy(GLOBAL), ConfigRecord(), grid))
    replies = [device_reply(msgs[d], {k: np.full(v.shape, 1.0 + 2 * d, np.float32) for k, v in GLOBAL.items()})
               for d in sorted(msgs)]
    return strategy, strategy.aggregate_train(1, replies)


def test_strategy_path_imports_an_uninstalled_folder(user_folder: Path) -> None:
    # Execute
    strategy = load_strategy(_name(user_folder, "Reports"), {}, str(user_folder))

    # Assert: built; a folder that is not one is refused naming the key
    assert type(strategy).__name__ == "Reports"
    with pytest.raises(ValueError, match=r"^strategy.path: '.*nowhere' is not a folder"):
        load_strategy(_name(user_folder, "Reports"), {}, str(user_folder / "nowhere"))


@pytest.mark.parametrize(("cls", "message"), [
    ("Exploding", r"^strategy Exploding.aggregate_train raised ZeroDivisionError: clip norm of an empty round$"),
    ("DropsKey", r"^strategy DropsKey.aggregate_train returned arrays without 1 of the model's keys: b$"),
])
def test_a_failing_strategy_is_one_line_naming_it(user_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                                  cls: str, message: str) -> None:
    # Prepare
    inner = load_strategy(_name(user_folder, cls), {}, str(user_folder))

    # Execute / Assert
    with pytest.raises(StrategyError, match=message):
        _aggregate(inner, monkeypatch)


def test_the_strategys_own_metrics_reach_rounds_jsonl(user_folder: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare / Execute: FedAvg's averages of the wrapper's annotations (bits, device) are not the strategy's
    strategy, (arrays, metrics) = _aggregate(load_strategy(_name(user_folder, "Reports"), {}, str(user_folder)),
                                             monkeypatch)
    out = RunDir(tmp_path / "run", parse_config(FLOAT))
    (tmp_path / "run").mkdir()
    assert strategy.last is not None
    row = out.record_round(strategy.last, 0.5, 1.0, 0.1)

    # Assert
    assert isinstance(metrics, MetricRecord) and "device" in metrics  # Flower's average of device indices...
    assert {k: v for k, v in row.items() if k.startswith("strategy/")} == {"strategy/clip-fraction": 0.25}
    line = json.loads((tmp_path / "run" / "rounds.jsonl").read_text().splitlines()[-1])
    assert line["strategy/clip-fraction"] == 0.25
    assert np.allclose(arrays["w"].numpy(), 2.0)  # (1 + 3) / 2: the aggregate itself is untouched


def test_round_without_strategy_metrics_has_no_strategy_keys(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    row = RunDir(tmp_path / "r", parse_config(FLOAT)).record_round(RoundLog(1), None, None, 0.0)
    assert not any(k.startswith("strategy/") for k in row)


def test_sweep_checks_every_points_strategy_options_before_the_first_run(tmp_path: Path) -> None:
    # Prepare: fedprox accepts proximal_mu, fedavg does not; runs would be counted
    calls: list[dict[str, str]] = []

    def check(scenario: str, overrides: dict[str, str]) -> None:
        cfg = parse_config({"strategy.name": overrides["strategy.name"],
                            "strategy.options.proximal_mu": float(overrides["strategy.options.proximal_mu"])})
        load_strategy(cfg.strategy.name, dict(cfg.strategy.options))

    # Execute / Assert: refused naming the key and the point, nothing ran, no sweep directory
    with pytest.raises(ValueError, match=r"^strategy.options.proximal_mu: not accepted by FedAvg.*"
                                         r"\(grid point strategy.name=fedavg__seed=0\)"):
        run_sweep("quickstart", {"strategy.name": ["fedprox", "fedavg"]}, 1, tmp_path / "sw",
                  run_fn=lambda s, o, d: calls.append(o), fixed={"strategy.options.proximal_mu": "0.1"},
                  check_fn=check)
    assert calls == [] and not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_fleet_run_with_an_exploding_strategy(user_folder: Path, tmp_path: Path) -> None:
    # Execute: the CLI end to end
    fleet = str(Path(sys.executable).parent / "fleet")
    out = subprocess.run(
        [fleet, "run", "quickstart", "--quiet", "--no-report", "--out", str(tmp_path / "run"),
         "--set", "federation.rounds=2", "--set", "federation.num-devices=6", "--set", "federation.devices-per-round=3",
         "--set", "model.pretrain-epochs=3", "--set", f"strategy.name={_name(user_folder, 'Exploding')}",
         "--set", f"strategy.path={user_folder}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "EDGEFLEET_CACHE": str(tmp_path / "c")})

    # Assert: exit 1, one error line naming the strategy, summary failed, the traceback in run.log
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert out.returncode == 1 and len(errors) == 1, out.stderr[-2000:]
    assert "strategy Exploding.aggregate_train raised ZeroDivisionError" in errors[0]
    assert len(out.stderr.splitlines()) <= 3  # round 0's line, the error; no traceback on the terminal
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "Exploding.aggregate_train" in summary["error"]
    assert "Traceback" in (tmp_path / "run" / "run.log").read_text()


def test_the_reports_round_table_shows_the_strategys_metrics(tmp_path: Path) -> None:
    from simulations.analysis.report import round_table
    from simulations.store.rundir import load_run

    # Prepare: a run directory whose round 1 carries a strategy metric
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "rounds.jsonl").write_text(
        json.dumps({"round": 0, "accuracy": 0.5, "devices_completed": 0, "devices_sampled": 0, "uplink_bytes": 0,
                    "sim_time_s": 0.0}) + "\n"
        + json.dumps({"round": 1, "accuracy": 0.75, "devices_completed": 2, "devices_sampled": 3,
                      "uplink_bytes": 2000, "sim_time_s": 1.5, "strategy/clip-fraction": 0.25}) + "\n")

    # Execute
    lines = round_table(load_run(run_dir))

    # Assert
    assert lines[0] == "| round | accuracy | devices ok / sampled | uplink | simulated s | strategy/clip-fraction |"
    assert lines[2:] == ["| 0 | 50.00% | 0 / 0 | 0 B | 0 | – |", "| 1 | 75.00% | 2 / 3 | 2.00 kB | 1.5 | 0.25 |"]
