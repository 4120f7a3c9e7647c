"""A device's persistent state on its own local storage: one small file per round it trained.

A device keeps its coreset indices and selector records between rounds. Writing them
per round (``<dir>/<device>/r<round>.safetensors``, atomically) and reading the newest
one from an EARLIER round means a run resumed after a crash sees exactly the state an
uninterrupted run would have: files written by the round that was cut short are
simply ignored and then overwritten.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fleet.atomic import write_atomic

__all__ = ["load_device_state", "save_device_state"]


def _files(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob("r*.safetensors"):
        try:
            out.append((int(p.stem[1:]), p))
        except ValueError:
            continue
    return sorted(out)


def load_device_state(root: str, device: int, server_round: int) -> dict[str, np.ndarray]:
    """The newest state saved by ``device`` in a round before ``server_round`` (empty if none)."""
    earlier = [p for r, p in _files(Path(root) / str(device)) if r < server_round]
    if not earlier:
        return {}
    return {k: v for k, v in load_file(str(earlier[-1])).items() if k != "_empty"}


def save_device_state(root: str, device: int, server_round: int, state: dict[str, np.ndarray]) -> None:
    """Save this round's state and drop files older than the previous one (two are kept).

    An empty state is not written (a device with nothing to keep, e.g. no coreset, costs no disk I/O);
    reading then finds the same nothing."""
    if not state:
        return
    folder = Path(root) / str(device)
    arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
    write_atomic(folder / f"r{server_round}.safetensors", lambda tmp: save_file(arrays, tmp))
    for r, p in _files(folder)[:-2]:
        if r < server_round:
            p.unlink(missing_ok=True)
