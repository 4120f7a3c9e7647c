"""``fleet resume RUN_DIR``: continue a run from its last complete round, as if it had never stopped.

Refused with one line, touching nothing, when the directory is not a run, has no
checkpoint, its checkpoint is damaged, or its config.toml changed since.
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

from fleet.config.scenario import ConfigError, flatten, parse_config
from simulations.store.checkpoint import CheckpointError, config_hash, latest_checkpoint

__all__ = ["add_parser", "main", "check_resumable"]


def check_resumable(run_dir: Path):  # noqa: ANN201 - (ScenarioConfig, Checkpoint)
    """Everything that must hold before a resume may modify the directory."""
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise ConfigError(str(run_dir), "not a run directory (no config.toml)")
    summary: dict = {}
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        pass
    name = summary.get("scenario", "scenario")
    if summary.get("hosted"):
        raise ConfigError(str(run_dir), "ran under Flower's runtime (flwr run / fleet deploy), where devices keep "
                                        "their state on the SuperNodes; it cannot be resumed here")
    try:
        flat = flatten(tomllib.loads(cfg_path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(cfg_path), f"not valid TOML ({exc})") from None
    cfg = parse_config(flat, name=name)
    try:
        ckpt = latest_checkpoint(run_dir)
    except CheckpointError as exc:
        raise ConfigError(str(run_dir), str(exc).split(": ", 1)[-1]) from None
    if ckpt is None:
        raise ConfigError(str(run_dir), "no checkpoint to resume from (it stopped before its first round ended)")
    if ckpt.config_hash != config_hash(cfg.to_flat()):
        raise ConfigError(str(cfg_path), f"changed since the checkpoint of round {ckpt.round}; refusing to resume")
    return cfg, ckpt


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resume", help="continue a stopped or crashed run from its last complete round",
                       description="Continue RUN_DIR from its newest checkpoint; rounds.jsonl and devices.jsonl "
                                   "are continued without a duplicated or lost line.")
    p.add_argument("run_dir", help="a run directory written by `fleet run`")
    p.add_argument("--quiet", action="store_true", help="logs only, no live progress display")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from simulations.run.progress import Progress
    from simulations.run.scenario import run_config

    run_dir = Path(args.run_dir)
    cfg, ckpt = check_resumable(run_dir)
    if ckpt.round >= cfg.federation.rounds and json.loads((run_dir / "summary.json").read_text()).get(
            "status") == "complete":
        print(f"{run_dir}: already complete ({ckpt.round} rounds)")
        return 0
    print(f"resuming {run_dir} after round {ckpt.round} of {cfg.federation.rounds}")
    with Progress(cfg, quiet=args.quiet) as bar:
        summary = run_config(cfg, run_dir, progress=bar.update, resume=True)
    print(f"final accuracy {summary.get('final_accuracy')} after {summary.get('rounds_completed')} rounds")
    return 0
