"""Crash, interrupt and resume: a resumed run equals an uninterrupted one, bit for bit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow

FLEET = [sys.executable, "-m", "simulations.cli"]
# Stateful on both sides: QuaRC coreset indices kept by devices between re-selections, server momentum (FedAvgM),
# injected crashes drawn per round, Dirichlet data.
SETS = ["federation.num-devices=6", "federation.devices-per-round=3", "federation.rounds=4", "federation.seed=5",
        "model.pretrain-epochs=3", "coreset.method=quarc", "coreset.fraction=0.5", "coreset.reselect-every=2",
        "strategy.name=fedavgm", "faults.crash=0.2", "ray.num-cpus=2", "train.batch-size=16",
        # Ray's process tree is what these tests kill and then look for; on the local engine this small run
        # ends before the test can interrupt it
        "federation.engine=ray"]


def _cmd(*args: str) -> list[str]:
    out = [*FLEET, *args]
    return out


def _run_args(out: Path) -> list[str]:
    args = ["run", "quickstart", "--quiet", "--no-report", "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    return args


def _lines(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.pop("wall_s", None)
    return rows


def _wait_for_round(run: Path, k: int, proc: subprocess.Popen, limit_s: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < limit_s:
        rounds = run / "rounds.jsonl"
        if (run / "checkpoints" / f"round-{k:05d}").is_dir() and rounds.is_file() and \
                len(rounds.read_text().splitlines()) >= k + 1:  # round 0 is the first line
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early with code {proc.returncode}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the round")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ, EDGEFLEET_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    return e


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path, env: dict[str, str]) -> None:
    # Prepare: the uninterrupted reference run
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cmd(*_run_args(full)), env=env, check=True, capture_output=True, timeout=600)

    # Execute: the same run killed with SIGKILL (whole process group, Ray included) after round 2, then resumed
    proc = subprocess.Popen(_cmd(*_run_args(cut)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_for_round(cut, 2, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert json.loads((cut / "summary.json").read_text())["status"] == "running"
    res = subprocess.run(_cmd("resume", str(cut), "--quiet"), env=env, capture_output=True, text=True, timeout=600)

    # Assert: every per-round metric, every device line and the final global arrays are identical
    assert res.returncode == 0, res.stderr[-2000:]
    assert _lines(cut / "rounds.jsonl") == _lines(full / "rounds.jsonl")
    assert _lines(cut / "devices.jsonl") == _lines(full / "devices.jsonl")
    a, b = load_file(str(full / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert json.loads((cut / "summary.json").read_text())["status"] == "complete"


def test_ctrl_c_leaves_a_resumable_run_and_no_processes(tmp_path: Path, env: dict[str, str]) -> None:
    # Prepare
    run = tmp_path / "int"
    proc = subprocess.Popen(_cmd(*_run_args(run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)

    # Execute: Ctrl-C after the first round
    try:
        _wait_for_round(run, 1, proc)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 30  # Ray's own processes got the SIGINT too and exit by themselves shortly
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.5)

    # Assert: exit 130, the summary says interrupted, the finished rounds are on disk, nothing left running
    assert proc.returncode == 130, err[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert len((run / "rounds.jsonl").read_text().splitlines()) >= 2  # round 0 and at least round 1
    assert not _group_alive(proc.pid)
    res = subprocess.run(_cmd("resume", str(run), "--quiet"), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len((run / "rounds.jsonl").read_text().splitlines()) == 5  # rounds 0..4


def test_ctrl_c_on_the_local_engine_stops_its_workers_and_leaves_a_resumable_run(tmp_path: Path,
                                                                                  env: dict[str, str]) -> None:
    # Prepare: enough rounds that the run is still going when the first is on disk
    run = tmp_path / "local"
    args = [a.replace("federation.engine=ray", "federation.engine=local").replace("federation.rounds=4",
                                                                                   "federation.rounds=12")
            for a in _run_args(run)] + ["--set", "train.local-epochs=4"]
    proc = subprocess.Popen(_cmd(*args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)

    # Execute: Ctrl-C (the whole process group, as a terminal sends it) once a round is on disk
    try:
        # a round's line reaches rounds.jsonl just before its checkpoint is renamed into place: wait for both
        while not ((run / "rounds.jsonl").is_file() and len((run / "rounds.jsonl").read_text().splitlines()) >= 2
                   and any((run / "checkpoints").glob("round-*"))):
            assert proc.poll() is None, f"run ended early with code {proc.returncode}"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while _group_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.5)

    # Assert: exit 130, interrupted, rounds on disk, no worker or forkserver left, and it resumes to the end
    assert proc.returncode == 130, err[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    done = len((run / "rounds.jsonl").read_text().splitlines())
    assert 2 <= done < 13
    assert not _group_alive(proc.pid)
    res = subprocess.run(_cmd("resume", str(run), "--quiet"), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len((run / "rounds.jsonl").read_text().splitlines()) == 13
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
