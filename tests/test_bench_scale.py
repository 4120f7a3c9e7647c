"""Smoke test of the scale benchmark's --quick mode (20 devices, 2 rounds, vanilla vs edgefleet-fp32).

Slow: two fresh subprocesses that each start Ray (about 40 s each on 2 busy cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.benchmarks.scale import main

pytestmark = pytest.mark.slow


def test_quick_run_writes_a_complete_record(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = tmp_path / "scale.json"

    # Execute
    main(["--quick", "--work", str(tmp_path / "work"), "--out", str(out)])

    # Assert: the table was printed and the JSON carries settings, machine, commit and both cases
    printed = capsys.readouterr().out
    assert "ms/dev-round" in printed and "edgefleet-fp32" in printed
    record = json.loads(out.read_text())
    assert record["settings"]["devices"] == 20 and record["settings"]["rounds"] == 2
    assert {"cpu_count", "memory_gb", "torch", "flwr", "ray"} <= set(record["machine"])
    assert len(record["git_commit"]) == 40
    assert set(record["summary"]) == {"vanilla", "edgefleet-fp32"}
    for run in record["runs"]:
        assert len(run["round_wall_s"]) == 2
        assert run["peak_rss_mb"] > 0 and run["mem_samples"] > 0
        assert run["s_per_device_round_rounds"] > 0
    assert record["summary"]["edgefleet-fp32"]["ratio_rounds"]["median_paired"] > 0
