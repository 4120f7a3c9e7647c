"""The run directory: config, per-round and per-device lines, summary (format: docs/results.md).

Lines are appended and flushed as each round ends, so a crash leaves every
finished round on disk. ``summary.json`` says ``"status": "running"`` until the run
ends; files are replaced atomically (write, then rename).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from fleet import atomic
from fleet.config.scenario import ScenarioConfig, unflatten
from fleet.protocol import STATUSES
from strategies.wrapper import RoundLog

__all__ = ["RunDir", "new_run_dir", "write_json_atomic", "RunDirExists", "STRATEGY_PREFIX"]

STRATEGY_PREFIX = "strategy/"  # rounds.jsonl keys of the metrics the (inner) strategy reported


class RunDirExists(ValueError):
    """An output directory that already holds results (never overwritten)."""


def new_run_dir(root: str | Path, scenario: str, out: str | None) -> Path:
    """A fresh run directory: ``out`` if given (must be absent or empty), else ``root/<scenario>/<timestamp>``."""
    if out:
        path = Path(out)
        if path.exists() and any(path.iterdir()):
            raise RunDirExists(f"--out: '{path}' exists and is not empty (results are never overwritten)")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(root) / scenario / stamp
        n = 1
        while path.exists():
            n += 1
            path = Path(root) / scenario / f"{stamp}-{n}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    """A result file (numpy scalars and arrays as plain JSON), written atomically."""
    atomic.write_json_atomic(path, obj, default=_plain)


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def _finite(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


class RunDir:
    """Writes one run's results as it goes."""

    def __init__(self, path: Path, cfg: ScenarioConfig) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.t0 = time.perf_counter()
        self.totals: Counter[str] = Counter()
        self.energy_j = 0.0
        self.sim_time_s = 0.0
        self.rounds_completed = 0
        self.last_accuracy: float | None = None
        self.summary: dict[str, Any] = {}  # extra summary fields set during the run

    # -- resume --------------------------------------------------------------------------------
    def truncate_to(self, last_round: int) -> None:
        """Keep only lines of rounds <= ``last_round`` (a resumed run continues after its checkpoint)
        and rebuild the running totals from them. Torn last lines from a crash are dropped too."""
        prior_wall = 0.0
        for name in ("devices.jsonl", "rounds.jsonl"):
            path = self.path / name
            if not path.is_file():
                continue
            kept = []
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by the crash
                if row.get("round", 0) <= last_round:
                    kept.append(row)
            atomic.write_text_atomic(path, "".join(json.dumps(r, default=_plain) + "\n" for r in kept))
            if name == "devices.jsonl":
                self.energy_j = sum(r.get("energy_j") or 0.0 for r in kept)
                continue
            for r in kept:
                self.totals.update({"uplink_bytes": r["uplink_bytes"], "downlink_bytes": r["downlink_bytes"],
                                    "completed": r["devices_completed"],
                                    "failed": r["devices_failed"] + r["devices_rejected"],
                                    "dropped": r["devices_dropped"]})
                self.sim_time_s += r["sim_time_s"]
                prior_wall += r["wall_s"]
                self.rounds_completed = r["round"]
                if r["accuracy"] is not None:
                    self.last_accuracy = r["accuracy"]
        self.t0 -= prior_wall  # wall_time_s counts the earlier session's rounds too

    # -- start ---------------------------------------------------------------------------------
    def write_config(self) -> None:
        with open(self.path / "config.toml", "wb") as fh:
            tomli_w.dump(unflatten(self.cfg.to_flat()), fh)

    def write_partition(self, hist: np.ndarray, train_sizes: list[int], val_sizes: list[int]) -> None:
        devices = [{"device": i, "train": int(t), "val": int(v), "labels": [int(c) for c in row]}
                   for i, (row, t, v) in enumerate(zip(hist, train_sizes, val_sizes, strict=True))]
        write_json_atomic(self.path / "partition.json", {"num_classes": int(hist.shape[1]), "devices": devices})

    # -- rounds --------------------------------------------------------------------------------
    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        with open(self.path / name, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=_plain) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def record_start(self, accuracy: float | None, loss: float | None, wall_s: float) -> dict[str, Any]:
        """Round 0: the starting model's line (no device trained), the first point of every curve."""
        return self.record_round(RoundLog(0), accuracy, loss, wall_s)

    def record_round(self, rl: RoundLog, accuracy: float | None, loss: float | None,
                     wall_s: float) -> dict[str, Any]:
        """Append the round's device lines, then its round line (the round line marks it complete)."""
        # Reports arrive in completion order; every float reduction below runs in device order so that a
        # resumed or repeated run writes bit-identical lines.
        reports = sorted(rl.reports, key=lambda r: r.device)
        rows = [dict(r.as_row(), round=rl.server_round) for r in reports]
        self.append("devices.jsonl", rows)
        counts = Counter(r.status for r in reports)
        accs = [r.accuracy for r in reports if r.status == "ok" and r.accuracy >= 0]
        row = {
            "round": rl.server_round, "accuracy": _finite(accuracy), "loss": _finite(loss),
            "devices_sampled": rl.sampled, "devices_completed": counts["ok"], "devices_failed": counts["failed"],
            "devices_dropped": counts["offline"] + counts["straggler"] + counts["oom"],
            "devices_rejected": counts["rejected"], "status_counts": {s: counts[s] for s in STATUSES},
            "uplink_bytes": rl.uplink_bytes, "downlink_bytes": rl.downlink_bytes, "wall_s": wall_s,
            "sim_time_s": rl.sim_time_s,
            "device_accuracy_mean": float(np.mean(accs)) if accs else None,
            "device_accuracy_p10": float(np.percentile(accs, 10)) if accs else None,
            **{f"{STRATEGY_PREFIX}{k}": _finite(v) for k, v in sorted(rl.strategy_metrics.items())},
            **rl.privacy,
        }
        self.append("rounds.jsonl", [row])
        self.totals.update({"uplink_bytes": rl.uplink_bytes, "downlink_bytes": rl.downlink_bytes,
                            "completed": counts["ok"], "failed": counts["failed"] + counts["rejected"],
                            "dropped": row["devices_dropped"]})
        self.energy_j += sum(r.energy_j for r in reports)
        self.sim_time_s += rl.sim_time_s
        self.rounds_completed = rl.server_round
        if _finite(accuracy) is not None:  # a round without evaluation (federation.eval-every) keeps the last one
            self.last_accuracy = _finite(accuracy)
        return row

    # -- end -----------------------------------------------------------------------------------
    def write_summary(self, status: str, **extra: Any) -> dict[str, Any]:
        cfg = self.cfg
        summary = {
            "status": status, "scenario": cfg.name, "seed": cfg.federation.seed,
            "final_accuracy": self.last_accuracy, "rounds_completed": self.rounds_completed,
            "rounds_planned": cfg.federation.rounds, "uplink_bytes": self.totals["uplink_bytes"],
            "downlink_bytes": self.totals["downlink_bytes"], "wall_time_s": time.perf_counter() - self.t0,
            "sim_time_s": self.sim_time_s, "device_rounds_completed": self.totals["completed"],
            "device_rounds_failed": self.totals["failed"], "device_rounds_dropped": self.totals["dropped"],
            "energy_j": self.energy_j, "weight_bits": cfg.quant.weight_bits, "act_bits": cfg.quant.act_bits,
            "coreset_method": cfg.coreset.method, "coreset_fraction": cfg.coreset.fraction,
            "strategy": cfg.strategy.name, "codec": cfg.quant.codec,
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        summary.update(self.summary)  # fields learned during the run (e.g. the reference's accuracy)
        summary.update(extra)
        write_json_atomic(self.path / "summary.json", summary)
        return summary
