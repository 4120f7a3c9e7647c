"""Live progress of a run (rich): rounds done, devices done, accuracy so far."""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from fleet.config.scenario import ScenarioConfig

__all__ = ["Progress"]


class Progress:
    """A rich progress bar over rounds (or plain log lines with ``quiet``)."""

    def __init__(self, cfg: ScenarioConfig, quiet: bool = False) -> None:
        self.cfg, self.quiet = cfg, quiet
        self.console = Console(file=sys.stderr)  # the terminal now: a run routes sys.stderr to run.log
        self.bar: RichProgress | None = None
        self.task: Any = None
        self.devices = 0

    def __enter__(self) -> Progress:
        if not self.quiet:
            self.bar = RichProgress(TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console,
                                    transient=False, redirect_stdout=False, redirect_stderr=False)
            self.bar.__enter__()
            self.task = self.bar.add_task("rounds", total=self.cfg.federation.rounds, info="starting Ray...")
        return self

    def update(self, row: dict[str, Any]) -> None:
        acc = row.get("accuracy")
        acc_s = "n/a" if acc is None else f"{100 * acc:.2f}%"
        if row.get("round", 0) == 0:
            info = f"initial accuracy {acc_s}"
        else:
            self.devices += row.get("devices_completed", 0)
            info = (f"accuracy {acc_s} | devices ok {row.get('devices_completed')}/{row.get('devices_sampled')} "
                    f"(total {self.devices}) | failed {row.get('devices_failed')} dropped {row.get('devices_dropped')}")
        if self.bar is not None:
            self.bar.update(self.task, completed=row.get("round", 0), info=info)
        else:
            self.console.print(f"round {row.get('round')}: {info}")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.bar is not None:
            self.bar.__exit__(et, e, tb)
