"""Shared benchmark plumbing: machine facts, the git commit, atomic JSON results, budgets and CI text.

Nothing of ``fleet`` (``plain_loops`` may import this module): the standard library and
``simulations.analysis.stats`` at import time, ``torch`` only when a fact about it is asked for.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import import_module, metadata
from pathlib import Path
from typing import Any

from fleet.atomic import write_text_atomic
from simulations.analysis.stats import format_ci, mean_ci95

RESULTS = Path(__file__).parent / "results"
#: ``../shared/data`` beside the repository (override with EDGEFLEET_SHARED_DATA)
SHARED_DATA = Path(os.environ.get("EDGEFLEET_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

__all__ = ["machine", "git_commit", "utc_now", "write_json", "read_json", "write_result", "run_scenario",
           "over_budget", "ci_text", "MACHINE_FACTS", "RESULTS", "SHARED_DATA"]


def git_commit(default: str | None = "unknown") -> str | None:
    """The commit checked out where the benchmarks live (``git rev-parse HEAD``), or ``default``."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return default


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


_FACTS: dict[str, Callable[[], Any]] = {
    "cores": os.cpu_count,
    "memory_bytes": _memory_bytes,
    "memory_gib": lambda: None if (b := _memory_bytes()) is None else round(b / 2**30, 1),
    "memory_mb": lambda: None if (b := _memory_bytes()) is None else b // 2**20,
    "python": platform.python_version,
    "torch": lambda: import_module("torch").__version__,  # with its local tag, e.g. "+cu130"
    "torch_threads": lambda: import_module("torch").get_num_threads(),
    "flwr": lambda: _version("flwr"),
    "ray": lambda: _version("ray"),
    "numpy": lambda: _version("numpy"),
    "commit": git_commit,
    "load_avg": lambda: list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    "date": utc_now,
}
#: The facts (and key names) of the default block, as ``learning.json`` and ``faults.json`` have them.
MACHINE_FACTS: tuple[str, ...] = ("cores", "memory_gib", "python", "torch", "flwr", "ray", "commit", "load_avg",
                                  "date")


def machine(facts: Sequence[str] = MACHINE_FACTS, rename: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Facts about this machine and run, in the order of ``facts``.

    Parameters
    ----------
    facts : sequence of str
        Which facts, from ``cores``, ``memory_bytes``, ``memory_gib`` (rounded to 0.1), ``memory_mb``
        (MiB, floored), ``python``, ``torch``, ``torch_threads``, ``flwr``, ``ray``, ``numpy`` (package
        versions; None when not installed), ``commit`` (:func:`git_commit`), ``load_avg`` (1, 5 and 15
        minutes) and ``date`` (:func:`utc_now`). Default: :data:`MACHINE_FACTS`.
    rename : mapping of str to str, optional
        fact -> the key a benchmark's JSON has always used for it (e.g. ``{"cores": "cpu_count"}``).

    Examples
    --------
    >>> sorted(machine(("cores", "python"), rename={"cores": "cpu_count"}))
    ['cpu_count', 'python']
    """
    unknown = [f for f in facts if f not in _FACTS]
    if unknown:
        raise KeyError(f"unknown machine fact {unknown[0]!r}; facts: {', '.join(_FACTS)}")
    rename = rename or {}
    return {rename.get(f, f): _FACTS[f]() for f in facts}


def write_json(path: Path, record: Any, *, indent: int | None = 2, default: Callable[[Any], Any] | None = None
               ) -> Path:
    """Write ``record`` as JSON (and a final newline) to ``path``, atomically; returns ``path``.

    Through ``fleet.atomic`` (a temporary file beside ``path`` that then replaces it), so an interrupted
    write leaves the earlier results whole. Parent folders are created.
    """
    path = Path(path)
    write_text_atomic(path, json.dumps(record, indent=indent, default=default) + "\n")
    return path


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file (an earlier run's results, to resume)."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    """``results/<name>.json`` (or ``out``): ``{"benchmark": name, "machine": machine(), **payload}``."""
    return write_json(out or RESULTS / f"{name}.json", {"benchmark": name, "machine": machine(), **payload},
                      default=str)


def run_scenario(cfg: Any, run_dir: Path) -> tuple[dict[str, Any], float]:
    """Preflight a parsed scenario and run it into ``run_dir`` through the real path (``run_config``).

    Returns the run's summary and its wall seconds (preflight excluded). ``fleet`` and Ray are imported here,
    not when this module is.
    """
    from simulations.run.scenario import preflight, run_config  # noqa: PLC0415 - see the module docstring

    preflight(cfg)
    t0 = time.perf_counter()
    summary = run_config(cfg, run_dir)
    return summary, time.perf_counter() - t0


def over_budget(start: float, budget_s: float, runs: int = 0, next_s: float | None = None) -> bool:
    """Whether a new run would pass ``budget_s`` seconds since ``start`` (a ``time.perf_counter()``).

    The new run is expected to take ``next_s`` seconds when the caller knows (earlier records of the
    same cell), else the mean time of the ``runs`` finished since ``start``; with neither, only the
    time already spent counts.

    Examples
    --------
    >>> over_budget(time.perf_counter() - 60, 100, runs=1)  # 60 s spent, one run: the next ends near 120 s
    True
    >>> over_budget(time.perf_counter() - 60, 100)
    False
    >>> over_budget(time.perf_counter() - 60, 100, runs=1, next_s=30)  # this cell's runs took 30 s
    False
    """
    elapsed = time.perf_counter() - start
    expected = next_s if next_s is not None else (elapsed / runs if runs else 0.0)
    return elapsed + expected > budget_s


def ci_text(values: Iterable[float | None], digits: int = 1, empty: str = "–") -> str:
    """``mean ± 95% half-width`` in percent over the values that are not None or NaN, else ``empty``.

    Examples
    --------
    >>> ci_text([0.5, None, float("nan")])
    '50.0'
    >>> ci_text([None], empty="-")
    '-'
    """
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return format_ci(*mean_ci95(vals), scale=100, digits=digits) if vals else empty
