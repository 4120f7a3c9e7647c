"""The coreset benchmark: its accounting helpers (fast) and a --quick smoke run (slow: starts Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simulations.benchmarks.coreset import ROWS, _cells, _run_budget, main, markdown_table, summarise
from simulations.benchmarks.coreset_fed import selection_share


def test_selection_share_counts_training_as_three_forwards() -> None:
    # Execute / Assert: 600 / (600 + 3*100 + 100) = 0.6, and no work is share 0
    assert selection_share(600, 100, 100) == pytest.approx(0.6)
    assert selection_share(0, 0, 0) == 0.0


def test_cells_cover_every_row_and_full_once_per_bits() -> None:
    # Execute
    cells = _cells({"rows": list(ROWS)})

    # Assert: 2 bits x (6 coreset rows x 2 fractions + full once)
    assert len(cells) == 2 * (6 * 2 + 1)
    assert [c for c in cells if c[2] == "full"] == [(2, 1.0, "full"), (4, 1.0, "full")]


def test_summarise_pools_seeds_per_cell() -> None:
    # Prepare: two seeds of one cell, accuracies 0.5 and 0.7
    base = {"wall_s": 10.0, "selection_s": 5.0, "kd_clc_ratio": 1.0, "clc_beta": 10.0}
    runs = {"single/x|W2A2|0.1|quarc|seed0": {**base, "accuracy": 0.5},
            "single/x|W2A2|0.1|quarc|seed1": {**base, "accuracy": 0.7}}

    # Execute
    s = summarise(runs)["single/x|W2A2|0.1|quarc"]

    # Assert: mean 0.6; half-width t(0.975, 1) * s / sqrt(2) = 12.7062 * 0.1414 / 1.4142 = 1.2706
    assert s["n"] == 2 and s["accuracy_mean"] == pytest.approx(0.6)
    assert s["accuracy_ci95"] == pytest.approx(1.2706, abs=1e-3)
    assert s["selection_share_mean"] == pytest.approx(0.5)


def test_markdown_table_puts_full_on_the_first_fraction_line_only() -> None:
    # Prepare: one seed-pooled cell per row shown
    cell = {"n": 5, "accuracy_mean": 0.5, "accuracy_ci95": 0.02}
    summary = {"fed/x|W2A2|0.01|quarc": cell, "fed/x|W2A2|0.1|quarc": {**cell, "accuracy_mean": 0.6},
               "fed/x|W2A2|1|full": {**cell, "accuracy_mean": 0.9}}

    # Execute
    lines = markdown_table(summary, ["fed/x"]).splitlines()

    # Assert: only the rows that ran are columns; full appears once
    assert lines[0] == "| setting | bits | quarc | full |"
    assert lines[2] == "| fed/x 1% | W2A2 | 50.0 ± 2.0 | 90.0 ± 2.0 |"
    assert lines[3] == "| fed/x 10% | W2A2 | 60.0 ± 2.0 |  |"


def test_resume_ignores_budget_keys_that_only_choose_cells() -> None:
    # Execute / Assert: more rows or seeds keep finished runs; a different epoch count does not
    base = {"epochs": 4, "reselect": 2, "test": 1000}
    assert _run_budget({**base, "rows": ["random"], "seeds": 3}) == _run_budget({**base, "seeds": 5})
    assert _run_budget({**base, "epochs": 5}) != _run_budget(base)
    assert _run_budget(None) is None


@pytest.mark.slow
def test_quick_run_writes_json(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "coreset.json"

    # Execute
    main(["--quick", "--out", str(out)])

    # Assert: every quick run is recorded with a finite accuracy and the machine block
    rec = json.loads(out.read_text())
    assert rec["quick"] is True and rec["machine"]["cores"] >= 1 and rec["machine"]["git_commit"]
    assert any(k.startswith("fed/") for k in rec["runs"]) and any(k.startswith("single/") for k in rec["runs"])
    assert all(math.isfinite(r["accuracy"]) for r in rec["runs"].values())
    assert set(rec["probe"]) == {"single/mnist14|W2A2", "single/mnist14|W4A4", "fed/mnist14|W4A4"}  # per setting
