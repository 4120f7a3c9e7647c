"""rounds.csv and TensorBoard: what a spreadsheet and TensorBoard see of a run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from fleet.config.scenario import ConfigError, parse_config
from fleet.protocol import DeviceReport
from simulations.store import tracking
from simulations.store.tracking import RoundsCsv, TensorBoardLog

ROW0 = {"round": 0, "accuracy": 0.5, "loss": None, "status_counts": {"ok": 0, "failed": 0}}
ROW1 = {"round": 1, "accuracy": 0.75, "loss": 0.4, "status_counts": {"ok": 2, "failed": 1},
        "strategy/clip-fraction": 0.25}


def test_rounds_csv_is_the_jsonl_as_a_table(tmp_path: Path) -> None:
    # Prepare / Execute: round 0 on disk already (a resumed run), then round 1 with a new column
    table = RoundsCsv(tmp_path, [ROW0])
    table.add(ROW1)

    # Assert: one header of every column in order of appearance, dicts spread, None empty
    rows = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    assert list(rows[0]) == ["round", "accuracy", "loss", "status_counts/ok", "status_counts/failed",
                             "strategy/clip-fraction"]
    assert rows[0]["loss"] == "" and rows[0]["strategy/clip-fraction"] == ""
    assert rows[1] == {"round": "1", "accuracy": "0.75", "loss": "0.4", "status_counts/ok": "2",
                       "status_counts/failed": "1", "strategy/clip-fraction": "0.25"}


def test_tensorboard_gets_round_scalars_device_histograms_and_the_config(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Prepare: two devices trained, one failed (not in the histogram)
    reports = [DeviceReport(device=0, accuracy=0.5, loss=1.0), DeviceReport(device=1, accuracy=0.9, loss=0.2),
               DeviceReport(device=2, status="failed")]

    # Execute
    log = TensorBoardLog(tmp_path, 'seed = 0\n')
    log.add(ROW0)
    log.add(ROW1, reports)
    log.close()

    # Assert
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"round/accuracy", "round/status_counts/ok", "round/strategy/clip-fraction"} <= set(tags["scalars"])
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("round/accuracy")] == [(0, 0.5), (1, 0.75)]
    assert "round/loss" in tags["scalars"] and len(acc.Scalars("round/loss")) == 1  # None is not logged
    hist = acc.Histograms("devices/accuracy")
    assert len(hist) == 1 and hist[0].step == 1 and hist[0].histogram_value.num == 2
    assert "config/text_summary" in tags["tensors"]


def test_tensorboard_without_the_package_is_one_line_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from simulations.run.scenario import preflight

    monkeypatch.setattr(tracking, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^output.tensorboard: needs the tensorboard package"):
        preflight(parse_config({"output.tensorboard": True}))
