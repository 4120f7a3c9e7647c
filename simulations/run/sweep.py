"""``fleet sweep SCENARIO --grid KEY=V1,V2 --seeds N``: a resumable grid of runs, then compared.

The cartesian product of the grid values times seeds ``0..N-1`` (``federation.seed``) runs
as normal run directories under one sweep directory; then ``sweep.csv`` (one row per run)
and ``compare.md`` (:func:`simulations.analysis.compare.write_comparison`) are written.

- How a run executes is injected: ``run_fn`` (``simulations.run.scenario.run_scenario``), and
  every key and value is checked first with ``validate_fn`` (``fleet.config.scenario.check_override``).
- Resume: runs whose summary says complete are skipped; an incomplete or corrupt run
  directory is moved to ``<sweep>/_incomplete/`` (kept for debugging) and run again.
- ``jobs > 1``: a ``spawn`` process pool with one run per worker process
  (``max_tasks_per_child=1``), so each run starts from a clean interpreter (Ray and torch
  threads do not survive ``fork``) and calls ``ray.init`` itself (its own local Ray
  instance). Keep ``jobs x ray.num-cpus`` within the cores; ``run_fn`` must be picklable.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from fleet.errors import one_line
from simulations.analysis.compare import METRICS, SEED_KEY, Result, result_from_run, write_comparison
from simulations.store.rundir import Run, RunDirError, is_run_dir, load_run

__all__ = ["RunFn", "ValidateFn", "PlannedRun", "SweepResult", "parse_grid", "parse_fixed",
           "validate_grid", "plan_runs", "run_name", "run_sweep", "csv_columns", "default_out",
           "add_parser", "main"]

RunFn = Callable[[str, dict[str, str], Path], None]
ValidateFn = Callable[[str, str], None]
CheckFn = Callable[[str, dict[str, str]], None]  # (scenario, overrides): the whole run's config, or raise
INCOMPLETE_DIR = "_incomplete"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]")


@dataclass(frozen=True)
class PlannedRun:
    """One point of the sweep: grid values (as text), seed, and its run directory."""

    values: tuple[str, ...]
    seed: int
    overrides: dict[str, str]
    out_dir: Path


@dataclass(frozen=True)
class SweepResult:
    """What a sweep did: its outputs, and how many runs ran, were skipped or failed."""

    csv_path: Path
    report_path: Path
    ran: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """``["KEY=V1,V2", ...]`` to ``{KEY: [V1, V2]}`` (order kept).

    Raises
    ------
    ValueError
        One line naming the item: no ``=``, an empty key or value, a repeated key, or the
        seed key (seeds come from ``--seeds``).
    """
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        values = [v.strip() for v in text.split(",")]
        if not sep or not key:
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,...")
        if not all(values):
            raise ValueError(f"{key}: empty value in --grid {item!r}")
        if key in grid:
            raise ValueError(f"{key}: given twice in --grid")
        if key == SEED_KEY:
            raise ValueError(f"{key}: set seeds with --seeds N, not --grid")
        grid[key] = values
    return grid


def parse_fixed(items: Sequence[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (``--set``) to a dict; one-line ValueError for a bad item."""
    fixed: dict[str, str] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or not text.strip():
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        fixed[key.strip()] = text.strip()
    return fixed


def validate_grid(grid: dict[str, list[str]], validate_fn: ValidateFn | None) -> None:
    """Check every key and value with ``validate_fn`` before anything runs.

    Raises
    ------
    ValueError
        The first one ``validate_fn`` raises, reduced to one line that names the key.
    """
    if validate_fn is None:
        return
    for key, values in grid.items():
        for text in values:
            try:
                validate_fn(key, text)
            except ValueError as exc:
                msg = str(exc).splitlines()[0] if str(exc) else "invalid value"
                raise ValueError(msg if key in msg else f"{key}={text}: {msg}") from None


def run_name(keys: Sequence[str], values: Sequence[str], seed: int) -> str:
    """Directory name of one run: ``key=value__...__seed=N``, filesystem-safe.

    Examples
    --------
    >>> run_name(["coreset.fraction", "coreset.method"], ["0.1", "acs"], 2)
    'coreset.fraction=0.1__coreset.method=acs__seed=2'
    """
    parts = [f"{k}={v}" for k, v in zip(keys, values, strict=True)] + [f"seed={seed}"]
    name = _UNSAFE.sub("_", "__".join(parts))
    if len(name) > 150:  # keep paths short enough for every filesystem
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:120]}__{digest}"
    return name


def plan_runs(grid: dict[str, list[str]], seeds: int, out: Path,
              fixed: dict[str, str] | None = None) -> list[PlannedRun]:
    """The cartesian product of grid values (in --grid order) times seeds 0..seeds-1.

    ``fixed`` overrides (``--set``) go to every run and are not part of the names.
    """
    keys = list(grid)
    plans: list[PlannedRun] = []
    for values in itertools.product(*grid.values()):
        for seed in range(seeds):
            overrides = (dict(fixed or {}) | dict(zip(keys, values, strict=True))
                         | {SEED_KEY: str(seed)})
            plans.append(PlannedRun(tuple(values), seed, overrides,
                                    out / run_name(keys, values, seed)))
    names = [p.out_dir.name for p in plans]
    if len(set(names)) != len(names):
        raise ValueError("grid values map to the same directory name after removing "
                         "unsafe characters; use values that differ in letters or digits")
    return plans


def _load(path: Path) -> Run | None:
    """The run at ``path``, or None when there is none or it is corrupt (then it is re-run)."""
    try:
        return load_run(path) if is_run_dir(path) else None
    except RunDirError:
        return None


def _is_complete(path: Path) -> bool:
    run = _load(path)
    return run is not None and not run.incomplete


def _set_aside(path: Path, out: Path) -> None:
    """Move a crashed run's directory under ``_incomplete/`` so the rerun starts clean."""
    if not path.exists():
        return
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        return
    dest_dir = out / INCOMPLETE_DIR
    dest_dir.mkdir(exist_ok=True)
    k = 1
    while (dest_dir / f"{path.name}.{k}").exists():
        k += 1
    shutil.move(str(path), dest_dir / f"{path.name}.{k}")


def _execute(todo: list[PlannedRun], scenario: str, jobs: int, run_fn: RunFn) -> dict[str, str]:
    """Run the planned runs; return ``{run name: one-line error}`` for those that raised."""
    failed: dict[str, str] = {}
    if jobs <= 1:
        for plan in todo:
            try:
                run_fn(scenario, dict(plan.overrides), plan.out_dir)
            except Exception as exc:  # one failed run must not stop the sweep
                failed[plan.out_dir.name] = one_line(exc)
        return failed
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        futures: dict[str, Future[None]] = {
            p.out_dir.name: pool.submit(run_fn, scenario, dict(p.overrides), p.out_dir)
            for p in todo}
        try:
            for name, fut in futures.items():
                err = fut.exception()
                if err is not None:
                    failed[name] = one_line(err)
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return failed


def csv_columns(grid_keys: Sequence[str]) -> list[str]:
    """Columns of ``sweep.csv``: the grid keys, seed, the final metrics, status, run_dir."""
    return [*grid_keys, "seed", *METRICS, "status", "run_dir"]


def _write_csv(path: Path, keys: list[str], plans: list[PlannedRun],
               results: list[Result]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(csv_columns(keys))
        for plan, res in zip(plans, results, strict=True):
            metrics = ["" if res.summary.get(m) is None else res.summary[m] for m in METRICS]
            writer.writerow([*plan.values, plan.seed, *metrics, res.status, plan.out_dir.name])


def run_sweep(scenario: str, grid: dict[str, list[str]], seeds: int, out: Path, jobs: int = 1,
              run_fn: RunFn | None = None, validate_fn: ValidateFn | None = None, *,
              fixed: dict[str, str] | None = None, check_fn: CheckFn | None = None) -> SweepResult:
    """Run (or resume) a sweep and write ``sweep.csv`` and ``compare.md`` under ``out``.

    Parameters
    ----------
    scenario : str
        Passed unchanged to ``run_fn`` (a scenario name or TOML path).
    grid : dict of str to list of str
        Config key -> values as text (see :func:`parse_grid`).
    seeds : int
        Seeds 0..seeds-1 per grid point, set through ``federation.seed``.
    out : Path
        The sweep directory; each run is ``out/<run_name>``.
    jobs : int
        Runs at once (default: 1, in this process; more uses a spawn process pool).
    run_fn : callable
        ``run_fn(scenario, overrides, out_dir)`` writes one run directory at ``out_dir``.
    validate_fn : callable or None
        ``validate_fn(key, text)`` raises ValueError for a bad key or value
        (default: None, no check).
    fixed : dict of str to str or None
        Overrides given to every run, e.g. fewer rounds (default: None). Changing them
        does not change run names, so use a new ``out`` when you change them.
    check_fn : callable or None
        ``check_fn(scenario, overrides)`` checks one grid point's whole config (strategy options
        included) and raises ValueError; every point is checked before the first run (default: None).

    Raises
    ------
    ValueError
        For a bad grid, seeds < 1 or jobs < 1, before anything runs.
    """
    if run_fn is None:
        raise ValueError("run_sweep needs a run_fn")
    if seeds < 1 or jobs < 1:
        raise ValueError(f"--seeds and --jobs must be >= 1, got seeds={seeds}, jobs={jobs}")
    fixed = dict(fixed or {})
    overlap = sorted(set(fixed) & (set(grid) | {SEED_KEY}))
    if overlap:
        raise ValueError(f"{overlap[0]}: given both in --set and in --grid/--seeds")
    validate_grid({k: [v] for k, v in fixed.items()} | grid, validate_fn)
    plans = plan_runs(grid, seeds, out, fixed)
    _check_points(scenario, plans, check_fn)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(
        {"scenario": scenario, "grid": grid, "seeds": seeds, "fixed": fixed}, indent=1),
        encoding="utf-8")
    todo = [p for p in plans if not _is_complete(p.out_dir)]
    for plan in todo:
        _set_aside(plan.out_dir, out)
    failed = _execute(todo, scenario, jobs, run_fn)
    keys = list(grid)
    results = []
    for plan in plans:
        run = _load(plan.out_dir)
        if run is not None:
            res = result_from_run(run, keys, plan.values)
        else:
            res = Result(plan.out_dir, plan.values, plan.seed, "missing")
        if plan.out_dir.name in failed and res.status != "complete":
            res = Result(res.run_dir, res.setting, plan.seed, "failed", res.summary, res.config)
        results.append(res)
    csv_path = out / "sweep.csv"
    _write_csv(csv_path, keys, plans, results)
    notes = [f"Scenario: `{scenario}`; grid: " + "; ".join(
        f"{k} = {', '.join(v)}" for k, v in grid.items()) + f"; seeds 0..{seeds - 1}"
             + "".join(f"; {k} = {v}" for k, v in fixed.items()) + ".",
             f"Runs: {len(plans)} planned, {len(todo)} run now, {len(plans) - len(todo)} "
             f"already complete (skipped), {len(failed)} failed."]
    notes += [f"Failed: `{name}`: {err}" for name, err in failed.items()]
    report = write_comparison(results, keys, out, f"Sweep of {Path(scenario).stem}", notes)
    return SweepResult(csv_path, report, len(todo), len(plans) - len(todo), failed)


def default_out(scenario: str, grid: dict[str, list[str]],
                fixed: dict[str, str] | None = None) -> Path:
    """``runs/<scenario>/sweep-<hash of scenario, grid, --set>``: the same command resumes."""
    text = json.dumps([scenario, grid, fixed or {}], sort_keys=True)
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return Path("runs") / Path(scenario).stem / f"sweep-{digest}"


def add_parser(subparsers: Any) -> None:
    """Register ``sweep`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of settings x seeds, resumable, then compare them",
        description="Run every combination of the --grid values for seeds 0..N-1 (set "
        "through federation.seed), each a normal run directory under one sweep directory, "
        "then write sweep.csv (one row per run) and compare.md with mean ± 95% interval "
        "per setting and figures. Runs that already finished are skipped, so the same "
        "command resumes an interrupted sweep. Every key and value is validated first.",
        epilog="example: fleet sweep quickstart --grid coreset.method=acs,random "
        "--grid coreset.fraction=0.1,0.3 --seeds 5 --jobs 2",
    )
    p.add_argument("scenario", metavar="SCENARIO", help="scenario name or TOML file")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a config key and the values to try (repeat for more keys; values "
                   "may not contain commas)")
    p.add_argument("--set", dest="fixed", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key in every run, e.g. --set federation.rounds=3 "
                   "(repeatable; not part of the run names)")
    p.add_argument("--seeds", type=int, required=True, metavar="N",
                   help="seeds 0..N-1 per setting (use >= 5 to rank methods)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="runs at once, each in its own process with its own Ray instance "
                   "(default: 1; keep J x ray.num-cpus within the cores)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="sweep directory (default: runs/<scenario>/sweep-<hash of the grid>, "
                   "so repeating the command resumes it)")
    p.set_defaults(func=main)


def _check_points(scenario: str, plans: list[PlannedRun], check_fn: CheckFn | None) -> None:
    """Every grid point's whole config, once per point (seeds differ only in federation.seed)."""
    if check_fn is None:
        return
    seen: set[tuple[tuple[str, str], ...]] = set()
    for plan in plans:
        point = tuple(sorted((k, v) for k, v in plan.overrides.items() if k != SEED_KEY))
        if point in seen:
            continue
        seen.add(point)
        try:
            check_fn(scenario, dict(plan.overrides))
        except ValueError as exc:
            raise ValueError(f"{one_line(str(exc))} (grid point {plan.out_dir.name})") from exc


def main(args: argparse.Namespace) -> int:
    """Run ``fleet sweep``: 0 when every run completed, 1 if some failed, 2 on bad input."""
    try:
        from fleet.config.scenario import check_override  # imported late: keeps --help fast
        from simulations.run.scenario import check_scenario, run_scenario

        grid = parse_grid(args.grid)
        fixed = parse_fixed(getattr(args, "fixed", []))
        out = args.out or default_out(args.scenario, grid, fixed)
        result = run_sweep(args.scenario, grid, args.seeds, Path(out), args.jobs,
                           run_fn=run_scenario, validate_fn=lambda k, v: check_override(k, v, fixed), fixed=fixed,
                           check_fn=check_scenario)
    except (ValueError, ImportError) as exc:
        print(f"fleet sweep: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"{result.ran} run(s) ran, {result.skipped} skipped (already complete), "
          f"{len(result.failed)} failed")
    for name, err in result.failed.items():
        print(f"  failed: {name}: {err}", file=sys.stderr)
    print(f"wrote {result.csv_path} and {result.report_path}")
    return 1 if result.failed else 0
