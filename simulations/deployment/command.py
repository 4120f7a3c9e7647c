"""``fleet deploy SCENARIO --devices N``: a scenario on Flower's deployment engine, every process on 127.0.0.1.

A SuperLink and N SuperNodes start as separate processes (TLS and SuperNode authentication unless
``--insecure``), ``flwr run`` submits this app to them with the scenario as its run config, and the ServerApp
writes the usual run directory (report and figures included). The processes' logs are moved into
``RUN_DIR/deployment/`` at the end; every process is stopped, also on failure or Ctrl-C.

Exit codes: 0 complete, 1 the run or a process failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from fleet.config.scenario import ConfigError, ScenarioConfig, unflatten
from fleet.errors import RunFailed

__all__ = ["PATH_KEYS", "add_parser", "app_pyproject", "deploy", "main", "run_config_for_flwr"]

INSECURE_WARNING = ("warning: --insecure: plain HTTP and no SuperNode authentication; any process that reaches "
                    "127.0.0.1:{port} can join the federation and read every model it sends")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="run a scenario on Flower's deployment engine: a SuperLink and N SuperNodes "
                                      "on this machine, TLS and authenticated devices",
                       description="Start a SuperLink and N SuperNodes on 127.0.0.1 (each its own process and port, "
                                   "node i told partition-id=i), run SCENARIO through them with `flwr run`, collect "
                                   "the results into the usual run directory, and stop every process. "
                                   "docs/deployment.md has the path from here to real machines.")
    from simulations.cli import add_scenario_arguments

    add_scenario_arguments(p)
    p.add_argument("--devices", type=int, required=True, metavar="N",
                   help="SuperNodes to start; sets federation.num-devices = N")
    p.add_argument("--insecure", action="store_true", help="no TLS and no SuperNode authentication (warned)")
    p.add_argument("--quiet", action="store_true", help="do not echo the run's log stream")
    p.set_defaults(func=main)


def _config(args: argparse.Namespace) -> ScenarioConfig:
    from simulations.run.scenario import load_config, preflight

    if args.devices < 1:
        raise ConfigError("--devices", f"must be >= 1, got {args.devices}")
    asked = load_config(args.scenario, args.overrides)[0].federation.devices_per_round
    if asked > args.devices:
        print(f"note: federation.devices-per-round = {args.devices} (the scenario asks for {asked}, more than "
              f"--devices)", file=sys.stderr)
    cfg, _ = load_config(args.scenario, [*args.overrides, f"federation.num-devices={args.devices}",
                                         f"federation.devices-per-round={min(asked, args.devices)}"])
    for w in preflight(cfg):
        print(f"warning: {w}", file=sys.stderr)
    return cfg


def run_config_for_flwr(cfg: ScenarioConfig, run_dir: Path, pyproject: Path) -> dict[str, Any]:
    """The scenario as a ``flwr run --run-config`` file: every key, results to ``run_dir`` under its name.

    Flower accepts only keys declared in ``pyproject.toml``: strategy options travel as ``"k=v,k=v"`` (a value
    that cannot, such as a list or a text with a comma, is refused by name), the device mix names every declared
    profile (unlisted ones at weight 0), and anything else undeclared is refused. The apps run from the app's
    folder, so relative paths (``data.root``, ``model.checkpoint``, ``model.cache-dir``, ``strategy.path``) are
    made absolute against this working directory, as ``fleet run`` reads them.
    """
    declared = _declared_keys(pyproject)
    flat = cfg.to_flat()
    options = {k.split(".", 2)[2]: v for k, v in flat.items() if k.startswith("strategy.options.")}
    flat = {k: v for k, v in flat.items() if not k.startswith("strategy.options.")}
    flat["strategy.options"] = ",".join(f"{k}={_option_text(k, v)}" for k, v in sorted(options.items()))
    flat.update({k: 0.0 for k in declared if k.startswith("devices.profiles.") and k not in flat})
    flat.update({k: str(Path(flat[k]).resolve()) for k in PATH_KEYS if flat.get(k)})
    flat.update({"output.dir": str(run_dir.resolve()), "output.name": cfg.name})
    for key in flat:
        if key not in declared:
            raise ConfigError(key, "Flower's run config carries only keys declared in pyproject.toml "
                                   "([tool.flwr.app.config]); fleet run supports it, fleet deploy cannot")
    return unflatten(flat)


#: Scenario keys naming files or folders (relative to where ``fleet`` runs).
PATH_KEYS = ("data.root", "model.checkpoint", "model.cache-dir", "strategy.path")


def _option_text(key: str, v: Any) -> str:
    """One strategy option as the ``k=v`` text ``strategy.options`` carries (a TOML scalar without commas)."""
    text = tomli_w.dumps({"v": v}).split("=", 1)[1].strip() if not isinstance(v, (list, dict)) else ","
    if "," in text or "\n" in text:
        raise ConfigError(f"strategy.options.{key}", f"{v!r} cannot travel in flwr run's 'k=v,k=v' option string "
                                                     "(no lists, tables or commas); fleet run supports it")
    return text


def _declared_keys(pyproject: Path) -> set[str]:
    from flwr.common.config import flatten_dict

    try:
        return set(flatten_dict(tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]))
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(pyproject), f"not the app's pyproject.toml with [tool.flwr.app.config] ({exc})") from None


def deploy(cfg: ScenarioConfig, run_dir: Path, secure: bool = True, quiet: bool = False,
           run_config: dict[str, Any] | None = None) -> dict:
    """Run ``cfg`` on a local federation of ``federation.num-devices`` SuperNodes; results in ``run_dir`` (empty);
    returns the summary. ``run_config``: :func:`run_config_for_flwr`'s output, if already made."""
    from simulations.deployment.federation import LocalFederation
    from simulations.server_app import APP_ROOT

    devices = cfg.federation.num_devices
    run_config = run_config or run_config_for_flwr(cfg, run_dir, app_pyproject())
    with tempfile.TemporaryDirectory(prefix="edgefleet-deploy-") as tmp:
        work = Path(tmp)
        rc_path = work / "run-config.toml"
        rc_path.write_text(tomli_w.dumps(run_config))
        fed = LocalFederation(work, devices, cwd=APP_ROOT, secure=secure)
        if not secure:
            print(INSECURE_WARNING.format(port=fed.port), file=sys.stderr)
        print(f"SuperLink on 127.0.0.1:{fed.port} ({'TLS, authenticated SuperNodes' if secure else 'insecure'}); "
              f"{devices} SuperNodes; process logs: {work / 'logs'} (moved to {run_dir / 'deployment'} at the end)")
        try:
            with fed:
                fed.run(APP_ROOT, rc_path, None if quiet else print)
        finally:
            _collect_logs(fed, run_dir)
    return _summary(run_dir)


def app_pyproject() -> Path:
    """The app's ``pyproject.toml`` (``flwr run`` bundles the folder holding it)."""
    from simulations.server_app import APP_ROOT

    pyproject = APP_ROOT / "pyproject.toml"
    if not pyproject.is_file():
        raise ConfigError(str(APP_ROOT), "fleet deploy needs the app's source folder (its pyproject.toml), which "
                                         "flwr run builds into the app bundle; install from a clone")
    return pyproject


def _collect_logs(fed: Any, run_dir: Path) -> None:
    """The processes' logs and exit codes into ``RUN_DIR/deployment/`` (keys and certificates stay behind)."""
    dest = run_dir / "deployment"
    if (fed.work / "logs").is_dir():
        shutil.copytree(fed.work / "logs", dest, dirs_exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "processes.json").write_text(json.dumps({
        "superlink": f"127.0.0.1:{fed.port}", "secure": fed.secure, "devices": fed.devices,
        "processes": [{"name": s.name, "pid": s.proc.pid, "returncode": fed.group.returncodes.get(s.name)}
                      for s in fed.group.started],
    }, indent=2) + "\n")


def _summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        raise RunFailed(f"the deployment ended without a summary; see {run_dir / 'deployment' / 'flwr-run.log'}"
                        ) from None
    if summary.get("status") != "complete":
        raise RunFailed(f"{summary.get('error', 'the run did not complete')} (summary.json marked "
                        f"{summary.get('status')}; logs in {run_dir / 'deployment'})")
    return summary


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(args: argparse.Namespace) -> int:
    from simulations.cli import print_summary
    from simulations.deployment.federation import DeploymentError
    from simulations.run.scenario import mark_interrupted
    from simulations.store.results import new_run_dir

    cfg = _config(args)
    planned = Path(args.out or cfg.output.dir or "runs")
    run_config = run_config_for_flwr(cfg, planned, app_pyproject())  # a key Flower refuses: before any folder
    run_dir = new_run_dir("runs", cfg.name, args.out or cfg.output.dir or None).resolve()
    run_config["output"]["dir"] = str(run_dir)
    print(f"run directory: {run_dir}")
    for sig in (signal.SIGTERM, signal.SIGHUP):  # kill, a closed terminal, a cancelled job: stop like Ctrl-C
        signal.signal(sig, _interrupt)
    try:
        summary = deploy(cfg, run_dir, secure=not args.insecure, quiet=args.quiet, run_config=run_config)
    except DeploymentError as exc:
        mark_interrupted(run_dir, "failed", str(exc))
        raise RunFailed(str(exc)) from None
    except KeyboardInterrupt as exc:
        mark_interrupted(run_dir)
        print(f"interrupted ({str(exc) or 'SIGINT'}): every process of the deployment is stopped; finished rounds are "
              f"in {run_dir}", file=sys.stderr)
        return 130
    print_summary(summary, log="deployment/flwr-run.log")
    print(f"report: {run_dir / 'report.md'}")
    return 0
