"""Smoke test of the quantization benchmark (``--quick``: digits, W2A2, fp32 + qweights, one round).

It starts Ray twice (two runs), so it is marked slow; the byte accounting it checks is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.benchmarks.quant import aggregate, main, qat_step_summary

pytestmark = pytest.mark.slow


def test_quick_benchmark_writes_results(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "quant.json"

    # Execute
    result = main(["--quick", "--out", str(out), "--runs-dir", str(tmp_path / "runs")])

    # Assert: the JSON on disk is the returned result, with settings, commit and machine
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "quant" and saved["quick"] is True
    assert saved["machine"]["cores"] >= 1 and "torch" in saved["machine"]
    assert saved["settings"]["model.arch"] == "cnn" and saved["skipped"] == []
    fp32, qw = result["cells"]["W2A2/fp32"], result["cells"]["W2A2/qweights"]
    for cell in (fp32, qw):
        assert 0.0 <= cell["deployed_accuracy"]["mean"] <= 1.0
        assert cell["export_agreement_min"] >= 0.999
    # qweights sends 2-bit codes for the quantized convs: far fewer bytes than fp32
    assert qw["uplink_bytes_per_device_round"] < 0.25 * fp32["uplink_bytes_per_device_round"]
    assert fp32["ratio_vs_fp32"] == 1.0


def test_aggregate_bytes_and_ratio() -> None:
    # Prepare: two seeds of fp32 and one of qweights; hand-made numbers
    def run(seed: int, codec: str, acc: float, up: list[int], done: list[int]) -> dict:
        return {"seed": seed, "bits": 2, "codec": codec, "final_accuracy": acc, "fake_quant_accuracy": acc,
                "export_agreement": 1.0, "uplink_bytes_per_round": up, "model_size_bytes": 10,
                "uplink_bytes_per_device_round": sum(up) / sum(done)}
    runs = [run(0, "fp32", 0.5, [400, 200], [2, 1]), run(1, "fp32", 0.7, [400, 400], [2, 2]),
            run(0, "qweights", 0.6, [100, 50], [2, 1])]

    # Execute
    cells = aggregate(runs, (2,), ("fp32", "qweights"))

    # Assert: per round (600/2 = 300, 800/2 = 400 -> 350), per device-round 200 both, ratio 50/200
    fp32, qw = cells["W2A2/fp32"], cells["W2A2/qweights"]
    assert fp32["deployed_accuracy"]["mean"] == pytest.approx(0.6) and fp32["deployed_accuracy"]["n"] == 2
    assert fp32["uplink_bytes_per_round"] == pytest.approx(350.0)
    assert fp32["uplink_bytes_per_device_round"] == pytest.approx(200.0)
    assert qw["uplink_bytes_per_device_round"] == pytest.approx(50.0)
    assert qw["ratio_vs_fp32"] == pytest.approx(0.25)
    assert qw["deployed_accuracy"]["ci95"] is None  # one seed: no interval


def test_qat_step_summary_reads_committed_file() -> None:
    # Execute
    rows = qat_step_summary()

    # Assert: the committed qat_step.json has the cnn row
    cnn = next(r for r in rows if r["arch"] == "cnn")
    assert cnn["w4a4_ms"] > 0 and cnn["float_ms"] > 0
