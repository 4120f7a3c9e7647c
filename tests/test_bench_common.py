"""The benchmarks' shared plumbing: machine facts under each benchmark's key names, atomic JSON, budgets, CI text."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from unittest import mock

import pytest

from simulations.benchmarks import common


def test_machine_renames_facts_and_keeps_their_order() -> None:
    # Execute: scale.json's names for three facts
    facts = common.machine(("cores", "memory_gib", "load_avg"),
                           rename={"cores": "cpu_count", "memory_gib": "memory_gb", "load_avg": "load_average"})

    # Assert
    assert list(facts) == ["cpu_count", "memory_gb", "load_average"]
    assert facts["cpu_count"] >= 1 and facts["memory_gb"] > 0 and len(facts["load_average"]) == 3


def test_machine_default_block_and_unknown_fact() -> None:
    # Execute
    facts = common.machine()

    # Assert: learning.json's and faults.json's key names; a misspelt fact is an error, not a missing key
    assert list(facts) == list(common.MACHINE_FACTS)
    assert facts["commit"] == common.git_commit() and facts["memory_gib"] == round(facts["memory_gib"], 1)
    with pytest.raises(KeyError, match="cpus"):
        common.machine(("cpus",))


def test_git_commit_falls_back_to_the_default_outside_git() -> None:
    # Execute / Assert: a 40-hex commit here; the caller's default when git cannot run
    assert len(common.git_commit()) == 40
    with mock.patch("subprocess.run", side_effect=OSError):
        assert common.git_commit() == "unknown" and common.git_commit(None) is None


def test_write_json_replaces_whole_files_only(tmp_path: Path) -> None:
    # Prepare: an earlier result
    path = tmp_path / "results" / "bench.json"
    common.write_json(path, {"runs": [1]})

    # Execute: a record that cannot be serialised, then a write interrupted before the rename
    with pytest.raises(TypeError):
        common.write_json(path, {"runs": [object()]})
    with mock.patch("os.replace", side_effect=KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        common.write_json(path, {"runs": [1, 2]})

    # Assert: the earlier result is intact and no temporary file is left beside it
    assert json.loads(path.read_text()) == {"runs": [1]} and path.read_text().endswith("\n")
    assert [p.name for p in path.parent.iterdir()] == ["bench.json"]
    assert common.read_json(path) == {"runs": [1]} and common.read_json(tmp_path / "absent.json") is None


def test_over_budget_predicts_the_next_run() -> None:
    # Prepare: 60 s spent
    start = time.perf_counter() - 60

    # Execute / Assert: one run of 60 s would end near 120 s; with no run only the time spent counts
    assert common.over_budget(start, 100, runs=1)
    assert not common.over_budget(start, 100, runs=0) and not common.over_budget(start, 200, runs=1)
    # a known duration of the next run (its cell's earlier records) replaces the mean of this invocation's runs
    assert not common.over_budget(start, 100, runs=1, next_s=30) and common.over_budget(start, 100, next_s=50)


def test_ci_text_skips_missing_values() -> None:
    # Execute / Assert: mean ± t interval in percent; one value has no interval; nothing left is `empty`
    assert common.ci_text([0.5, 0.7, None, math.nan], digits=1) == "60.0 ± 127.1"
    assert common.ci_text([0.5]) == "50.0"
    assert common.ci_text([None, math.nan], empty="-") == "-"
