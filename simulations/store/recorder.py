"""After every round: evaluate the global model centrally, write the round's lines, checkpoint, report progress.

Flower's ``Strategy.start`` calls one ``evaluate_fn(server_round, arrays)`` after round 0 (the starting model)
and after each aggregation. :func:`round_callback` builds it from separate jobs, so evaluating is not what
writes results: a :class:`CentralEvaluator` measures, a :class:`RoundRecorder` keeps the record.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Strategy

from fleet.arrays import record_to_numpy
from fleet.config.scenario import ScenarioConfig
from fleet.model.assembly import load_arrays
from fleet.protocol import DeviceReport
from fleet.train.loop import evaluate_predictions
from simulations.store.checkpoint import save_checkpoint
from simulations.store.results import RunDir
from simulations.store.rundir import read_jsonl
from simulations.store.tracking import RoundsCsv, TensorBoardLog
from strategies.wrapper import FleetStrategy, is_eval_round

__all__ = ["CentralEvaluator", "RoundRecorder", "round_callback"]

ProgressFn = Callable[[dict[str, Any]], None]
Metrics = tuple[float | None, float | None]


class CentralEvaluator:
    """Accuracy and loss of the global model on the held-out test split (a private copy of the model)."""

    def __init__(self, model: torch.nn.Module, x_test: torch.Tensor, y_test: torch.Tensor) -> None:
        self.model, self.x_test, self.y_test = copy.deepcopy(model), x_test, y_test
        self._last: tuple[dict[str, np.ndarray], torch.Tensor] | None = None

    def __call__(self, arrays: dict[str, np.ndarray]) -> tuple[float, float]:
        load_arrays(self.model, arrays)
        acc, loss, pred = evaluate_predictions(self.model, self.x_test, self.y_test)
        self._last = ({k: np.array(v, copy=True) for k, v in arrays.items()}, pred)
        return acc, loss

    def predictions(self, arrays: dict[str, np.ndarray]) -> torch.Tensor | None:
        """The predicted test classes of the last evaluated model if it is ``arrays`` (the final round's, so
        the export's agreement check need not run the fake-quantized model over the test split again)."""
        if self._last is None:
            return None
        last, pred = self._last
        same = last.keys() == arrays.keys() and all(np.array_equal(last[k], arrays[k]) for k in last)
        return pred if same else None


@dataclass
class RoundRecorder:
    """Writes each round's lines (``rounds.jsonl``, ``devices.jsonl``), then its checkpoint, then the trackers
    (``rounds.csv``, TensorBoard with ``output.tensorboard``), then tells progress."""

    out: RunDir
    run_dir: Path
    strategy: FleetStrategy
    inner: Strategy
    cfg_hash: str
    keep_checkpoints: int
    progress: ProgressFn | None = None
    tensorboard: bool = False
    on_start: Callable[[], None] | None = None  # after round 0 is evaluated, before it is recorded

    def __post_init__(self) -> None:
        self._t = time.perf_counter()
        self.csv = RoundsCsv(self.run_dir, read_jsonl(self.run_dir / "rounds.jsonl", []))  # resumed: lines so far
        self.tb = TensorBoardLog(self.run_dir, (self.run_dir / "config.toml").read_text()) if self.tensorboard else None

    def start(self, metrics: Metrics) -> None:
        if self.on_start is not None:
            self.on_start()
        self._track(self.out.record_start(*metrics, self._lap()), ())

    def round(self, server_round: int, arrays: dict[str, np.ndarray], metrics: Metrics) -> None:
        assert self.strategy.last is not None  # a round has been aggregated
        row = self.out.record_round(self.strategy.last, *metrics, self._lap())
        save_checkpoint(self.run_dir, server_round, arrays, self.strategy.state_dict(), self.inner, self.cfg_hash,
                        self.keep_checkpoints)
        self._track(row, self.strategy.last.reports)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    def _track(self, row: dict[str, Any], reports: Sequence[DeviceReport]) -> None:
        self.csv.add(row)
        if self.tb is not None:
            self.tb.add(row, reports)
        if self.progress is not None:
            self.progress(row)

    def _lap(self) -> float:
        now = time.perf_counter()
        lap, self._t = now - self._t, now
        return lap



def round_callback(cfg: ScenarioConfig, strategy: FleetStrategy, evaluator: CentralEvaluator,
                   recorder: RoundRecorder, resumed: bool) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """The ``evaluate_fn`` for ``Strategy.start``: round 0 (the starting model) is evaluated and recorded,
    unless resumed (it is on disk already); every round is recorded, evaluated every ``federation.eval-every``."""

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and resumed:
            return None
        rnd = strategy.round_offset if server_round == 0 else strategy.last.server_round  # type: ignore[union-attr]
        global_arrays = record_to_numpy(arrays)
        metrics: Metrics = (None, None)
        if server_round == 0 or is_eval_round(rnd, cfg):
            metrics = evaluator(global_arrays)
        if server_round == 0:
            recorder.start(metrics)
        else:
            recorder.round(rnd, global_arrays, metrics)
        acc, loss = metrics
        if acc is None:
            return None
        assert loss is not None  # the evaluator measures both or neither
        return MetricRecord({"accuracy": acc, "loss": loss})

    return evaluate_fn
