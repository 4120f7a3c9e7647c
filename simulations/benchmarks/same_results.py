"""Does a refactor change what runs produce? Run every built-in scenario at two commits and compare the results.

    python -m simulations.benchmarks.same_results --base a48eba3 [--head HEAD] [--rounds 2] [--out DIR]

Each commit is checked out into a ``git worktree`` and run from there (``PYTHONPATH`` points at it, so the
Ray workers import that tree too), with this environment's packages. The quickstart runs in full; the other
scenarios at ``--rounds`` rounds. ``summary.json``, ``rounds.jsonl`` and ``devices.jsonl`` are compared line
by line without their wall-clock fields (``wall*``, ``*_at``); simulated time and energy are compared.
Prints one line per file and writes a JSON record; exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from simulations.benchmarks.common import write_result

SCENARIOS = ("quickstart", "heterogeneous-fleet", "w2a2-digits", "faulty-fleet", "continual-drift", "single-device")
FILES = ("summary.json", "rounds.jsonl", "devices.jsonl")
ROOT = Path(__file__).resolve().parents[2]


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if "wall" not in k and not k.endswith("_at")}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _lines(path: Path) -> list[Any]:
    text = path.read_text()
    rows = text.splitlines() if path.suffix == ".jsonl" else [text]
    return [_clean(json.loads(r)) for r in rows if r.strip()]


def _run_all(rev: str, out: Path, rounds: int) -> None:
    tree = out / "tree"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), rev], cwd=ROOT, check=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        for name in SCENARIOS:
            extra = [] if name == "quickstart" else ["--set", f"federation.rounds={rounds}"]
            subprocess.run([sys.executable, "-m", "simulations.cli", "run", name, "--quiet", "--no-report",
                            "--out", str(out / name), *extra], cwd=tree, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def compare(base: Path, head: Path) -> dict[str, str]:
    """``{scenario/file: "same" | "differs: ..." | "missing"}``."""
    out = {}
    for name in SCENARIOS:
        for f in FILES:
            a, b = base / name / f, head / name / f
            if not a.exists() or not b.exists():
                out[f"{name}/{f}"] = "missing"
                continue
            la, lb = _lines(a), _lines(b)
            diff = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), None)
            if len(la) != len(lb) or diff is not None:
                out[f"{name}/{f}"] = f"differs (line {diff if diff is not None else min(len(la), len(lb))})"
            else:
                out[f"{name}/{f}"] = f"same ({len(la)} lines)"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the commit before the change")
    p.add_argument("--head", default="HEAD", help="the commit after it (default: HEAD)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every scenario but the quickstart")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: results/same_results.json)")
    args = p.parse_args(argv)
    revs = {k: subprocess.run(["git", "rev-parse", v], cwd=ROOT, capture_output=True, text=True, check=True
                              ).stdout.strip() for k, v in (("base", args.base), ("head", args.head))}
    with tempfile.TemporaryDirectory() as tmp:
        for side, rev in revs.items():
            _run_all(rev, Path(tmp) / side, args.rounds)
        result = compare(Path(tmp) / "base", Path(tmp) / "head")
    for key, verdict in result.items():
        print(f"{verdict:<18} {key}")
    write_result("same_results", {**revs, "rounds": args.rounds, "files": result}, args.out)
    return 0 if all(v.startswith("same") for v in result.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
