"""Comparison figures and tables that tell the truth: labels, seed counting, flwr runs, one-value axes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from rundir_factory import base_config, capture_saves, write_run

from simulations.analysis import compare
from simulations.analysis.compare import compare_runs, result_from_run, varying_keys
from simulations.analysis.plots import compare as compare_plots
from simulations.analysis.stats import mean_ci95
from simulations.store.rundir import load_run


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every comparison figure saved, in order (the PNG is still written)."""
    return capture_saves(monkeypatch, compare_plots)


def _run(root: Path, name: str, *, seed: int = 0, acc: float = 0.8, uplink: int = 20_000,
         **tables: dict[str, Any]) -> Path:
    cfg = base_config(seed)
    cfg.update(tables)
    return write_run(root / name, seed=seed, config=cfg, rounds=2, qgt=False, continual=False,
                     summary_extra={"final_accuracy": acc}, uplink_per_device=uplink)


def _row(text: str, start: str) -> list[str]:
    line = next(x for x in text.splitlines() if x.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


# -- item 5: accuracy against uplink with one uplink value ---------------------------------------


def test_uplink_figure_is_a_note_when_every_setting_sends_the_same_bytes(tmp_path: Path) -> None:
    for method in ("acs", "random"):
        _run(tmp_path / "runs", method, coreset={"method": method, "fraction": 0.2})
    text = compare_runs([tmp_path / "runs"], tmp_path / "cmp").read_text()
    assert not (tmp_path / "cmp" / "plots" / "accuracy_vs_uplink.png").exists()
    section = text.split("### Accuracy against uplink bytes")[1].split("###")[0]
    assert "Not drawn: each of the 2 settings sent the same uplink per run" in section
    assert (tmp_path / "cmp" / "plots" / "accuracy_by_setting.png").exists()


def test_uplink_figure_is_drawn_with_two_uplink_values(tmp_path: Path) -> None:
    for method, up in (("acs", 20_000), ("random", 30_000)):
        _run(tmp_path / "runs", method, uplink=up, coreset={"method": method, "fraction": 0.2})
    text = compare_runs([tmp_path / "runs"], tmp_path / "cmp").read_text()
    assert "(plots/accuracy_vs_uplink.png)" in text and "Not drawn" not in text


# -- item 6: labels ------------------------------------------------------------------------------


def test_labels_name_only_differing_keys_and_are_never_cut(tmp_path: Path,
                                                           figures: list[Figure]) -> None:
    # Prepare: long keys differ first in alphabetical order, the method last; a crashed run
    # differs in one more key that the complete runs share.
    for method in ("acs", "random"):
        _run(tmp_path / "runs", method, coreset={"method": method, "fraction": 0.2},
             data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.5,
                   "min-partition-size-for-this-test": 4 if method == "acs" else 5})
    crashed = base_config(0)
    crashed["train"] = {"local-epochs": 3, "lr": 0.005}
    write_run(tmp_path / "runs" / "zz-crashed", config=crashed, complete=False, qgt=False,
              continual=False)
    # Execute
    compare_runs([tmp_path / "runs"], tmp_path / "cmp")
    # Assert: every differing key=value in full; the key only the crashed run changes is absent.
    ticks = [t.get_text() for t in figures[0].axes[0].get_yticklabels()]
    flat = [t.replace("\n", " ") for t in ticks]
    assert flat == ["#1 coreset.method=acs, data.min-partition-size-for-this-test=4",
                    "#2 coreset.method=random, data.min-partition-size-for-this-test=5"]
    assert all(max(len(line) for line in t.splitlines()) <= 45 for t in ticks)  # wrapped
    assert "train.local-epochs" not in " ".join(ticks)


def test_wrap_label_keeps_pairs_whole_and_counts_what_it_leaves_out() -> None:
    pairs = [f"section.key-number-{i}=value{i}" for i in range(10)]
    text = compare_plots.wrap_label(", ".join(pairs), 40, max_lines=4, ref="row #1")
    lines = text.splitlines()
    assert len(lines) == 4 and lines[-1] == "(+7 more: row #1)"
    assert all(p in text for p in pairs[:3])
    assert compare_plots.wrap_label(", ".join(pairs), 40).replace(",\n", ", ") == ", ".join(pairs)


# -- item 6: seeds -------------------------------------------------------------------------------


def test_two_runs_of_one_seed_are_one_seed_without_interval(tmp_path: Path) -> None:
    _run(tmp_path / "runs", "a", seed=0, acc=0.70)
    _run(tmp_path / "runs", "b", seed=0, acc=0.74)
    text = compare_runs([tmp_path / "runs"], tmp_path / "cmp").read_text()
    row = _row(text, "| 1 |")
    assert row[1] == "1 seed (2 runs): 0"
    assert row[2] == "72.00"  # the mean of the two, and no "± 0.00" or any interval
    assert "repeat a seed" in text and "not independent" in text


def test_interval_is_over_distinct_seeds(tmp_path: Path) -> None:
    for name, seed, acc in (("a", 0, 0.70), ("b", 0, 0.74), ("c", 1, 0.80)):
        _run(tmp_path / "runs", name, seed=seed, acc=acc)
    runs = [load_run(p) for p in sorted((tmp_path / "runs").iterdir())]
    group = compare.group_results([result_from_run(r, []) for r in runs], [])[0]
    mean, half, n = group.stat("final_accuracy")
    want_mean, want_half = mean_ci95([0.72, 0.80])  # seed 0's two runs count once
    assert (n, mean, half) == (2, pytest.approx(want_mean), pytest.approx(want_half))
    assert group.seeds_text == "2 seeds (3 runs): 0,1"


# -- item 6: a flwr run of the same scenario -------------------------------------------------------


def test_flwr_run_of_the_same_scenario_is_the_same_setting(tmp_path: Path) -> None:
    # Prepare: `fleet run` lists the mix's one profile; `flwr run` lists every profile
    # (weights 0), records scenario "flwr", and writes elsewhere with other Ray settings.
    fleet_dir = _run(tmp_path / "runs", "fleet", seed=0, acc=0.80,
                     **{"devices.profiles": {"rpi4": 1.0}})
    flwr_dir = _run(tmp_path / "runs", "flwr", seed=1, acc=0.82,
                    **{"devices.profiles": {"phone-mid": 0.0, "mcu": 0.0, "rpi4": 1,
                                            "jetson-nano": 0.0},
                       "ray": {"num-cpus-per-device": 2.0, "address": "auto"},
                       "output": {"dir": "runs/flwr/x"}})
    summary = flwr_dir / "summary.json"
    summary.write_text(summary.read_text().replace('"synthetic"', '"flwr"'))
    runs = [load_run(fleet_dir), load_run(flwr_dir)]
    # Execute
    keys = varying_keys(runs)
    text = compare_runs([fleet_dir, flwr_dir], tmp_path / "cmp").read_text()
    # Assert
    assert keys == []
    assert "2 run(s), 1 setting(s)" in text and "nothing differs" in text
    assert _row(text, "| 1 |")[1] == "2 seeds: 0,1"


def test_a_real_profile_difference_still_counts(tmp_path: Path) -> None:
    a = _run(tmp_path, "a", **{"devices.profiles": {"rpi4": 1.0}})
    b = _run(tmp_path, "b", **{"devices.profiles": {"rpi4": 0.5, "mcu": 0.5}})
    runs = [load_run(a), load_run(b)]
    keys = varying_keys(runs)
    assert keys == ["devices.profiles.mcu", "devices.profiles.rpi4"]
    assert result_from_run(runs[0], keys).setting == ("0", "1")
    assert result_from_run(runs[1], keys).setting == ("0.5", "0.5")
