"""The learning benchmark: a digits smoke run of two cells, and the table it prints from hand-made results."""

from __future__ import annotations

import json
import math
from pathlib import Path

from simulations.benchmarks import learning


def test_quick_run_writes_project_and_anchor_per_cell(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "learning.json"
    # Execute: one single-device and one federated cell, one seed, tiny budgets on digits
    learning.main(["--quick", "--seeds", "1", "--cells", "single-w2a2-1pct,fed-w2a2", "--out", str(out)])
    # Assert
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"single-w2a2-1pct", "fed-w2a2"}
    for cell in res["runs"].values():
        run = cell["0"]
        assert 0.0 <= run["project"]["final"] <= 1.0 and 0.0 <= run["anchor"]["final"] <= 1.0
        assert run["project"]["curve"][0] is not None  # round 0: the starting model
    assert len(res["runs"]["fed-w2a2"]["0"]["anchor"]["curve"]) == 2  # the quick budget's 2 rounds
    assert res["machine"]["commit"] is not None


def test_a_second_invocation_resumes_instead_of_rerunning(tmp_path: Path) -> None:
    out = tmp_path / "learning.json"
    done = {"project": {"final": 0.5, "float": 0.9, "curve": [0.1, 0.5], "wall_s": 1.0},
            "anchor": {"final": 0.4, "curve": [0.4], "wall_s": 1.0}, "config": {}}
    out.write_text(json.dumps({"benchmark": "learning", "runs": {"single-w2a2-1pct": {"0": done}}}))
    res = learning.main(["--quick", "--seeds", "1", "--cells", "single-w2a2-1pct", "--out", str(out)])
    assert res["runs"]["single-w2a2-1pct"]["0"] == done  # kept, not re-measured


def test_table_reports_mean_interval_last5_and_swing() -> None:
    # Prepare: two seeds of a federated cell, curves of 11 points (round 0..10)
    curve_a = [0.1] + [0.5] * 5 + [0.90, 0.92, 0.94, 0.96, 0.98]  # last 5 mean 0.94; largest step 0.40 (0.5 -> 0.9)
    curve_b = [0.1] + [0.5] * 5 + [0.92, 0.94, 0.96, 0.98, 1.00]  # last 5 mean 0.96
    run = lambda c: {"project": {"final": c[-1], "float": 0.97, "curve": c},  # noqa: E731
                     "anchor": {"final": c[-1], "curve": c}}
    results = {"runs": {"fed-w4a4": {"0": run(curve_a), "1": run(curve_b)}}}
    # Execute
    text = learning.table(results)
    # Assert: mean of the last-5 means is 95.0; the t interval of (94, 96) at n = 2 is 12.706 * 1 = 12.7
    row = [line for line in text.splitlines() if line.startswith("| fed-w4a4")][0]
    assert "95.00 ± 12.71" in row and "| 2 |" in row
    assert math.isclose(learning._swing(curve_a), 0.40, abs_tol=1e-9)
