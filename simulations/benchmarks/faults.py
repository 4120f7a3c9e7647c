"""Faulty fleet vs clean fleet: the quickstart with 20% crashing devices and 10% corrupted updates.

For each seed, the clean quickstart and the same run with ``faults.crash = 0.2`` and
``faults.corrupt = 0.1`` (NaN/Inf, wrong shape or huge norm, drawn per update). It checks
that the faulty run completes, that every corrupted update was rejected and recorded, and
compares final accuracies with the clean runs' seed-to-seed spread.

    python -m simulations.benchmarks.faults [--seeds 5] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from simulations.analysis.stats import format_ci, mean_ci95
from simulations.benchmarks.common import run_scenario, write_result
from simulations.run.scenario import load_config
from simulations.store.rundir import read_jsonl


def _one(overrides: dict, out: Path) -> dict:
    s, wall = run_scenario(load_config("quickstart", overrides)[0], out)
    devices = read_jsonl(out / "devices.jsonl", [])
    corrupt = [d for d in devices if d["fault"] == "corrupt"]
    return {
        "final_accuracy": s["final_accuracy"], "status": s["status"], "wall_s": wall,
        "rounds_completed": s["rounds_completed"], "crashed": sum(d["fault"] == "crash" for d in devices),
        "crash_recorded_failed": sum(d["fault"] == "crash" and d["status"] == "failed" for d in devices),
        "corrupt": len(corrupt), "corrupt_rejected": sum(d["status"] == "rejected" for d in corrupt),
        "rejected_total": sum(d["status"] == "rejected" for d in devices),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 3 rounds, 20 devices")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    base = {"ray.num-cpus": 1}
    seeds = args.seeds
    if args.quick:
        base |= {"federation.rounds": 3, "federation.num-devices": 20, "federation.devices-per-round": 10}
        seeds = 2
    faulty = {"faults.crash": 0.2, "faults.corrupt": 0.1}
    rows: dict[str, list[dict]] = {"clean": [], "faulty": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            for name, extra in (("clean", {}), ("faulty", faulty)):
                out = Path(tmp) / f"{name}-{seed}"
                rows[name].append(_one(base | extra | {"federation.seed": seed}, out))
                print(f"seed {seed} {name}: {rows[name][-1]}", flush=True)
    table = {}
    for name, rs in rows.items():
        m, h = mean_ci95([r["final_accuracy"] for r in rs])
        table[name] = {"mean": m, "ci95": h, "min": min(r["final_accuracy"] for r in rs),
                       "max": max(r["final_accuracy"] for r in rs)}
    f = rows["faulty"]
    checks = {
        "all_complete": all(r["status"] == "complete" for r in f),
        "every_crash_recorded": all(r["crashed"] == r["crash_recorded_failed"] for r in f),
        "every_corrupt_rejected": all(r["corrupt"] == r["corrupt_rejected"] for r in f),
        "faulty_within_clean_spread": table["clean"]["min"] - 1e-9 <= table["faulty"]["mean"]
        <= table["clean"]["max"] + 1e-9,
    }
    print("\n| fleet | final accuracy (mean ± 95% CI) | min | max |\n|---|---|---|---|")
    for name, t in table.items():
        print(f"| {name} | {format_ci(t['mean'], t['ci95'], 100)} | {100 * t['min']:.2f} | {100 * t['max']:.2f} |")
    print(f"crashes {sum(r['crashed'] for r in f)}, corrupted updates {sum(r['corrupt'] for r in f)} "
          f"(rejected {sum(r['corrupt_rejected'] for r in f)}); checks: {checks}")
    path = write_result("faults", {"settings": {"scenario": "quickstart", "seeds": seeds, **base, **faulty},
                                   "runs": rows, "table": table, "checks": checks}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
