"""fleet sweep: planning, resume, CSV, validation and the process pool, with a fake runner."""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import types
from pathlib import Path

import pytest
from rundir_factory import assert_readable_png, fake_run

from simulations.analysis.compare import METRICS
from simulations.run.sweep import (
    SweepResult,
    add_parser,
    csv_columns,
    main,
    parse_grid,
    plan_runs,
    run_sweep,
)

GRID = {"coreset.method": ["acs", "random"], "coreset.fraction": ["0.1", "0.5"]}


class CountingRunner:
    """Wraps :func:`fake_run` and records every call."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[dict[str, str]] = []
        self.fail_on = fail_on

    def __call__(self, scenario: str, overrides: dict[str, str], out_dir: Path) -> None:
        self.calls.append(overrides)
        if self.fail_on and self.fail_on in out_dir.name:
            out_dir.mkdir(parents=True)
            (out_dir / "rounds.jsonl").write_text('{"round": 1, "accuracy": 0.1}\n')
            raise RuntimeError("device pool exploded\nsecond line")
        fake_run(scenario, overrides, out_dir)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_plan_is_grid_product_times_seeds(tmp_path: Path) -> None:
    plans = plan_runs(GRID, 3, tmp_path)
    assert len(plans) == 2 * 2 * 3
    assert plans[0].overrides == {"coreset.method": "acs", "coreset.fraction": "0.1",
                                  "federation.seed": "0"}
    assert plans[0].out_dir.name == "coreset.method=acs__coreset.fraction=0.1__seed=0"
    assert {p.seed for p in plans} == {0, 1, 2}


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepResult, CountingRunner]:
    """One 2 x 2 grid x 2 seeds sweep, shared by the read-only tests."""
    runner = CountingRunner()
    return run_sweep("quick", GRID, 2, tmp_path_factory.mktemp("sw"), run_fn=runner), runner


def test_resume_skips_finished_runs(swept: tuple[SweepResult, CountingRunner]) -> None:
    # Prepare: the shared sweep ran all 8 runs.
    first, runner = swept
    again = CountingRunner()
    # Execute: the same command again.
    second = run_sweep("quick", GRID, 2, first.csv_path.parent, run_fn=again)
    # Assert
    assert len(runner.calls) == 8 and (first.ran, first.skipped) == (8, 0)
    assert again.calls == [] and (second.ran, second.skipped) == (0, 8)


def test_resume_reruns_a_crashed_run_and_keeps_it_aside(tmp_path: Path) -> None:
    grid = {"coreset.method": ["acs", "random"]}
    run_sweep("quick", grid, 1, tmp_path / "sw", run_fn=CountingRunner())
    crashed = tmp_path / "sw" / "coreset.method=random__seed=0"
    (crashed / "summary.json").unlink()  # as if it died before writing the summary
    runner = CountingRunner()
    result = run_sweep("quick", grid, 1, tmp_path / "sw", run_fn=runner)
    assert len(runner.calls) == 1 and result.skipped == 1
    assert runner.calls[0]["coreset.method"] == "random"
    assert (tmp_path / "sw" / "_incomplete" / f"{crashed.name}.1" / "rounds.jsonl").exists()
    assert (crashed / "summary.json").exists()


def test_csv_columns_and_values(swept: tuple[SweepResult, CountingRunner]) -> None:
    result = swept[0]
    rows = _rows(result.csv_path)
    with result.csv_path.open() as fh:
        header = fh.readline().strip().split(",")
    assert header == ["coreset.method", "coreset.fraction", "seed", *METRICS, "status", "run_dir"]
    assert header == csv_columns(list(GRID))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"complete"}
    first = rows[0]
    assert (first["coreset.method"], first["coreset.fraction"]) == ("acs", "0.1")
    assert first["seed"] == "0"
    assert first["fp_reference_accuracy"] == "0.9" and first["rounds_completed"] == "5"
    assert 0.0 < float(first["final_accuracy"]) < 1.0


def test_comparison_report_has_fraction_figure(swept: tuple[SweepResult, CountingRunner]) -> None:
    result = swept[0]
    text = result.report_path.read_text()
    assert "| acs | 0.1 |" in text and "seeds 0..1" in text
    for stem in ("accuracy_by_setting", "accuracy_vs_uplink", "accuracy_vs_fraction"):
        assert_readable_png(result.csv_path.parent / "plots" / f"{stem}.png")


def test_failed_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    runner = CountingRunner(fail_on="random")
    result = run_sweep("quick", {"coreset.method": ["acs", "random"]}, 1, tmp_path / "sw",
                       run_fn=runner)
    rows = {r["run_dir"]: r["status"] for r in _rows(result.csv_path)}
    name = "coreset.method=random__seed=0"
    assert len(runner.calls) == 2 and rows == {"coreset.method=acs__seed=0": "complete",
                                               name: "failed"}
    assert result.failed == {name: "RuntimeError: device pool exploded"}


def _validate(key: str, text: str) -> None:
    """A fake fleet.config.scenario.check_override: two known keys, one numeric."""
    if key not in ("coreset.method", "coreset.fraction"):
        raise ValueError(f"{key}: unknown key (valid keys: coreset.method, coreset.fraction)")
    if key == "coreset.fraction":
        try:
            float(text)
        except ValueError:
            raise ValueError(f"{key}: must be a number, got {text!r}") from None


@pytest.mark.parametrize(("grid", "needle"), [
    ({"coreset.nope": ["1"]}, "coreset.nope: unknown key"),
    ({"coreset.fraction": ["0.1", "lots"]}, "coreset.fraction: must be a number, got 'lots'"),
])
def test_bad_grid_is_a_one_line_error_before_any_run(tmp_path: Path, grid: dict[str, list[str]],
                                                     needle: str) -> None:
    runner = CountingRunner()
    with pytest.raises(ValueError) as err:
        run_sweep("quick", grid, 1, tmp_path / "sw", run_fn=runner, validate_fn=_validate)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert runner.calls == [] and not (tmp_path / "sw").exists()


def test_fixed_overrides_reach_every_run(tmp_path: Path) -> None:
    runner = CountingRunner()
    run_sweep("quick", {"coreset.method": ["acs", "random"]}, 1, tmp_path / "sw",
              run_fn=runner, validate_fn=_validate, fixed={"coreset.fraction": "0.3"})
    assert [c["coreset.fraction"] for c in runner.calls] == ["0.3", "0.3"]
    with pytest.raises(ValueError, match="coreset.method: given both"):
        run_sweep("quick", {"coreset.method": ["acs"]}, 1, tmp_path / "sw2", run_fn=runner,
                  fixed={"coreset.method": "random"})
    with pytest.raises(ValueError, match="coreset.fraction: must be a number"):
        run_sweep("quick", {"coreset.method": ["acs"]}, 1, tmp_path / "sw3", run_fn=runner,
                  validate_fn=_validate, fixed={"coreset.fraction": "x"})


@pytest.mark.parametrize(("items", "needle"), [
    (["coreset.method"], "expected KEY=V1,V2"),
    (["coreset.method=acs,,random"], "coreset.method: empty value"),
    (["a=1", "a=2"], "a: given twice"),
    (["federation.seed=1,2"], "federation.seed: set seeds with --seeds"),
])
def test_parse_grid_errors(items: list[str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_grid(items)


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleet")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_main_uses_runner_and_real_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: simulations.run.scenario may not exist yet; install a fake module.
    runner = CountingRunner()
    monkeypatch.setitem(sys.modules, "simulations.run.scenario",
                        types.SimpleNamespace(run_scenario=runner, check_scenario=lambda scenario, overrides: None))
    # Execute
    ok = main(_cli(["sweep", "quick", "--grid", "coreset.fraction=0.1,0.5", "--seeds", "1",
                    "--out", str(tmp_path / "sw")]))
    bad = main(_cli(["sweep", "quick", "--grid", "coreset.fraction=0.1,abc", "--seeds", "2",
                     "--out", str(tmp_path / "sw2")]))
    # Assert
    err = capsys.readouterr().err.strip()
    assert ok == 0 and len(runner.calls) == 2 and (tmp_path / "sw" / "sweep.csv").exists()
    assert bad == 2 and err.startswith("fleet sweep: error:") and "\n" not in err
    assert "coreset.fraction" in err


def test_jobs_run_in_a_process_pool(tmp_path: Path) -> None:
    grid = {"coreset.fraction": ["0.1", "0.5"]}
    result = run_sweep("quick", grid, 1, tmp_path / "sw", jobs=2, run_fn=fake_run)
    assert (result.ran, result.failed) == (2, {})
    assert [r["status"] for r in _rows(result.csv_path)] == ["complete", "complete"]
    shutil.rmtree(tmp_path / "sw")
