"""The ``fleet`` command: run scenarios, and look at what they did.

Bad input exits with code 2 and one line on stderr naming the key or file; nothing
already on disk is touched.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from fleet.config.scenario import ConfigError
from fleet.errors import RunFailed
from simulations.run.logs import FlowerNoise

__all__ = ["main", "build_parser", "print_summary", "add_scenario_arguments"]

EPILOG = "Scenario keys: docs/scenario-keys.md. Results: docs/results.md."
#: Subcommands that live in their own modules (each has add_parser(subparsers) and main(args)).
SUBCOMMAND_MODULES = ("simulations.analysis.report", "simulations.run.sweep", "simulations.analysis.compare",
                      "simulations.run.resume", "simulations.deployment.command")


def add_scenario_arguments(p: argparse.ArgumentParser) -> None:
    """SCENARIO, ``--set KEY=VALUE`` and ``--out DIR``: how every command that runs a scenario names it."""
    p.add_argument("scenario", help="scenario file or built-in scenario name")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set federation.rounds=10 (repeatable)")
    p.add_argument("--out", default=None, help="run directory (must not exist or be empty; "
                                               "default runs/<scenario>/<timestamp>)")


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a scenario on a simulated fleet (Flower + Ray, in-process)",
                       description="Run SCENARIO: a TOML file of run-config keys, or the name of a file in "
                                   "simulations/scenarios/ (e.g. 'quickstart').", epilog=EPILOG)
    add_scenario_arguments(p)
    p.add_argument("--quiet", action="store_true", help="logs only, no live progress display")
    p.add_argument("--no-report", action="store_true", help="do not write plots and report.md at the end")
    p.add_argument("-v", "--verbose", action="store_true", help="Flower's and Ray's logs on the terminal instead of "
                   "RUN_DIR/run.log")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from simulations.run import startup
    from simulations.run.engine import engine_of
    from simulations.run.local_engine import start_forkserver
    from simulations.run.progress import Progress
    from simulations.run.scenario import load_config, preflight, run_config
    from simulations.store.results import new_run_dir

    startup.mark("imports")
    cfg, _ = load_config(args.scenario, args.overrides)
    if engine_of(cfg) == "local":
        start_forkserver()  # the workers' imports overlap the preflight
    for w in preflight(cfg):
        print(f"warning: {w}", file=sys.stderr)
    run_dir = new_run_dir("runs", cfg.name, args.out or cfg.output.dir or None)
    print(f"run directory: {run_dir}")
    with Progress(cfg, quiet=args.quiet) as bar:
        summary = run_config(cfg, run_dir, progress=bar.update, verbose=args.verbose)
    print_summary(summary)
    if not args.no_report:
        try:
            from simulations.analysis.report import write_report

            print(f"report: {write_report(run_dir)}")
        except ImportError:
            pass
    return 0


def print_summary(s: dict[str, Any], log: str = "run.log") -> None:
    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    from simulations.analysis.report import fmt_bytes  # the report's units (decimal kB/MB), one source

    print(f"final accuracy {pct(s.get('final_accuracy'))} (float reference {pct(s.get('fp_reference_accuracy'))}) "
          f"after {s.get('rounds_completed')} rounds; W{s.get('weight_bits')}A{s.get('act_bits')}, "
          f"model {fmt_bytes(s.get('model_size_bytes'))} (fp32 {fmt_bytes(s.get('fp32_model_size_bytes'))})")
    print(f"device-rounds ok {s.get('device_rounds_completed')}, failed {s.get('device_rounds_failed')}, "
          f"dropped {s.get('device_rounds_dropped')}; uplink {fmt_bytes(s.get('uplink_bytes'))}, "
          f"downlink {fmt_bytes(s.get('downlink_bytes'))}; wall {s.get('wall_time_s', 0):.1f} s, "
          f"simulated {s.get('sim_time_s', 0):.1f} s; log: {log}")


def _add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="list every scenario key with its default and meaning")
    p.set_defaults(func=lambda a: print(__import__("simulations.keysdoc", fromlist=["x"]).render()) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet", description="edgefleet: simulate fleets of privacy-bound edge devices that learn low-bit "
                                  "quantized models together (Flower + PyTorch + Ray).", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_keys(sub)
    for mod in SUBCOMMAND_MODULES:
        try:
            importlib.import_module(mod).add_parser(sub)
        except ImportError:
            continue
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False  # Flower prints through its own handler; don't print twice
    logging.getLogger("flwr").addFilter(FlowerNoise())  # lines about our use of Flower's API, not about the run
    args = build_parser().parse_args(argv)
    try:
        func = getattr(args, "func", None)
        return int(func(args) if func is not None else importlib.import_module(args.module).main(args))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        if len(str(exc).splitlines()) == 1 and type(exc).__module__.split(".")[0] in ("fleet", "strategies",
                                                                                     "simulations", "builtins"):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        from simulations.run.engine import shutdown_ray

        shutdown_ray()
        print("interrupted: every finished round is on disk; continue with `fleet resume RUN_DIR`",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
