"""Where a run's logs go: Flower's, Ray's and our own library logs to ``RUN_DIR/run.log``, not the terminal.

The terminal is for the person: the live progress display (or, with ``--quiet``, one line per round) and the
summary. Everything else a run prints (Flower's round log, Ray's start-up and its workers' forwarded output,
our modules' ``logging`` records) is appended to ``run.log`` in the run directory, so it is there to read
after the run and next to the results it explains. ``--verbose`` leaves every stream where it was.

Python-level only: a native library writing straight to file descriptor 2 still reaches the terminal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

__all__ = ["RUN_LOG", "routed_logs", "copied_logs", "FlowerNoise"]

RUN_LOG = "run.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class FlowerNoise(logging.Filter):
    """Drops Flower's log lines that describe our own use of its API, not the run: the ``run_simulation``
    deprecation notice (``fleet run`` uses it on purpose: docs/scaling.md), the inner strategy's "Sampled 1
    nodes" (the wrapper samples; it logs what it sampled itself) and "fraction_evaluate is set to 0.0" (the
    wrapper evaluates centrally, every ``federation.eval-every`` rounds, by design)."""

    _PATTERNS = ("`run_simulation` function is deprecated", "configure_train: Sampled",
                 "fraction_evaluate is set to 0.0")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(p in text for p in self._PATTERNS)


class _PlainText(io.TextIOBase):
    """A log file that drops terminal colour codes (Ray prefixes its workers' forwarded lines with them)."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, fh: TextIO) -> None:
        self.fh = fh

    def write(self, text: str) -> int:
        self.fh.write(self._ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.fh.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fh.fileno()


def _console_handlers() -> list[logging.StreamHandler]:
    """Every handler of every logger that writes to the process's stdout or stderr."""
    consoles = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}
    loggers = [logging.getLogger()] + [lg for lg in logging.root.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and id(h.stream) in consoles]


@contextlib.contextmanager
def routed_logs(run_dir: Path, verbose: bool = False, ray: bool = True) -> Iterator[None]:
    """While the block runs, send every log stream to ``run_dir/run.log`` (unless ``verbose``); ``ray``: the
    block runs Ray, whose loggers are then routed too."""
    noise = FlowerNoise()
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(noise)
    if verbose:
        try:
            yield
        finally:
            flwr_logger.removeFilter(noise)
        return
    if ray:  # importing it costs about 0.7 s, which a local-engine run does not need to pay
        import flwr.simulation  # noqa: F401 - imports Ray, whose loggers get their console handlers now

    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / RUN_LOG, "a", buffering=1, encoding="utf-8") as raw:
        fh = _PlainText(raw)
        handlers = _console_handlers()
        streams = [h.setStream(fh) for h in handlers]
        colored = [(h, h.colored) for h in handlers if hasattr(h, "colored")]  # Flower's: no colour codes in a file
        for h, _ in colored:
            h.colored = False
        root = logging.getLogger()
        ours = logging.StreamHandler(fh)  # our modules' records (fleet.*, simulations.*), INFO and up
        ours.setFormatter(logging.Formatter(_FORMAT))
        added = not any(h in handlers for h in root.handlers)
        if added:
            root.addHandler(ours)
        levels = root.level, flwr_logger.propagate
        root.setLevel(min(root.level or logging.WARNING, logging.INFO))
        flwr_logger.propagate = False  # Flower has its own handler: one line per record
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = fh  # Ray prints its workers' forwarded output through these
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
            root.setLevel(levels[0])
            flwr_logger.propagate = levels[1]
            if added:
                root.removeHandler(ours)
            for h, s in zip(handlers, streams, strict=True):
                if s is not None:
                    h.setStream(s)
            for h, c in colored:
                h.colored = c
            flwr_logger.removeFilter(noise)


@contextlib.contextmanager
def copied_logs(run_dir: Path) -> Iterator[None]:
    """Hosted by Flower's runtime (``flwr run``, ``fleet deploy``): the logs stay on Flower's stream, where the
    user follows the run, and are copied to ``run_dir/run.log`` (Flower's round log and our modules' records,
    INFO and up), so the run directory has the file a ``fleet run`` leaves."""
    noise = FlowerNoise()
    flwr_logger = logging.getLogger("flwr")
    handler = logging.FileHandler(run_dir / RUN_LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.INFO)
    handler.addFilter(noise)
    root = logging.getLogger()
    targets = [root] if flwr_logger.propagate else [root, flwr_logger]  # one line per record either way
    level = root.level
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    flwr_logger.addFilter(noise)
    for lg in targets:
        lg.addHandler(handler)
    try:
        yield
    finally:
        for lg in targets:
            lg.removeHandler(handler)
        flwr_logger.removeFilter(noise)
        root.setLevel(level)
        handler.close()
