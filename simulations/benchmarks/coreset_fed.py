"""Setting (b) of the coreset benchmark: a federated fleet through the real stack.

``run_config`` (Flower on Ray, ``ray.num-cpus = 1``): the server samples
``federation.devices-per-round`` devices per round; each selects its coreset from
its own Dirichlet share with the received global model, trains one local epoch
(KD, CLC when on) and uploads; FedAvg aggregates. ``final_accuracy`` is the
deployed integer model's test accuracy (``simulations.store.deploy``). Selection cost is
a COMPUTE SHARE from devices.jsonl, not wall time:
``scoring_passes / (scoring_passes + 3 * train_samples + teacher_passes)``, counting
a training sample as 3 forward-equivalents (forward + backward ~ 2 forwards), the
convention of ``fleet.hardware.costs``.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from fleet.config.scenario import ScenarioConfig
from simulations.benchmarks.common import run_scenario
from simulations.store.rundir import read_jsonl

__all__ = ["FedResult", "run_fed", "selection_share"]

TRAIN_FORWARD_EQUIV = 3  # forward + backward of a training sample, in forward passes


@dataclass
class FedResult:
    """One (cell, seed) of setting (b)."""

    accuracy: float  # deployed final accuracy
    fake_quant_accuracy: float
    wall_s: float  # whole run, Ray start-up included
    scoring_passes: int
    train_samples: int
    teacher_passes: int
    selection_share: float  # compute share of scoring, see module docstring
    kd_clc_ratio: float  # median over device-rounds (nan without CLC)
    clc_beta: float  # median over device-rounds
    coreset_size: float  # mean over ok device-rounds


def selection_share(scoring: int, train: int, teacher: int) -> float:
    """Share of forward-equivalents spent on scoring.

    Examples
    --------
    >>> selection_share(600, 100, 100)  # 600 / (600 + 300 + 100)
    0.6
    """
    total = scoring + TRAIN_FORWARD_EQUIV * train + teacher
    return scoring / total if total else 0.0


def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def run_fed(cfg: ScenarioConfig, out_dir: Path, keep: bool = False) -> FedResult:
    """Run one cell of setting (b) into ``out_dir`` (removed afterwards unless ``keep``)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    summary, wall = run_scenario(cfg, out_dir)
    rows = read_jsonl(out_dir / "devices.jsonl", [])
    ok = [r for r in rows if r.get("status") == "ok"]
    scoring = sum(int(r.get("scoring_passes") or 0) for r in rows)
    train = sum(int(r.get("train_samples") or 0) for r in rows)
    teacher = sum(int(r.get("teacher_passes") or 0) for r in rows)
    result = FedResult(
        accuracy=float(summary.get("final_accuracy", float("nan"))),
        fake_quant_accuracy=float(summary.get("fake_quant_accuracy", float("nan"))),
        wall_s=wall, scoring_passes=scoring, train_samples=train, teacher_passes=teacher,
        selection_share=selection_share(scoring, train, teacher),
        kd_clc_ratio=_median([r.get("kd-clc-ratio") for r in ok]),  # type: ignore[misc]
        clc_beta=_median([r.get("clc-beta") for r in ok]),  # type: ignore[misc]
        coreset_size=sum(r.get("coreset_size", 0) for r in ok) / max(len(ok), 1),
    )
    if not keep:
        shutil.rmtree(out_dir, ignore_errors=True)
    return result
