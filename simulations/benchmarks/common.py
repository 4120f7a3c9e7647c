"""Shared benchmark plumbing: machine facts and the JSON record every benchmark writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
#: ``../shared/data`` beside the repository (override with EDGEFLEET_SHARED_DATA)
SHARED_DATA = Path(os.environ.get("EDGEFLEET_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))

__all__ = ["machine", "write_result", "RESULTS", "SHARED_DATA"]


def machine() -> dict[str, Any]:
    import flwr
    import ray
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version(),
            "torch": torch.__version__, "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "",
            "ray": ray.__version__, "commit": commit, "load_avg": os.getloadavg(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2, default=str))
    return path
