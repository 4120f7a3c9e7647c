"""What a run spends before its first round, phase by phase: ``summary.json``'s ``startup_s``.

The server process marks the end of each phase; a phase's seconds run from the previous mark (the first from
the process's start, so it holds the interpreter, the imports and the command line). Phases:

- ``imports``: process start to the command's start (Python, torch, Flower, the CLI);
- ``preflight``: ``fleet run``'s checks of the scenario before the run (the config, the data, the memory plan);
- ``engine``: starting the engine until the ServerApp runs (Ray's start, or the local engine's workers);
- ``data``: loading and partitioning the dataset;
- ``reference``: the float reference (from the cache, or pretrained) and its test accuracy;
- ``global_model``: the quantized starting model (step sizes, BatchNorm statistics on public data);
- ``roster``: the roster query to every node (it waits for the workers to be up: their imports; on the local
  engine also the fleet's data, built in every worker before its first round);
- ``initial_evaluation``: the starting model's central evaluation (round 0).

Measured with ``time.perf_counter``; the process's start comes from ``/proc/self/stat`` (to 10 ms). Under
``flwr run`` Flower starts the ServerApp, so there is no ``imports`` or ``preflight`` phase and ``engine`` runs
from the process's start to the ServerApp.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

__all__ = ["begin", "mark", "phases"]

_MARKS: list[tuple[str, float]] = []
_RUNS = [0]  # runs begun in this process


def _process_age() -> float:
    """Seconds since this process started: from its start in clock ticks (``/proc/self/stat``, field 22) against
    the boot clock, to 10 ms; elsewhere from psutil, whose start time may be rounded to whole seconds."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time() - psutil.Process().create_time()


def _process_start() -> float:
    """The process's start on the ``perf_counter`` clock."""
    return time.perf_counter() - max(0.0, _process_age())


_START = _process_start()


def begin() -> None:
    """A run starts (``run_config``). The first in this process ends ``preflight`` when ``fleet run`` marked
    ``imports`` (else it ends ``imports``: a Python caller's own start); a later one (a sweep, a test) forgets
    the earlier run's marks and has neither phase."""
    global _START
    if _RUNS[0]:
        _MARKS.clear()
        _START = time.perf_counter()
    else:
        mark("preflight" if any(p == "imports" for p, _ in _MARKS) else "imports")
    _RUNS[0] += 1


def mark(phase: str) -> None:
    """``phase`` has just ended."""
    _MARKS.append((phase, time.perf_counter()))


def phases() -> dict[str, float]:
    """Seconds per phase, in order, rounded to milliseconds (a phase marked twice: the sum)."""
    out: dict[str, float] = {}
    last = _START
    for phase, t in _MARKS:
        out[phase] = round(out.get(phase, 0.0) + t - last, 3)
        last = t
    return out
