"""fleet report and the run-directory reader, on small synthetic run directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from rundir_factory import assert_readable_png, png_size, write_run

from simulations.analysis.plots.data import plot_continual, plot_partition, plot_qgt
from simulations.analysis.plots.run import plot_accuracy_rounds
from simulations.analysis.report import RUN_FIGURES, add_parser, main, render_markdown, write_report
from simulations.store.rundir import RunDirError, load_run


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One complete synthetic run with every optional file, reported once for all tests."""
    run_dir = write_run(tmp_path_factory.mktemp("runs") / "run", rounds=6)
    write_report(run_dir)
    return run_dir


@pytest.mark.parametrize("stem", list(RUN_FIGURES))
def test_each_figure_is_a_readable_png(reported: Path, stem: str) -> None:
    assert_readable_png(reported / "plots" / f"{stem}.png")


def test_report_md_embeds_every_figure_by_relative_path(reported: Path) -> None:
    text = (reported / "report.md").read_text()
    for stem in RUN_FIGURES:
        assert f"](plots/{stem}.png)" in text
    assert "| Final accuracy (global model) |" in text
    assert "| FP reference accuracy | 90.00% |" in text
    assert "INCOMPLETE" not in text


def test_report_numbers_come_from_summary(reported: Path) -> None:
    # Prepare: the factory's summary says uplink = sum of round uplinks, wall 10 s, sim 20 s.
    summary = json.loads((reported / "summary.json").read_text())
    text = (reported / "report.md").read_text()
    # Assert: 25 kB model against 200 kB FP32 is 8.0x smaller.
    assert f"{100 * summary['final_accuracy']:.2f}%" in text
    assert "| Wall time / simulated time | 10.0 s / 20.0 s |" in text
    assert "8.0x smaller" in text


def test_optional_figures_are_skipped_when_absent(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run", qgt=False, continual=False))
    assert plot_qgt(run, tmp_path / "q.png") is None
    assert plot_continual(run, tmp_path / "c.png") is None
    assert not (tmp_path / "q.png").exists() and not (tmp_path / "c.png").exists()


def test_many_devices_partition_shows_a_subset(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path / "run", num_devices=150, per_round=20, rounds=2,
                             qgt=False, continual=False))
    path = plot_partition(run, tmp_path / "partition.png")
    assert path is not None
    assert_readable_png(path)
    assert png_size(path)[1] < 1400  # 40 rows shown, not 150


def test_half_written_run_is_incomplete_not_an_error(tmp_path: Path) -> None:
    # Prepare: a crashed run: no summary, and half a line at the end of rounds.jsonl.
    run_dir = write_run(tmp_path / "run", rounds=5, complete=False, truncate_last=True,
                        qgt=False, continual=False)
    # Execute
    run = load_run(run_dir)
    text = render_markdown(run, [])
    figure = plot_accuracy_rounds(run, tmp_path / "acc.png")
    # Assert
    assert run.incomplete and run.status == "missing"
    assert [r["round"] for r in run.rounds] == [0, 1, 2, 3, 4]  # round 0: the starting model
    assert any("truncated last line" in n for n in run.notes)
    assert "INCOMPLETE" in text and "truncated last line" in text
    assert "| Rounds completed / planned | 4 / ? |" in text  # from rounds.jsonl, round 0 not counted
    assert figure is not None
    assert_readable_png(figure)


def test_running_summary_is_incomplete(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", complete=False, summary_extra={"status": "running"},
                        qgt=False, continual=False)
    run = load_run(run_dir)
    assert run.incomplete
    assert "INCOMPLETE (running)" in render_markdown(run, [])


def test_not_a_run_directory_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError) as err:
        load_run(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(RunDirError, match="not a directory"):
        load_run(tmp_path / "nope")


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", rounds=3)
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (run_dir / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(RunDirError, match="line 2"):
        load_run(run_dir)


def test_cli_main_reports_and_rejects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare: parse through the registered subparser, as the lead's CLI will.
    parser = argparse.ArgumentParser(prog="fleet")
    add_parser(parser.add_subparsers(dest="command"))
    run_dir = write_run(tmp_path / "run", rounds=2, qgt=False, continual=False)
    (tmp_path / "junk").mkdir()
    # Execute
    ok = main(parser.parse_args(["report", str(run_dir)]))
    bad = main(parser.parse_args(["report", str(tmp_path / "junk")]))
    # Assert
    err = capsys.readouterr().err.strip()
    assert ok == 0 and (run_dir / "report.md").exists()
    assert bad == 2
    assert err.count("\n") == 0 and "junk" in err and err.startswith("fleet report: error:")
