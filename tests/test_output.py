"""What a person sees: with the live display no Flower or Ray log line reaches the terminal; with ``--quiet``
only our own lines do; everything else is in ``RUN_DIR/run.log``."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FLEET = str(Path(sys.executable).parent / "fleet")
SMALL = ["--set", "federation.rounds=1", "--set", "federation.num-devices=6", "--set",
         "federation.devices-per-round=3", "--set", "model.pretrain-epochs=3", "--no-report"]
FLOWER_LINE = re.compile(r"(INFO|WARNING|ERROR|DEBUG)\s*(\x1b\[0m)?\s*:|\[ROUND|\(ClientAppActor|Ray instance")


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "EDGEFLEET_CACHE": str(tmp_path / "cache"), "COLUMNS": "120"}


def test_quiet_prints_only_our_lines(tmp_path: Path) -> None:
    # Execute
    out = subprocess.run([FLEET, "run", "quickstart", "--quiet", "--out", str(tmp_path / "q"), *SMALL],
                         capture_output=True, text=True, env=_env(tmp_path), timeout=600, check=True)

    # Assert: stderr is one line per round, stdout our summary; Flower's log is in run.log
    assert [ln.split(":")[0] for ln in out.stderr.splitlines()] == ["round 0", "round 1"], out.stderr
    assert [ln.split(" ")[0] for ln in out.stdout.splitlines()] == ["run", "final", "device-rounds"], out.stdout
    log = (tmp_path / "q" / "run.log").read_text()
    assert "Starting FleetStrategy strategy" in log and "\x1b[" not in log
    csv_rows = (tmp_path / "q" / "rounds.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith("round,accuracy,")  # header + rounds 0 and 1
    assert "run_simulation` function is deprecated" not in log + out.stderr


def test_live_display_keeps_flower_and_ray_logs_off_the_terminal(tmp_path: Path) -> None:
    # Execute: the live display needs a terminal, so the run gets a pseudo-terminal
    master, slave = pty.openpty()
    proc = subprocess.Popen([FLEET, "run", "quickstart", "--out", str(tmp_path / "live"), *SMALL],
                            stdin=slave, stdout=slave, stderr=slave, env=_env(tmp_path), close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 600)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(master)
    screen = b"".join(chunks).decode("utf-8", "replace")

    # Assert: our progress and summary, no Flower/Ray log line
    assert proc.returncode == 0, screen[-2000:]
    assert "final accuracy" in screen and "round" in screen
    assert not FLOWER_LINE.search(screen), FLOWER_LINE.search(screen)
    assert "Starting FleetStrategy strategy" in (tmp_path / "live" / "run.log").read_text()
