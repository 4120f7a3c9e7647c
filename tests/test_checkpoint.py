"""Checkpoints without Ray: atomic writes, damaged and changed-config refusals, strategy state, device state."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from fleet.config.scenario import defaults, unflatten
from fleet.config.schema import ConfigError
from fleet.state import load_device_state, save_device_state
from simulations.run.resume import check_resumable
from simulations.store.checkpoint import (
    CheckpointError,
    capture_object_state,
    config_hash,
    latest_checkpoint,
    restore_object_state,
    save_checkpoint,
)


class _Inner:
    def __init__(self) -> None:
        self.m_t = {"w": np.ones(3, np.float32)}
        self.eta = 0.1
        self.name = "x"
        self.fn = print  # not state: construction-time


def _make_run(tmp_path: Path) -> tuple[Path, dict]:
    run = tmp_path / "run"
    run.mkdir()
    flat = defaults().to_flat()
    (run / "config.toml").write_bytes(tomli_w.dumps(unflatten(flat)).encode())
    (run / "summary.json").write_text(json.dumps({"status": "running", "scenario": "scenario"}))
    return run, flat


def _snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_save_then_load_restores_arrays_strategy_and_rngs(tmp_path: Path) -> None:
    # Prepare
    run, flat = _make_run(tmp_path)
    inner = _Inner()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    arrays = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}

    # Execute: checkpoint, draw from every RNG, then restore
    save_checkpoint(run, 3, arrays, {"participation": np.array([1, 0, 2])}, inner, config_hash(flat), keep=2)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt = latest_checkpoint(run)
    assert ckpt is not None
    ckpt.restore_rngs()
    fresh = _Inner()
    fresh.m_t, fresh.eta = {}, 0.0
    restore_object_state(fresh, {k[6:]: v for k, v in ckpt.strategy.items() if k.startswith("inner/")},
                         ckpt.inner_meta)

    # Assert
    assert ckpt.round == 3 and (ckpt.arrays["fc.weight"] == arrays["fc.weight"]).all()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert fresh.eta == 0.1 and (fresh.m_t["w"] == 1).all() and fresh.fn is print


def test_half_written_checkpoint_is_never_resumed_from(tmp_path: Path) -> None:
    # Prepare: round 2 complete, round 3 killed while writing (only its temporary folder exists)
    run, flat = _make_run(tmp_path)
    save_checkpoint(run, 2, {"a": np.zeros(2, np.float32)}, {}, _Inner(), config_hash(flat), keep=2)
    tmp = run / "checkpoints" / ".tmp-round-00003-999"
    tmp.mkdir()
    (tmp / "arrays.safetensors").write_bytes(b"\x00\x01")

    # Execute
    ckpt = latest_checkpoint(run)

    # Assert
    assert ckpt is not None and ckpt.round == 2


def test_keeps_only_the_newest_checkpoints(tmp_path: Path) -> None:
    run, flat = _make_run(tmp_path)
    for r in range(1, 5):
        save_checkpoint(run, r, {"a": np.full(2, r, np.float32)}, {}, _Inner(), config_hash(flat), keep=2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["round-00003", "round-00004"]


def test_damaged_checkpoint_is_refused_and_nothing_is_modified(tmp_path: Path) -> None:
    # Prepare
    run, flat = _make_run(tmp_path)
    path = save_checkpoint(run, 1, {"a": np.zeros(4, np.float32)}, {}, _Inner(), config_hash(flat), keep=2)
    blob = bytearray((path / "arrays.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (path / "arrays.safetensors").write_bytes(bytes(blob))
    before = _snapshot(run)

    # Execute / Assert
    with pytest.raises(CheckpointError, match="damaged"):
        latest_checkpoint(run)
    with pytest.raises(ConfigError) as err:
        check_resumable(run)
    assert "\n" not in str(err.value) and "damaged" in str(err.value)
    assert _snapshot(run) == before


def test_changed_config_is_refused_and_nothing_is_modified(tmp_path: Path) -> None:
    # Prepare: a checkpoint, then the user edits config.toml
    run, flat = _make_run(tmp_path)
    save_checkpoint(run, 1, {"a": np.zeros(2, np.float32)}, {}, _Inner(), config_hash(flat), keep=2)
    flat2 = dict(flat, **{"train.lr": 0.5})
    (run / "config.toml").write_bytes(tomli_w.dumps(unflatten(flat2)).encode())
    before = _snapshot(run)

    # Execute / Assert
    with pytest.raises(ConfigError, match="changed since the checkpoint of round 1"):
        check_resumable(run)
    assert _snapshot(run) == before


def test_not_a_run_and_no_checkpoint_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a run directory"):
        check_resumable(tmp_path)
    run, _ = _make_run(tmp_path)
    with pytest.raises(ConfigError, match="no checkpoint"):
        check_resumable(run)


def test_capture_skips_callables_and_keeps_scalars() -> None:
    arrays, meta = capture_object_state(_Inner())
    assert set(arrays) == {"m_t/w"} and meta["eta"] == {"kind": "scalar", "value": 0.1} and "fn" not in meta


def test_device_state_reads_the_newest_earlier_round(tmp_path: Path) -> None:
    # Prepare: a device saved after rounds 2 and 5, and a round-7 file from a round cut short by a crash
    root = str(tmp_path)
    save_device_state(root, 4, 2, {"coreset-indices": np.array([1, 2])})
    save_device_state(root, 4, 5, {"coreset-indices": np.array([3])})
    save_device_state(root, 4, 7, {"coreset-indices": np.array([9])})

    # Execute / Assert: resumed at round 7, the device sees round 5's state, as an uninterrupted run would
    assert load_device_state(root, 4, 7)["coreset-indices"].tolist() == [3]
    assert load_device_state(root, 4, 6)["coreset-indices"].tolist() == [3]
    assert load_device_state(root, 9, 3) == {}
    save_device_state(root, 5, 1, {})
    assert load_device_state(root, 5, 2) == {}
