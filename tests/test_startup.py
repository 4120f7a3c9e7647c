"""summary.json's start-up phases: every phase before round 1, in order, and a second run in one process."""

from __future__ import annotations

from pathlib import Path

from simulations.run import startup
from simulations.run.scenario import load_config, run_config

FAST = {"federation.num-devices": 3, "federation.devices-per-round": 2, "federation.rounds": 1,
        "model.pretrain-epochs": 1, "federation.engine": "local", "federation.workers": 1,
        "privacy.membership-inference": False}
PHASES = ["engine", "data", "reference", "global_model", "roster", "initial_evaluation"]


def test_a_run_records_its_start_up_phases_and_a_second_run_only_its_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(startup, "_RUNS", [0])  # as in a fresh process (other tests ran runs in this one)
    monkeypatch.setattr(startup, "_MARKS", [])
    cfg, _ = load_config("quickstart", FAST)
    first = run_config(cfg, tmp_path / "a")["startup_s"]
    assert list(first) == ["imports", *PHASES] and all(v >= 0 for v in first.values())
    second = run_config(cfg, tmp_path / "b")["startup_s"]
    assert list(second) == PHASES  # no imports: the process had started long before


def test_phases_measure_from_the_previous_mark(monkeypatch) -> None:
    clock = iter([10.0, 11.5, 14.0, 14.25])
    monkeypatch.setattr(startup, "_MARKS", [])
    monkeypatch.setattr(startup, "_START", 9.0)
    monkeypatch.setattr(startup.time, "perf_counter", lambda: next(clock))
    for phase in ("imports", "data", "data", "roster"):
        startup.mark(phase)
    assert startup.phases() == {"imports": 1.0, "data": 4.0, "roster": 0.25}
