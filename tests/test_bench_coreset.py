"""The coreset benchmark: its accounting helpers (fast) and a --quick smoke run (slow: starts Ray)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from simulations.benchmarks.coreset import ROWS, _cells, main, summarise
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
    assert set(rec["probe"]) == {"mnist14|W2A2", "mnist14|W4A4"}
