"""The fleet's Flower ServerApp: composes a scenario into a run and writes its results.

``app`` is what ``flwr run`` and ``fleet deploy`` load (scenario from ``context.run_config``, results under
``output.dir`` or ``runs/<output.name>/<timestamp>`` relative to the SuperLink's working directory, report and
figures included); ``make_server_app`` binds a scenario and a run directory for ``fleet run``.

Hosted by Flower's runtime, devices keep their state in Flower's ``context.state`` (on a real SuperNode the
server's run directory is another machine's disk), and a relative ``strategy.path`` names a folder of the app,
which ships in the FAB.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from flwr.common import log as flwr_log  # the run's log stream under flwr run (the flwr logger)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fleet.arrays import record_from_numpy, record_to_numpy
from fleet.config.scenario import ScenarioConfig, parse_config
from fleet.data.splits import FleetData, fleet_data, test_subset
from fleet.errors import one_line
from fleet.model.assembly import load_arrays, model_quant_info, state_arrays, trainable_model
from fleet.model.bnstats import BN_REFRESH_SAMPLES, has_batchnorm, reestimate_bn
from fleet.model.reference import reference_model, save_atomic
from fleet.privacy.audit import MessageAudit
from fleet.quant.codecs import scenario_codec
from fleet.quant.convert import init_quantizers
from fleet.quant.spec import is_quantized
from simulations.analysis.leakage import measure_leakage
from simulations.run import startup
from simulations.run.continual import run_stream_phase
from simulations.run.logs import copied_logs
from simulations.store.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_hash,
    fleet_part,
    inner_part,
    latest_checkpoint,
    restore_object_state,
)
from simulations.store.deploy import export_deployable, write_qgt_report
from simulations.store.recorder import CentralEvaluator, ProgressFn, RoundRecorder, round_callback
from simulations.store.results import RunDir, new_run_dir
from strategies.audit import AuditedGrid
from strategies.loader import load_strategy
from strategies.privacy import BudgetExhausted
from strategies.secagg import SecureGrid, check_secure_strategy
from strategies.wrapper import FleetStrategy

log = logging.getLogger(__name__)

#: The app's folder: the source tree under fleet run, the FAB's install folder under flwr run.
APP_ROOT = Path(__file__).resolve().parents[1]

__all__ = ["app", "make_server_app", "run_fleet"]

def _seed_everything(seed: int) -> None:
    random.seed(seed)  # Flower's own samplers use the global `random`
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class _Start:
    """What the run starts from: the data, the float reference, the global model and its first arrays."""

    fd: FleetData
    reference: torch.nn.Module
    ref_hash: str
    model: torch.nn.Module
    initial: dict[str, np.ndarray]


def run_fleet(grid: Grid, cfg: ScenarioConfig, run_dir: Path, progress: ProgressFn | None = None,
              resume: bool = False, hosted: bool = False) -> dict[str, Any]:
    """Run the scenario's federated phase on ``grid`` (or continue it from its last checkpoint); returns the summary.

    ``hosted``: run by Flower's runtime (``flwr run``, ``fleet deploy``), see the module docstring.
    """
    startup.mark("engine")
    _seed_everything(cfg.federation.seed)
    out = RunDir(run_dir, cfg)
    if hosted:  # its devices keep their state on the SuperNodes: `fleet resume` refuses the directory
        out.summary["hosted"] = "flower-runtime"
    try:
        return _run(grid, cfg, out, run_dir, progress, resume, hosted)
    except Exception as exc:
        # The summary says how the run ended; the traceback goes to the log (RUN_DIR/run.log under fleet run).
        log.exception("run failed")
        out.write_summary("failed", error=one_line(exc))
        raise


def _run(grid: Grid, cfg: ScenarioConfig, out: RunDir, run_dir: Path, progress: ProgressFn | None,
         resume: bool, hosted: bool) -> dict[str, Any]:
    cfg_hash = config_hash(cfg.to_flat())
    ckpt = _open_run_dir(out, run_dir, cfg_hash, resume)
    start = _global_start(cfg, out, ckpt)
    check_secure_strategy(cfg)
    path = cfg.strategy.path
    inner = load_strategy(cfg.strategy.name, dict(cfg.strategy.options),
                          str(APP_ROOT / path) if hosted and path and not Path(path).is_absolute() else path)
    strategy = _fleet_strategy(cfg, inner, start, "" if hosted else str(run_dir / "device-state"), ckpt)
    grid = _wrap_grid(grid, cfg, strategy, start.initial)
    # Start-up, not a round: Ray may still be starting its actors, so the roster waits longer than a round would.
    strategy.discover(grid, timeout=max(cfg.federation.round_timeout_s, 300.0))
    startup.mark("roster")
    ds = start.fd.dataset
    x_test, y_test = test_subset(ds.x_test, ds.y_test, cfg.data.test_limit)
    evaluator = CentralEvaluator(start.model, x_test, y_test)
    recorder = RoundRecorder(out, run_dir, strategy, inner, cfg_hash, cfg.output.keep_checkpoints, progress,
                             tensorboard=cfg.output.tensorboard, on_start=_startup_done(out))
    final_arrays = start.initial
    remaining = cfg.federation.rounds - strategy.round_offset
    try:
        if remaining > 0:
            result = strategy.start(grid=grid, initial_arrays=record_from_numpy(start.initial),
                                    num_rounds=remaining, timeout=cfg.federation.round_timeout_s,
                                    evaluate_fn=round_callback(cfg, strategy, evaluator, recorder, ckpt is not None))
            if result.arrays is not None and len(result.arrays):
                final_arrays = record_to_numpy(result.arrays)
    except BudgetExhausted as stop:  # a clean end: the rounds so far are the run
        log.warning("%s: the run ends after round %d", stop, stop.server_round - 1)
        out.summary["stopped"] = str(stop)
        final_arrays = strategy.current or final_arrays
    finally:
        recorder.close()
    return _finish(grid, cfg, out, run_dir, strategy, start, final_arrays, evaluator)


def _startup_done(out: RunDir) -> Callable[[], None]:
    """After round 0's evaluation: the start-up's phases go into the summary (``startup_s``)."""

    def done() -> None:
        startup.mark("initial_evaluation")
        out.summary["startup_s"] = startup.phases()

    return done


def _wrap_grid(grid: Grid, cfg: ScenarioConfig, strategy: FleetStrategy, initial: dict[str, np.ndarray]) -> Grid:
    """The grid the run talks through: every device reply audited (``privacy.audit``), training rounds run as
    SecAgg+ rounds (``privacy.secure-aggregation``) over the audited grid, so the audit sees every stage."""
    if cfg.privacy.audit:
        audit = MessageAudit.for_model(initial, max_list=cfg.stream.tasks)
        grid = AuditedGrid(grid, audit, lambda node: str(strategy.roster.get(node, f"on node {node}")))
    return SecureGrid(grid, cfg) if cfg.privacy.secure_aggregation else grid


def _open_run_dir(out: RunDir, run_dir: Path, cfg_hash: str, resume: bool) -> Checkpoint | None:
    """A new run writes its config; a resumed one checks it against the checkpoint and drops later lines."""
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None and ckpt.config_hash != cfg_hash:
        raise CheckpointError(f"{run_dir}: config.toml changed since the checkpoint of round {ckpt.round}")
    if ckpt is not None:
        out.truncate_to(ckpt.round)
    else:
        out.write_config()
    out.write_summary("running")
    return ckpt


def _global_start(cfg: ScenarioConfig, out: RunDir, ckpt: Checkpoint | None) -> _Start:
    """The float reference and the global model at the scenario's width: a quantized start has its steps
    initialised and its BatchNorm statistics measured on public data (or the checkpoint's arrays, resumed)."""
    fd = fleet_data(cfg)
    ds = fd.dataset
    if ckpt is None:
        out.write_partition(fd.histograms(), [len(t) for t in fd.train], [len(v) for v in fd.val])
    startup.mark("data")
    reference, ref_hash, fp_acc = reference_model(cfg, fd)
    startup.mark("reference")
    out.summary["fp_reference_accuracy"] = fp_acc
    out.summary["reference_hash"] = ref_hash  # content hash: which float reference this run learned from
    model = trainable_model(cfg, reference, cfg.quant.weight_bits, cfg.quant.act_bits)
    if is_quantized(cfg.quant.weight_bits, cfg.quant.act_bits) and ckpt is None:
        calib = fd.public if len(fd.public) else np.concatenate(fd.train)[:256]
        init_quantizers(model, ds.x_train[calib[:256]])
        reestimate_bn(model, ds.x_train[calib[:BN_REFRESH_SAMPLES]])  # the quantized model's own statistics
    initial = state_arrays(model) if ckpt is None else ckpt.arrays
    startup.mark("global_model")
    return _Start(fd, reference, ref_hash, model, initial)


def _fleet_strategy(cfg: ScenarioConfig, inner: Strategy, start: _Start, state_dir: str,
                    ckpt: Checkpoint | None) -> FleetStrategy:
    """The fleet wrapper around the inner strategy, restored from the checkpoint when resuming; devices keep their
    state under ``state_dir`` ("" = Flower's ``context.state``)."""
    quantized = is_quantized(cfg.quant.weight_bits, cfg.quant.act_bits)
    ref_state = {k: v.detach().numpy().copy() for k, v in start.reference.state_dict().items()}
    x_public = start.fd.dataset.x_train[start.fd.public[:BN_REFRESH_SAMPLES]]
    strategy = FleetStrategy(inner, cfg, scenario_codec(cfg), model_quant_info(start.model) if quantized else None,
                             ref_state, start.ref_hash, state_dir=state_dir,
                             refine=_bn_refiner(cfg, start.model, x_public),
                             round_offset=ckpt.round if ckpt is not None else 0,
                             labels_present=start.fd.histograms() > 0 if cfg.privacy.label_inference else None)
    if ckpt is not None:
        strategy.load_state_dict(fleet_part(ckpt))
        restore_object_state(inner, inner_part(ckpt), ckpt.inner_meta)
        ckpt.restore_rngs()
    return strategy


def _finish(grid: Grid, cfg: ScenarioConfig, out: RunDir, run_dir: Path, strategy: FleetStrategy, start: _Start,
            final_arrays: dict[str, np.ndarray], evaluator: CentralEvaluator) -> dict[str, Any]:
    """The final model on disk, its QGT ranking and deployable export, the continual phase; the summary."""
    test = (evaluator.x_test, evaluator.y_test)
    wb = cfg.quant.weight_bits
    quantized = is_quantized(wb, cfg.quant.act_bits)
    model = copy.deepcopy(start.model)
    load_arrays(model, final_arrays)
    save_atomic(model.state_dict(), run_dir / "model.safetensors")
    if cfg.train.qgt_lambda > 0 or quantized:
        write_qgt_report(model, wb if wb < 32 else 8, run_dir)
    extra: dict[str, Any] = export_deployable(model, start.reference, cfg, run_dir, *test,
                                              pred_fq=evaluator.predictions(final_arrays)) if quantized else {
        "model_size_bytes": _fp32_bytes(model), "fp32_model_size_bytes": _fp32_bytes(model)}
    extra["privacy"] = strategy.privacy.summary()
    if cfg.privacy.membership_inference:
        extra["privacy"]["membership"] = measure_leakage(cfg, model, start.fd, strategy.participation, test)
    if cfg.stream.enabled:
        out.write_summary("running", **extra)
        extra["continual"] = run_stream_phase(grid, cfg, strategy, _float_copy(model, start.reference), start.fd,
                                              run_dir, out.append)
    return out.write_summary("complete", **extra)


def _bn_refiner(cfg: ScenarioConfig, model: torch.nn.Module,
                x_public: torch.Tensor) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None:
    """``strategy.bn-stats = "public"``: the aggregated model's BatchNorm statistics, re-estimated on public data."""
    if cfg.strategy.bn_stats != "public" or not len(x_public) or not has_batchnorm(model):
        return None
    work = copy.deepcopy(model)

    def refine(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        load_arrays(work, arrays)
        reestimate_bn(work, x_public)
        fresh = state_arrays(work)
        return {k: fresh[k] if k.endswith(("running_mean", "running_var")) else v for k, v in arrays.items()}

    return refine


def _float_copy(model: torch.nn.Module, reference: torch.nn.Module) -> torch.nn.Module:
    """The global model as a float model of the reference's architecture (latent weights of quantized layers)."""
    fm = copy.deepcopy(reference)
    own = fm.state_dict()
    src = model.state_dict()
    fm.load_state_dict({k: src[k] if k in src and src[k].shape == v.shape else v for k, v in own.items()})
    for p in fm.parameters():
        p.requires_grad_(True)
    return fm


def _fp32_bytes(model: torch.nn.Module) -> int:
    return sum(v.numel() * 4 for k, v in model.state_dict().items() if v.is_floating_point())


def make_server_app(flat_config: Mapping[str, Any] | None = None, run_dir: Path | None = None,
                    progress: ProgressFn | None = None, on_summary: Callable[[dict], None] | None = None,
                    name: str = "scenario", resume: bool = False) -> ServerApp:
    """A ServerApp; with a bound scenario and run directory it ignores the run config (``fleet run``)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        if flat_config is None:
            _hosted_main(grid, context)
            return
        cfg = parse_config(dict(flat_config), name=name)
        path = run_dir or new_run_dir("runs", cfg.name, cfg.output.dir or None)
        try:
            summary = run_fleet(grid, cfg, path, progress, resume=resume)
        except Exception as exc:
            summary = {"status": "failed", "error": one_line(exc)}  # fleet run reports it in one line
        if on_summary is not None:
            on_summary(summary)

    return server


def _hosted_main(grid: Grid, context: Context) -> None:
    """``flwr run`` / ``fleet deploy``: the scenario from the run config; the run directory gets the same files as
    under ``fleet run``, report and figures included. A failure is logged in one line and re-raised, so Flower marks
    the run failed."""
    cfg = parse_config(dict(context.run_config), name="flwr")
    path = new_run_dir("runs", cfg.name, cfg.output.dir or None).resolve()
    flwr_log(logging.INFO, "run directory: %s", path)
    try:
        with copied_logs(path):
            summary = run_fleet(grid, cfg, path, hosted=True)
    except Exception as exc:
        flwr_log(logging.ERROR, "the run failed: %s (summary.json marked failed)", one_line(exc))
        raise
    acc = summary.get("final_accuracy")
    flwr_log(logging.INFO, "final accuracy %s after %s rounds; results in %s",
             "n/a" if acc is None else f"{100 * acc:.2f}%", summary.get("rounds_completed"), path)
    try:
        from simulations.analysis.report import write_report

        flwr_log(logging.INFO, "report: %s", write_report(path))
    except Exception as exc:  # the run's results are on disk; a report that fails must not fail the run
        flwr_log(logging.WARNING, "no report: %s", one_line(exc))


app = make_server_app()
