"""Round checkpoints: everything a resume needs, written atomically, in safe formats only.

``<run>/checkpoints/round-000K/`` holds ``arrays.safetensors`` (the global model),
``strategy.npz`` (the fleet wrapper's counters and the inner strategy's arrays, e.g.
FedAdam's moments), ``rng.npz`` (numpy's and torch's generator states) and
``state.json`` (round, Python ``random`` state, the inner strategy's scalars, the
config hash, and the sha256 of every file). A checkpoint is written into a hidden
temporary folder and renamed into place, so a half-written one is never seen.
Device-side state lives with the devices (``device-state/``, one file per device
and round), never here. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from safetensors.numpy import load_file, save_file

__all__ = ["Checkpoint", "save_checkpoint", "latest_checkpoint", "CheckpointError", "config_hash",
           "capture_object_state", "restore_object_state"]

_DIR = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from (one line)."""


def config_hash(flat: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def capture_object_state(obj: object) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and plain scalars among an object's attributes (a strategy's moments, momentum, counters).

    numpy arrays, dicts of arrays and ArrayRecords go to the arrays; int/float/str/bool/None go to the
    scalars. Anything else (callables, config objects) is construction-time state and is not saved.
    """
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for name, v in vars(obj).items():
        if isinstance(v, np.ndarray):
            arrays[f"{name}"] = v
            meta[name] = {"kind": "ndarray"}
        elif isinstance(v, ArrayRecord):
            for k, a in v.items():
                arrays[f"{name}/{k}"] = a.numpy()
            meta[name] = {"kind": "arrayrecord", "keys": list(v.keys())}
        elif isinstance(v, dict) and v and all(isinstance(a, np.ndarray) for a in v.values()):
            for k, a in v.items():
                arrays[f"{name}/{k}"] = a
            meta[name] = {"kind": "dict", "keys": list(v.keys())}
        elif v is None or isinstance(v, (bool, int, float, str)):
            meta[name] = {"kind": "scalar", "value": v}
    return arrays, meta


def restore_object_state(obj: object, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    for name, m in meta.items():
        kind = m["kind"]
        if kind == "ndarray":
            setattr(obj, name, arrays[name].copy())
        elif kind == "arrayrecord":
            setattr(obj, name, ArrayRecord({k: Array(arrays[f"{name}/{k}"].copy()) for k in m["keys"]}))
        elif kind == "dict":
            setattr(obj, name, {k: arrays[f"{name}/{k}"].copy() for k in m["keys"]})
        else:
            setattr(obj, name, m["value"])


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    inner_meta: dict[str, Any]
    config_hash: str
    path: Path

    def restore_rngs(self) -> None:
        state = json.loads((self.path / "state.json").read_text())
        py = state["python_random"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        rng = load_file(str(self.path / "rng.npz.safetensors"))
        np.random.set_state((state["numpy_kind"], rng["numpy_keys"], state["numpy_pos"],
                             state["numpy_has_gauss"], state["numpy_gauss"]))
        torch.set_rng_state(torch.from_numpy(rng["torch"].copy()))


def _split_prefix(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def save_checkpoint(run_dir: Path, server_round: int, arrays: dict[str, np.ndarray],
                    fleet_state: dict[str, np.ndarray], inner: object, cfg_hash: str, keep: int) -> Path:
    """Write round ``server_round``'s checkpoint atomically; keep the newest ``keep``."""
    root = Path(run_dir) / _DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round-{server_round:05d}"
    tmp = root / f".tmp-round-{server_round:05d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / "arrays.safetensors"))
    inner_arrays, inner_meta = capture_object_state(inner)
    strat = {f"fleet/{k}": v for k, v in fleet_state.items()} | {f"inner/{k}": v for k, v in inner_arrays.items()}
    save_file({k: np.ascontiguousarray(v) for k, v in strat.items()}, str(tmp / "strategy.safetensors"))
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    save_file({"numpy_keys": np.asarray(keys), "torch": torch.get_rng_state().numpy()},
              str(tmp / "rng.npz.safetensors"))
    py = random.getstate()
    state = {
        "round": server_round, "config_hash": cfg_hash, "inner_meta": inner_meta,
        "python_random": [py[0], list(py[1]), py[2]], "numpy_kind": kind, "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
        "files": {p.name: _sha(p) for p in sorted(tmp.iterdir())},
    }
    with open(tmp / "state.json", "w") as fh:
        json.dump(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in root.iterdir() if p.name.startswith("round-"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest complete checkpoint, verified against its hashes (damaged -> CheckpointError)."""
    root = Path(run_dir) / _DIR
    if not root.is_dir():
        return None
    rounds = sorted(p for p in root.iterdir() if p.name.startswith("round-") and p.is_dir())
    if not rounds:
        return None
    path = rounds[-1]
    try:
        state = json.loads((path / "state.json").read_text())
        for name, digest in state["files"].items():
            if _sha(path / name) != digest:
                raise CheckpointError(f"{path}: {name} does not match its recorded hash (damaged checkpoint)")
        arrays = load_file(str(path / "arrays.safetensors"))
        strat = load_file(str(path / "strategy.safetensors"))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: damaged checkpoint ({type(exc).__name__}: {exc})") from None
    return Checkpoint(int(state["round"]), dict(arrays), strat, state["inner_meta"], state["config_hash"], path)


def fleet_part(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    return _split_prefix(ckpt.strategy, "fleet/")


def inner_part(ckpt: Checkpoint) -> dict[str, np.ndarray]:
    return _split_prefix(ckpt.strategy, "inner/")
