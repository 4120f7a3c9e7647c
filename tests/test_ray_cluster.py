"""Joining an existing Ray cluster: ``ray start --head`` on loopback, then a run with ``ray.address``.

The ``ray`` command is the one installed beside the running interpreter (the
environment's ``bin/``), else the first on ``PATH``; without either the test is
skipped. The head gets its own ``--temp-dir``, so its processes are found by that path (and
their descendants) and stopped by process id in the fixture's teardown. ``ray stop
--force`` is deliberately not used: it kills every Ray process of the user,
including other runs on the same machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from whole_run import run_flat

from simulations.deployment.processes import free_port


def _ray_executable() -> str | None:
    """``ray`` beside ``sys.executable`` (not resolved: a venv's python is a symlink), else on PATH."""
    beside = Path(sys.executable).parent / "ray"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ray")


RAY = _ray_executable()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(RAY is None, reason=f"no 'ray' executable beside {sys.executable} or on PATH "
                                           "(install flwr[simulation] into this environment)"),
]


def _head_processes(temp_dir: str) -> list[psutil.Process]:
    """Processes whose command line names ``temp_dir``, and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        if temp_dir in " ".join(p.info["cmdline"] or ()):
            found[p.pid] = p
            try:
                found.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                continue
    return list(found.values())


def _stop(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture
def ray_head() -> Iterator[tuple[str, Path]]:
    """A 2-CPU Ray head on 127.0.0.1; yields (address, temp dir) and stops exactly its processes afterwards."""
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="efray", dir="/tmp")
    port = free_port()
    assert RAY is not None  # the module is skipped otherwise
    cmd = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
           "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
        yield f"127.0.0.1:{port}", Path(temp_dir)
    finally:
        _stop(_head_processes(temp_dir))
        leftover = _head_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not leftover, f"Ray head processes left running: {[p.pid for p in leftover]}"


def test_run_joins_an_existing_cluster(ray_head: tuple[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 4 digits devices, 2 rounds, attached to the head through ray.address
    address, temp_dir = ray_head
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))
    flat = {"federation.num-devices": 4, "federation.devices-per-round": 2, "federation.rounds": 2,
            "data.dataset": "digits", "model.arch": "mlp", "model.pretrain-epochs": 2, "ray.address": address}

    # Execute
    summary, rounds, _ = run_flat(flat, tmp_path / "run", "ray-cluster")

    # Assert: the run completed both rounds with every sampled device
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    assert [r["devices_completed"] for r in rounds] == [0, 2, 2]  # round 0: the starting model
    # ... and it ran on the head: this process's driver log is in the head's session, not a new local one
    assert list(temp_dir.glob(f"session_*/logs/python-core-driver-*_{os.getpid()}.log"))
