"""Smoke test of the deploy benchmark's --quick mode: the quickstart at 2 rounds, its deployment figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.benchmarks.deploy import main

pytestmark = pytest.mark.slow


def test_quick_run_records_size_and_agreements(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))
    main(["--quick", "--out", str(tmp_path / "deploy.json")])
    record = json.loads((tmp_path / "deploy.json").read_text())
    (row,) = record["rows"]
    assert row["cell"] == "quickstart" and row["overrides"] == {"federation.rounds": 2}
    assert 0 < row["model_size_bytes"] < row["fp32_model_size_bytes"] and row["onnx_bytes"] > 0
    assert row["integer_agreement"] >= 0.995 and row["onnx_unfused_agreement"] >= 0.995
    assert row["integer_float_ops"] == ["fc1", "classifier"]
    assert "| quickstart |" in capsys.readouterr().out
