"""The processes of a local deployment: started in their own sessions, logged to files, all stopped at the end.

Each process (SuperLink, SuperNode, the ``flwr`` CLI) leads its own process group. What they spawn (SuperExec,
``flwr-serverapp``, ``flwr-clientapp``) may start sessions of its own, so :meth:`ProcessGroup.stop` records every
descendant first, sends SIGTERM to each group and to each descendant, waits, SIGKILLs whatever is left, and
finally checks that nothing it started is still alive. Ctrl-C is ignored while it stops them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["ProcessGroup", "Started", "free_port", "log_tail", "wait_until"]

#: Seconds a process gets to exit after SIGTERM before it is killed.
GRACE_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 3) -> str:
    """The last non-empty lines of a log file joined into one line, for an error message."""
    try:
        text = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


@dataclass
class Started:
    """One process the deployment started."""

    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class ProcessGroup:
    """Every process of one deployment; a context manager that stops them all on exit (also on Ctrl-C)."""

    logs: Path
    env: Mapping[str, str]
    cwd: Path
    started: list[Started] = field(default_factory=list)
    returncodes: dict[str, int | None] = field(default_factory=dict)

    def start(self, name: str, cmd: Sequence[str]) -> Started:
        """Start ``cmd`` in its own session, stdout and stderr to ``logs/<name>.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        path = self.logs / f"{name}.log"
        with path.open("ab") as log:
            proc = subprocess.Popen(list(cmd), env=dict(self.env), cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        s = Started(name, proc, path)
        self.started.append(s)
        return s

    def run(self, name: str, cmd: Sequence[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a short command (``flwr supernode register``) to completion; output kept in the log too."""
        res = subprocess.run(list(cmd), env=dict(self.env), cwd=self.cwd, capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        with (self.logs / f"{name}.log").open("a") as log:
            log.write(res.stdout + res.stderr)
        return res

    def descendants(self) -> list[psutil.Process]:
        """The started processes and everything they spawned that is still running."""
        found: list[psutil.Process] = []
        for s in self.started:
            try:
                root = psutil.Process(s.proc.pid)
                found += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def stop(self) -> list[str]:
        """Stop everything (SuperNodes before the SuperLink); returns what is still alive afterwards (empty).

        Each started process's exit code is kept in :attr:`returncodes` (negative: the signal that ended it).
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
        try:
            procs = self.descendants()
            for s in reversed(self.started):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(s.proc.pid, signal.SIGTERM)  # the leader may be gone while its group lives on
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            gone, alive = psutil.wait_procs(procs, timeout=GRACE_S)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            gone += psutil.wait_procs(alive, timeout=GRACE_S)[0]
            codes = {p.pid: p.returncode for p in gone}  # psutil reaped them: Popen would read 0
            for s in self.started:
                self.returncodes[s.name] = codes.get(s.proc.pid, s.proc.poll())
            return [f"{p.pid} {_cmd(p)}" for p in procs if _running(p)]
        finally:
            signal.signal(signal.SIGINT, previous)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        left = self.stop()
        if left and exc_type is None:
            raise RuntimeError(f"could not stop {len(left)} deployment processes: {', '.join(left)}")
        if left:  # do not hide the error (or the Ctrl-C) that ended the deployment
            print(f"warning: could not stop {len(left)} deployment processes: {', '.join(left)}", file=sys.stderr)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline()[:3])
    except psutil.Error:
        return "?"


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``check()`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False
