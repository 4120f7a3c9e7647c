"""Run a scenario: resolve the file, apply overrides, check everything before Ray starts, run.

All the checks that can fail on bad input run here first (config, hardware,
strategy, data, checkpoint, layer names), so a mistake costs a one-line error and
exit code 2, not a half-started cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleet.config.scenario import ConfigError, ScenarioConfig, load_scenario_file, parse_config, parse_override
from fleet.errors import RunFailed
from fleet.hardware.catalogue import catalogue, device_profiles
from fleet.hardware.flops import model_flops
from fleet.model.architectures import build_model

if TYPE_CHECKING:
    from torch import nn

    from fleet.data.splits import FleetData

log = logging.getLogger(__name__)

SCENARIOS = Path(__file__).parents[1] / "scenarios"

__all__ = ["resolve_scenario", "load_config", "preflight", "run_config", "run_scenario", "SCENARIOS"]


def resolve_scenario(name_or_path: str) -> Path:
    """A scenario path, or the name of a file in ``simulations/scenarios/``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (SCENARIOS / name_or_path, SCENARIOS / f"{name_or_path}.toml"):
        if cand.is_file():
            return cand
    known = ", ".join(sorted(q.stem for q in SCENARIOS.glob("*.toml")))
    raise ConfigError(name_or_path, f"no such scenario file or built-in scenario (built-in: {known})")


def load_config(scenario: str, overrides: Mapping[str, Any] | Sequence[str] = ()) -> tuple[ScenarioConfig, dict]:
    """Parse a scenario with ``--set`` overrides; returns the config and its flat keys."""
    path = resolve_scenario(scenario)
    flat = load_scenario_file(str(path))
    items = list(overrides.items() if isinstance(overrides, Mapping) else (parse_override(o) for o in overrides))
    if any(k.startswith("devices.profiles.") for k, _ in items):
        # A mix given on the command line replaces the scenario's mix (weights must sum to one).
        flat = {k: v for k, v in flat.items() if not k.startswith("devices.profiles.")}
    flat.update(items)
    if not any(k == "output.name" for k, _ in items):  # a copied scenario file is named by its own file name;
        flat["output.name"] = path.stem                # output.name in the file names it under flwr run
    return parse_config(flat, name=path.stem), flat


def _check_w8_layers(cfg: ScenarioConfig, model: nn.Module) -> None:
    from fleet.model.assembly import trainable_model

    if cfg.quant.w8_layers.strip():
        if cfg.quant.weight_bits == 32:
            raise ConfigError("quant.w8-layers", "needs quantized weights (quant.weight-bits < 32)")
        trainable_model(cfg, model, cfg.quant.weight_bits, cfg.quant.act_bits)  # checks the names


def _check_stream(cfg: ScenarioConfig, fd: FleetData) -> None:
    """Every streaming device, and the public split, must hold at least the QCore."""
    from fleet.qcore.device import continual_config

    try:
        ccfg = continual_config(cfg)
        for rows in fd.train[: cfg.stream.devices or None]:
            ccfg.check_local_data(len(rows))
    except ValueError as exc:
        raise ConfigError(*_split(str(exc), "stream")) from None
    from simulations.run.continual import public_rows

    if ccfg.core_size > (n_pub := len(public_rows(fd))):
        raise ConfigError("stream.core-size", f"{ccfg.core_size} > the {n_pub} public samples the server draws "
                                              "the QCore from (raise data.public-fraction)")


def preflight(cfg: ScenarioConfig) -> list[str]:
    """Check what the config alone cannot (files, names, hardware); returns warnings."""
    from fleet.data.splits import fleet_data
    from fleet.model.assembly import keep_fp_names
    from fleet.model.reference import load_state_checked
    from fleet.quant.codecs import scenario_codec
    from fleet.train.losses import FeatureTaps, clc_layer_names
    from simulations.store.tracking import tensorboard_available
    from strategies.loader import load_strategy
    from strategies.secagg import check_secure_strategy

    warnings: list[str] = []
    check_secure_strategy(cfg)
    if cfg.output.tensorboard and not tensorboard_available():
        raise ConfigError("output.tensorboard", "needs the tensorboard package: pip install 'edgefleet[tensorboard]'")
    try:
        load_strategy(cfg.strategy.name, dict(cfg.strategy.options), cfg.strategy.path)
    except ValueError as exc:
        raise ConfigError(*_split(str(exc), "strategy.name")) from None
    try:
        scenario_codec(cfg)
    except ValueError as exc:
        raise ConfigError("quant.codec", str(exc)) from None
    names = device_profiles(cfg)
    fd = fleet_data(cfg)
    ds = fd.dataset
    model = build_model(cfg.model.arch, ds.in_shape, ds.num_classes)
    if cfg.model.checkpoint:
        load_state_checked(model, cfg.model.checkpoint)
    keep_fp_names(cfg, model)
    _check_w8_layers(cfg, model)
    if cfg.train.clc_beta != 0.0:
        try:
            FeatureTaps(model, clc_layer_names(cfg, model))
        except ValueError as exc:
            raise ConfigError("train.clc-layers", str(exc)) from None
    if cfg.stream.enabled:
        _check_stream(cfg, fd)
    warnings += _width_warnings(cfg, names)
    if cfg.devices.deadline_s > 0:
        flops = model_flops(model, ds.in_shape)
        cat = catalogue(cfg)
        smallest = min(len(t) for t in fd.train)
        need = min(3 * flops * max(1, round(smallest * cfg.coreset.fraction)) * cfg.train.local_epochs
                   / (cat[n].gflops * 1e9) for n in set(names))
        if need > cfg.devices.deadline_s:
            warnings.append(f"devices.deadline-s: {cfg.devices.deadline_s:g} s is shorter than the fastest "
                            f"device's compute for the smallest local dataset ({need:.3g} s): every device "
                            "will be a straggler")
    return warnings


def _width_warnings(cfg: ScenarioConfig, names: Sequence[str]) -> list[str]:
    """A quantized global model no device can train at its own width: its step sizes are only the server's
    initial ones (other widths' steps are not comparable and are not averaged in: strategies/wrapper.py)."""
    from fleet.hardware.profiles import nearest_bits

    wb = cfg.quant.weight_bits
    if wb >= 32:
        return []
    cat = catalogue(cfg)
    if any(nearest_bits(wb, cat[n].bits) == wb for n in set(names)):
        return []
    widths = sorted({nearest_bits(wb, cat[n].bits) for n in set(names)})
    return [f"quant.weight-bits: no device profile in the mix has {wb}-bit kernels (they train at "
            f"{', '.join(map(str, widths))} bits), so the global model's step sizes never adapt to its weights and "
            "its accuracy can collapse; add a profile with these bits (devices.custom) or change the width"]


def _split(text: str, default_key: str) -> tuple[str, str]:
    key, sep, msg = text.partition(": ")
    return (key, msg) if sep and " " not in key else (default_key, text)


def run_config(cfg: ScenarioConfig, run_dir: Path, progress: Callable[[dict], None] | None = None,
               verbose: bool = False, resume: bool = False) -> dict:
    """Run a parsed scenario in-process on Ray (or continue it from its last checkpoint); returns the summary.

    On Ctrl-C the summary is marked ``interrupted`` (every finished round and its checkpoint are on disk,
    so ``fleet resume`` continues it) and Ray is shut down before the KeyboardInterrupt propagates.
    """
    from fleet.client_app import make_client_app
    from simulations.run import startup
    from simulations.run.engine import engine_of, interrupt_guard, simulate
    from simulations.run.logs import routed_logs
    from simulations.server_app import make_server_app

    startup.begin()
    run_dir.mkdir(parents=True, exist_ok=True)
    flat = cfg.to_flat()
    box: dict[str, Any] = {}
    server = make_server_app(flat, run_dir, progress, on_summary=box.update, name=cfg.name, resume=resume)
    on_ray = engine_of(cfg) == "ray"
    with routed_logs(run_dir, verbose, ray=on_ray), interrupt_guard(lambda: mark_interrupted(run_dir)):
        simulate(server, make_client_app(flat), cfg, verbose=verbose, log_path="" if verbose else
                 str(run_dir / "run.log"))
    if box.get("status") == "failed" or not box:
        raise RunFailed(f"{box.get('error', 'the run ended without a summary')} "
                        f"(summary.json marked failed; traceback in {run_dir / 'run.log'})")
    return box



def mark_interrupted(run_dir: Path, status: str = "interrupted", error: str | None = None) -> None:
    """An unfinished run's ``summary.json`` says how it ended (``interrupted``, or ``failed`` with ``error``)."""
    import json

    from simulations.store.results import write_json_atomic

    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if summary.get("status") != "complete":
        summary["status"] = status
        if error is not None:
            summary["error"] = error
        write_json_atomic(path, summary)


def check_scenario(scenario: str, overrides: Mapping[str, str]) -> None:
    """Everything ``run_scenario`` checks before Ray starts, without running (the sweep's check of a point)."""
    from fleet.config.scenario import parse_override_value

    cfg, _ = load_config(scenario, {k: parse_override_value(v) for k, v in overrides.items()})
    preflight(cfg)


def run_scenario(scenario: str, overrides: Mapping[str, str], out_dir: Path) -> None:
    """Run ``scenario`` with textual overrides into ``out_dir`` (the sweep's runner)."""
    from fleet.config.scenario import parse_override_value

    cfg, _ = load_config(scenario, {k: parse_override_value(v) for k, v in overrides.items()})
    preflight(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_config(cfg, out_dir)
