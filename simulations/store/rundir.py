"""Reading and validating a run directory (the format is documented in docs/results.md).

A run directory is what one simulation writes: ``config.toml``, ``rounds.jsonl``,
``devices.jsonl``, ``summary.json``, ``partition.json`` and optionally ``qgt.json`` and
``continual.jsonl``. Reports, sweeps and comparisons read it only through
:func:`load_run`, so the tolerance rules live here:

- a directory with neither ``config.toml`` nor ``rounds.jsonl`` is not a run
  (:class:`RunDirError`);
- a run whose ``summary.json`` is missing, unreadable or has a status other than
  ``"complete"`` is *incomplete* (:attr:`Run.incomplete`), not an error, so a crashed run
  can still be reported;
- a truncated last line of a JSONL file (a crash mid-write) is skipped and noted in
  :attr:`Run.notes`; a bad line before the last one is corruption and an error.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.config.scenario import flatten

__all__ = ["RunDirError", "Run", "load_run", "is_run_dir", "read_jsonl", "flatten"]

CONFIG = "config.toml"
ROUNDS = "rounds.jsonl"
DEVICES = "devices.jsonl"
SUMMARY = "summary.json"
PARTITION = "partition.json"
QGT = "qgt.json"
CONTINUAL = "continual.jsonl"


class RunDirError(ValueError):
    """A path that cannot be read as a run directory; the message is one line naming it."""


@dataclass(frozen=True)
class Run:
    """Everything a run directory holds, as plain Python data.

    Parameters
    ----------
    path : Path
        The run directory.
    config : dict
        ``config.toml`` as nested tables (empty when the file is missing).
    rounds : list of dict
        ``rounds.jsonl``, one dict per finished round, in file order.
    devices : list of dict
        ``devices.jsonl``, one dict per device-round.
    summary : dict or None
        ``summary.json``, or None when missing or unreadable.
    partition : dict or None
        ``partition.json``, or None when missing.
    qgt : dict or None
        ``qgt.json`` (QGT bottleneck ranking), or None when absent.
    continual : list of dict
        ``continual.jsonl`` (continual calibration), empty when absent.
    notes : list of str
        What was tolerated while reading (skipped truncated lines, unreadable files).
    """

    path: Path
    config: dict[str, Any]
    rounds: list[dict[str, Any]]
    devices: list[dict[str, Any]]
    summary: dict[str, Any] | None
    partition: dict[str, Any] | None
    qgt: dict[str, Any] | None = None
    continual: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The summary's status, or ``"missing"`` without a readable summary."""
        if self.summary is None:
            return "missing"
        return str(self.summary.get("status", "missing"))

    @property
    def incomplete(self) -> bool:
        """True unless ``summary.json`` says ``"status": "complete"``."""
        return self.status != "complete"

    @property
    def flat_config(self) -> dict[str, Any]:
        """The config as dotted keys (``coreset.fraction``), as Flower flattens it."""
        return flatten(self.config)

    @property
    def name(self) -> str:
        """A short display name: the scenario and the directory name."""
        scenario = (self.summary or {}).get("scenario")
        return f"{scenario}/{self.path.name}" if scenario else self.path.name


def is_run_dir(path: Path) -> bool:
    """True when ``path`` is a directory holding ``config.toml`` or ``rounds.jsonl``."""
    return path.is_dir() and ((path / CONFIG).is_file() or (path / ROUNDS).is_file())


def read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """Read a JSONL file, skipping (and noting) a truncated last line.

    Parameters
    ----------
    path : Path
        The file; a missing file reads as empty.
    notes : list of str
        Appended with a one-line note when the last line is skipped.

    Raises
    ------
    RunDirError
        When a line other than the last is not a JSON object.
    """
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            records.append(obj)
        elif i == len(lines) - 1:
            # The writer appends and flushes whole lines, so only a crash mid-write
            # leaves a broken line, and it can only be the last one.
            notes.append(f"{path.name}: skipped a truncated last line (line {i + 1})")
        else:
            raise RunDirError(f"{path}: line {i + 1} is not a JSON object (corrupt file)")
    return records


def _read_json(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        notes.append(f"{path.name}: not valid JSON, ignored")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{path.name}: not a JSON object, ignored")
        return None
    return obj


def load_run(path: str | Path) -> Run:
    """Read a run directory.

    Parameters
    ----------
    path : str or Path
        The run directory.

    Returns
    -------
    Run
        With :attr:`Run.incomplete` set when the summary is missing or not complete.

    Raises
    ------
    RunDirError
        When ``path`` is not a directory, holds neither ``config.toml`` nor
        ``rounds.jsonl``, or holds an unreadable ``config.toml`` or corrupt JSONL.
    """
    root = Path(path)
    if not root.is_dir():
        raise RunDirError(f"{root}: not a directory")
    if not is_run_dir(root):
        raise RunDirError(f"{root}: not a run directory (no {CONFIG} and no {ROUNDS})")
    notes: list[str] = []
    config: dict[str, Any] = {}
    if (root / CONFIG).is_file():
        try:
            config = tomllib.loads((root / CONFIG).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise RunDirError(f"{root / CONFIG}: not valid TOML ({exc})") from None
    else:
        notes.append(f"{CONFIG} is missing")
    summary = _read_json(root / SUMMARY, notes)
    if summary is None:
        notes.append(f"{SUMMARY} is missing: the run crashed or is still running")
    elif summary.get("status") != "complete":
        notes.append(f"{SUMMARY} has status {summary.get('status')!r}, not 'complete'")
    return Run(
        path=root,
        config=config,
        rounds=read_jsonl(root / ROUNDS, notes),
        devices=read_jsonl(root / DEVICES, notes),
        summary=summary,
        partition=_read_json(root / PARTITION, notes),
        qgt=_read_json(root / QGT, notes),
        continual=read_jsonl(root / CONTINUAL, notes),
        notes=notes,
    )
