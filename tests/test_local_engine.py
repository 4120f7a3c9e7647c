"""The single-machine engine: the same results as Ray for the same seed, faults and timeouts as under Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleet.config.scenario import ConfigError, parse_config
from tests.whole_run import run_flat

BASE: dict[str, Any] = {
    "federation.num-devices": 12, "federation.devices-per-round": 4, "federation.rounds": 2, "data.dataset": "digits",
    "model.arch": "mlp", "model.pretrain-epochs": 2, "data.test-limit": 200, "quant.weight-bits": 2,
    "quant.act-bits": 2, "quant.codec": "qweights", "coreset.method": "quarc", "coreset.fraction": 0.5,
    "train.clc-beta": "auto", "ray.num-cpus": 1,
}
WALL = ("wall_s", "wall_time_s", "finished_at")


def _without_wall(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL} for r in rows]


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], list[dict]]:
    return run_flat(BASE, tmp_path_factory.mktemp("ray") / "run", "engines")


def test_local_engine_gives_the_ray_engines_results(ray_run: tuple, tmp_path: Path) -> None:
    summary, rounds, devices = run_flat({**BASE, "federation.engine": "local", "federation.workers": 2},
                                        tmp_path / "run", "engines")
    ray_summary, ray_rounds, ray_devices = ray_run
    assert _without_wall(rounds) == _without_wall(ray_rounds)
    assert _without_wall(devices) == _without_wall(ray_devices)
    for key in ("final_accuracy", "uplink_bytes", "downlink_bytes", "sim_time_s", "energy_j", "privacy"):
        assert summary[key] == ray_summary[key], key


def test_a_hung_device_is_cut_at_the_round_timeout_and_its_worker_replaced(tmp_path: Path) -> None:
    flat = {**BASE, "federation.engine": "local", "federation.workers": 2, "faults.hang": 0.3,
            "federation.round-timeout-s": 5.0, "federation.rounds": 3}
    summary, rounds, devices = run_flat(flat, tmp_path / "run", "hang")
    hung = [d for d in devices if d.get("fault") == "hang"]
    assert hung, "the seed draws at least one hang"
    assert all(d["status"] == "failed" and "round-timeout" in d["error"] for d in hung)
    assert summary["status"] == "complete" and summary["rounds_completed"] == 3
    # The next round, the hung device's worker (device d lives in worker d mod 2) is a fresh process that
    # answers. (Devices queued behind a hung one on its worker miss its round, as on a Ray actor.)
    first = min(hung, key=lambda h: h["round"])
    after = [d for d in devices if d["round"] == first["round"] + 1 and d["device"] % 2 == first["device"] % 2
             and d.get("fault") is None]
    assert after and any(d["status"] == "ok" for d in after)


def test_a_crashing_device_is_a_failed_reply(tmp_path: Path) -> None:
    flat = {**BASE, "federation.engine": "local", "federation.workers": 1, "faults.crash": 0.5}
    summary, _, devices = run_flat(flat, tmp_path / "run", "crash")
    crashed = [d for d in devices if d.get("fault") == "crash"]
    assert crashed and all(d["status"] == "failed" and d["error"] for d in crashed)
    assert summary["status"] == "complete"


def test_local_engine_refuses_a_ray_cluster() -> None:
    with pytest.raises(ConfigError, match="federation.engine"):
        parse_config({"federation.engine": "local", "ray.address": "auto"})


def test_a_device_gets_its_cpu_share_as_threads_and_the_pool_fits_the_cpus(monkeypatch) -> None:
    from fleet.client_app import device_threads
    from simulations.run import local_engine

    assert device_threads(parse_config({})) == 1
    assert device_threads(parse_config({"ray.num-cpus-per-device": 2.5})) == 2
    assert device_threads(parse_config({"ray.num-cpus-per-device": 0.25})) == 1
    monkeypatch.setattr(local_engine.os, "cpu_count", lambda: 8)
    assert local_engine.workers_for(0) == 8 and local_engine.workers_for(0, 3) == 2
    assert local_engine.workers_for(0, 16) == 1 and local_engine.workers_for(5, 16) == 5  # asked for: as asked


def test_a_worker_that_dies_during_start_up_is_a_one_line_error(tmp_path: Path) -> None:
    from simulations.run.local_engine import PoolGrid

    grid = PoolGrid({"data.dataset": "npz", "data.root": str(tmp_path / "missing")}, 2, 1, str(tmp_path / "log"))
    try:
        with pytest.raises(RuntimeError, match=r"worker 0 exited during start-up \(exit code 1\); see .*log"):
            grid.send_and_receive([])
    finally:
        grid.close()
