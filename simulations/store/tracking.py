"""Experiment tracking beside the JSONL files: ``rounds.csv`` for spreadsheets, and TensorBoard (optional).

``rounds.csv`` is ``rounds.jsonl`` as a table (one row per round, ``status_counts`` spread into
``status_counts/<status>`` columns), rewritten atomically after every round so it is always complete.

With ``output.tensorboard = true`` the run also writes TensorBoard event files under
``RUN_DIR/tensorboard/`` (``torch.utils.tensorboard``; needs the ``tensorboard`` package,
``pip install 'edgefleet[tensorboard]'``): every numeric column of ``rounds.jsonl`` as a scalar
(``round/<column>``, the strategy's own metrics included), the devices' distributions each round as
histograms (``devices/<field>`` over the devices that trained), and the resolved config as text.
``tensorboard --logdir runs/`` then compares every run on one screen.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fleet.atomic import write_text_atomic
from fleet.protocol import DeviceReport

__all__ = ["ROUNDS_CSV", "TENSORBOARD_DIR", "DEVICE_FIELDS", "RoundsCsv", "TensorBoardLog", "tensorboard_available"]

ROUNDS_CSV = "rounds.csv"
TENSORBOARD_DIR = "tensorboard"
DEVICE_FIELDS = ("accuracy", "loss", "sim_time_s", "energy_j", "uplink_bytes", "train_samples", "coreset_size")


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if not isinstance(v, dict)}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": vv for kk, vv in v.items()})
    return out


class RoundsCsv:
    """``rounds.csv``: every round line so far, columns in order of first appearance."""

    def __init__(self, run_dir: Path, rows: Sequence[dict[str, Any]] = ()) -> None:
        self.path = run_dir / ROUNDS_CSV
        self.rows = [_flat(r) for r in rows]  # a resumed run starts from the lines on disk

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(_flat(row))
        columns: dict[str, None] = {}
        for r in self.rows:
            columns.update(dict.fromkeys(r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in columns} for r in self.rows)
        write_text_atomic(self.path, buf.getvalue())


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Round scalars, device histograms and the config, as TensorBoard events under ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: Path, config_toml: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
        self.writer.add_text("config", "```toml\n" + config_toml + "\n```", 0)

    def add(self, row: dict[str, Any], reports: Sequence[DeviceReport] = ()) -> None:
        step = int(row["round"])
        for k, v in _flat(row).items():
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(f"round/{k}", v, step)
        done = [r for r in reports if r.status == "ok"]
        for name in DEVICE_FIELDS:
            values = np.array([getattr(r, name) for r in done], dtype=np.float64)
            values = values[np.isfinite(values) & (values >= 0)]  # MISSING (-1) is not a value
            if len(values):
                self.writer.add_histogram(f"devices/{name}", values, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
