"""fleet compare: grouping by differing config keys, seeds pooled, intervals by hand."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from rundir_factory import assert_readable_png, base_config, write_run

from simulations.analysis.compare import (
    add_parser,
    compare_runs,
    expand_run_dirs,
    main,
    result_from_run,
    varying_keys,
)
from simulations.store.rundir import load_run


def _runs(root: Path) -> list[Path]:
    """Two methods x two fractions x 3 seeds, with hand-chosen final accuracies for acs@0.2."""
    paths = []
    for method in ("acs", "random"):
        for frac in (0.2, 0.5):
            for seed in range(3):
                cfg = base_config(seed)
                cfg["coreset"] = {"method": method, "fraction": frac}
                acc = 0.70 + 0.02 * seed if (method, frac) == ("acs", 0.2) else 0.6 + frac / 2
                paths.append(write_run(
                    root / f"{method}-{frac}-{seed}", seed=seed, config=cfg, rounds=3,
                    qgt=False, continual=False, summary_extra={"final_accuracy": acc},
                    uplink_per_device=int(20_000 * (1 + frac))))
    return paths


def test_varying_keys_ignore_seed_output_and_ray(tmp_path: Path) -> None:
    runs = [load_run(p) for p in _runs(tmp_path)]
    assert varying_keys(runs) == ["coreset.fraction", "coreset.method"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """compare.md of the 12 runs of :func:`_runs` plus one crashed run."""
    root = tmp_path_factory.mktemp("cmp")
    _runs(root / "runs")
    write_run(root / "runs" / "crashed", complete=False, qgt=False, continual=False)
    return compare_runs([root / "runs"], root / "cmp")


def test_seeds_are_pooled_with_hand_computed_interval(compared: Path) -> None:
    # Prepare: acs@0.2 has 0.70, 0.72, 0.74 -> mean 72.00%, half-width
    # t(2) * 0.02 / sqrt(3) = 4.3027 * 0.011547 = 0.049683 -> "72.00 ± 4.97".
    # Execute: the fixture ran compare_runs.
    text = compared.read_text()
    # Assert
    row = next(line for line in text.splitlines() if "| 0.2 | acs |" in line)
    assert "72.00 ± 4.97" in row and "| 3 seeds: 0,1,2 |" in row
    assert text.count("| 0.5 | random |") == 1  # one row per setting, not per seed
    for stem in ("accuracy_by_setting", "accuracy_vs_uplink", "accuracy_vs_fraction"):
        assert_readable_png(compared.parent / "plots" / f"{stem}.png")
        assert f"(plots/{stem}.png)" in text


def test_incomplete_runs_are_listed_not_averaged(compared: Path) -> None:
    text = compared.read_text()
    assert "13 run(s), 4 setting(s)" in text
    assert "Left out of the statistics" in text and "crashed`: missing" in text


def test_single_seed_has_no_interval(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", seed=0, qgt=False, continual=False,
                  summary_extra={"final_accuracy": 0.5})
    res = result_from_run(load_run(a), [])
    assert res.status == "complete" and res.seed == 0
    text = compare_runs([a], tmp_path / "cmp").read_text()
    assert "| 50.00 |" in text and "nothing differs" in text


def test_expand_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _runs(tmp_path / "runs")
    (tmp_path / "empty").mkdir()
    assert expand_run_dirs([tmp_path / "runs"]) == sorted(paths)
    parser = argparse.ArgumentParser(prog="fleet")
    add_parser(parser.add_subparsers(dest="command"))
    code = main(parser.parse_args(["compare", str(tmp_path / "empty"), "--out",
                                   str(tmp_path / "o")]))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "empty" in err and "not a run directory" in err
