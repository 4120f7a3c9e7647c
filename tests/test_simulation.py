"""Whole-stack runs: a handful of devices through Flower's simulation engine and Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from whole_run import run_flat

pytestmark = pytest.mark.slow

BASE = {
    "federation.num-devices": 6, "federation.devices-per-round": 3, "federation.rounds": 2,
    "federation.seed": 3, "data.dataset": "digits", "model.arch": "mlp", "model.pretrain-epochs": 3,
    "train.batch-size": 16, "ray.num-cpus": 2,
}


def _run(tmp_path: Path, name: str, **over: object) -> tuple[dict, list[dict], list[dict]]:
    return run_flat({**BASE, **over}, tmp_path / name, name)


def test_float_fedavg_is_complete_and_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a private cache, so the reference is pretrained once and then reused
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))

    # Execute: the same scenario twice
    s1, r1, d1 = _run(tmp_path, "a")
    s2, r2, d2 = _run(tmp_path, "b")

    # Assert: every file is there, the summary is complete, and the same seed gives the same metrics
    for f in ("config.toml", "rounds.jsonl", "devices.jsonl", "summary.json", "partition.json", "model.safetensors"):
        assert (tmp_path / "a" / f).is_file(), f
    assert s1["status"] == "complete" and s1["rounds_completed"] == 2
    assert s1["device_rounds_completed"] == 6 and s1["uplink_bytes"] > 0 and s1["downlink_bytes"] > 0
    assert [r["accuracy"] for r in r1] == [r["accuracy"] for r in r2]
    assert [(d["device"], d["loss"]) for d in d1] == [(d["device"], d["loss"]) for d in d2]
    assert s1["final_accuracy"] > 0.3  # well above chance (0.1) on digits


def test_low_bit_quarc_run_with_crashing_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))

    # Execute: W2A2 with a QuaRC coreset, CLC, packed 2-bit uploads, and half the device-rounds crashing
    s, rounds, devices = _run(
        tmp_path, "q", **{"quant.weight-bits": 2, "quant.act-bits": 2, "quant.codec": "qweights",
                          "quant.keep-fp": "none", "devices.profiles.rpi4": 1.0, "coreset.method": "quarc",
                          "coreset.fraction": 0.5, "train.clc-beta": "auto", "faults.crash": 0.5})

    # Assert: the run completes, crashes are recorded as failures, survivors trained on their coreset
    assert s["status"] == "complete" and s["weight_bits"] == 2
    assert s["model_size_bytes"] < s["fp32_model_size_bytes"] / 8
    assert s["export_agreement"] >= 0.999
    assert s["integer_agreement"] >= 0.995 and s["onnx_unfused_agreement"] >= 0.995  # every layer integer here
    assert s["integer_float_ops"] == [] and (tmp_path / "q" / "model.onnx").stat().st_size == s["onnx_bytes"]
    failed = [d for d in devices if d["status"] == "failed"]
    ok = [d for d in devices if d["status"] == "ok"]
    assert failed and all("injected crash" in d["error"] for d in failed)
    assert ok and all(d["coreset_size"] <= d["local_size"] and d["scoring_passes"] > 0 for d in ok)
    assert all(d["bits"] == 2 for d in ok)
    assert sum(r["devices_failed"] for r in rounds) == len(failed)


def test_hanging_devices_time_out_and_the_round_closes_without_them(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: half the device-rounds hang past a short round timeout
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))

    # Execute
    s, rounds, devices = _run(tmp_path, "hang", **{"faults.hang": 0.4, "federation.round-timeout-s": 10.0})

    # Assert: the run completes; hung devices are failed with the timeout reason, the others trained
    hung = [d for d in devices if d["fault"] == "hang"]
    assert s["status"] == "complete" and s["rounds_completed"] == 2
    assert hung and all(d["status"] == "failed" and "round-timeout" in d["error"] for d in hung)
    assert any(d["status"] == "ok" for d in devices if d["fault"] is None)
