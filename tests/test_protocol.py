"""Wire contract: instructions and reports survive Flower records; rows use None for absent numbers."""

from __future__ import annotations

import dataclasses

from fleet.protocol import MISSING, WEIGHT_KEY, DeviceInstruction, DeviceReport


def test_instruction_round_trip() -> None:
    # Prepare
    ins = DeviceInstruction(server_round=3, device=17, profile="rpi4", weight_bits=4, act_bits=8,
                            participation=2, ref_hash="abc123", deadline_s=12.5, fault="crash",
                            proximal_mu=0.01, batch_size=16)
    # Execute
    rec = ins.to_record()
    back = DeviceInstruction.from_record(rec)
    # Assert
    assert back == ins
    assert rec["server-round"] == 3 and rec["ref-hash"] == "abc123" and rec["proximal-mu"] == 0.01


def test_instruction_from_record_fills_defaults() -> None:
    ins = DeviceInstruction(1, 0, "mcu", 4, 4, 0, "h")
    rec = ins.to_record()
    for key in ("deadline-s", "fault", "proximal-mu", "batch-size"):
        del rec[key]
    assert DeviceInstruction.from_record(rec) == ins


def test_report_round_trip_with_extra() -> None:
    # Prepare: every field off its default, extra metrics included
    rep = DeviceReport(device=5, status="straggler", profile="phone-low", method="quarc", fault="hang",
                       error="late", bits=4, weight=42.0, local_size=100, coreset_size=42, train_samples=84,
                       scoring_passes=1, teacher_passes=2, accuracy=0.75, loss=0.5, uplink_bytes=1000,
                       downlink_bytes=2000, compute_s=1.5, comm_s=0.25, sim_time_s=1.75, energy_j=3.0,
                       peak_mem_mb=12.5, wall_s=0.1, batch_size=16, extra={"clc-loss": 0.125, "kd": 2.0})
    # Execute
    metrics, report = rep.to_records()
    back = DeviceReport.from_records(metrics, report)
    # Assert
    assert back == rep
    assert metrics[WEIGHT_KEY] == 42.0 and metrics["x-clc-loss"] == 0.125
    assert report["status"] == "straggler" and "status" not in metrics
    assert isinstance(back.bits, int) and isinstance(back.loss, float)


def test_report_defaults_round_trip() -> None:
    rep = DeviceReport(device=0)
    assert DeviceReport.from_records(*rep.to_records()) == rep


def test_as_row_turns_missing_into_none() -> None:
    # Prepare
    rep = DeviceReport(device=1, status="failed", error="boom", extra={"kd": 1.5})
    # Execute
    row = rep.as_row()
    # Assert
    assert rep.accuracy == MISSING and row["accuracy"] is None and row["loss"] is None
    assert row["fault"] is None and row["error"] == "boom"
    assert row["kd"] == 1.5
    assert "weight" not in row and "extra" not in row
    names = {f.name for f in dataclasses.fields(DeviceReport)} - {"weight", "extra"}
    assert names <= set(row)


def test_as_row_keeps_real_numbers() -> None:
    row = DeviceReport(device=1, accuracy=0.0, loss=2.5).as_row()
    assert row["accuracy"] == 0.0 and row["loss"] == 2.5
