"""Does the fleet learn? edgefleet beside a plain PyTorch script of the same recipe, seed by seed.

    python -m simulations.benchmarks.learning                 # every cell, 5 seeds (resumable)
    python -m simulations.benchmarks.learning --only single   # or fed; --seeds 3; --budget-min 30
    python -m simulations.benchmarks.learning --quick         # a smoke run on digits (the tests use it)

Each cell runs the project through its real path (``run_config``: the engine, the ServerApp and ClientApps,
the codec, the strategy) and the anchor (:mod:`simulations.benchmarks.plain_loops`, torch only) on the
same data and from the same float reference, for every seed. Results go to a JSON file after every
(cell, seed), with the commit and machine; a second invocation continues where the first stopped.

Cells (MNIST, ``../shared/data/mnist``; a CNN of about 24k parameters):

- ``single-*``: the papers' single-device protocol (scenario ``single-device``): one device with the
  whole training set, the reference trained on it, T epochs with a 1% class-balanced random coreset
  re-drawn every R = 10 epochs, or the full data for T = 3; one Adam optimizer with cosine decay.
- ``fed-*``: 100 devices, Dirichlet alpha = 0.3, 10 per round, 30 rounds, QuaRC 10% + CLC, the
  reference pretrained on the 10% public split; the anchor is plain FedAvg (fresh Adam per round at a
  constant rate, a random 10% coreset, KD, every tensor averaged).
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simulations.benchmarks.common import (
    RESULTS,
    SHARED_DATA,
    ci_text,
    machine,
    over_budget,
    read_json,
    run_scenario,
    write_json,
)

__all__ = ["CELLS", "cell_config", "main", "table"]

SINGLE = {
    "federation.num-devices": 1, "federation.devices-per-round": 1, "federation.eval-every": 10,
    "data.partition": "iid", "data.val-fraction": 0.0, "data.public-fraction": 0.0,
    "model.arch": "cnn", "model.pretrain-data": "train", "model.pretrain-epochs": 8, "model.pretrain-lr": 0.003,
    "quant.codec": "fp32", "coreset.method": "random", "coreset.redraw": True, "coreset.reselect-every": 10,
    "train.local-epochs": 1, "train.lr": 0.001, "train.batch-size": 64, "train.lr-schedule": "cosine",
    "train.lr-scope": "run", "train.optimizer-state": "device",
}
FED = {
    "federation.num-devices": 100, "federation.devices-per-round": 10, "federation.rounds": 30,
    "data.partition": "dirichlet", "data.alpha": 0.3, "data.public-fraction": 0.1, "data.val-fraction": 0.1,
    "model.arch": "cnn", "model.pretrain-epochs": 10, "model.pretrain-lr": 0.003,
    "quant.codec": "qweights", "coreset.method": "quarc", "coreset.fraction": 0.1,
    "train.local-epochs": 5, "train.lr": 0.001, "train.batch-size": 32, "train.clc-beta": "auto",
    "federation.device-eval-limit": 50,
}
#: cell -> (base, overrides); bits and budgets as in the learning issue's targets
CELLS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "single-w4a4-1pct": (SINGLE, {"quant.weight-bits": 4, "quant.act-bits": 4, "coreset.fraction": 0.01,
                                  "federation.rounds": 30}),
    "single-w2a2-1pct": (SINGLE, {"quant.weight-bits": 2, "quant.act-bits": 2, "coreset.fraction": 0.01,
                                  "federation.rounds": 30}),
    "single-w2a2-full": (SINGLE, {"quant.weight-bits": 2, "quant.act-bits": 2, "coreset.method": "full",
                                  "federation.rounds": 3, "federation.eval-every": 1}),
    "fed-w4a4": (FED, {"quant.weight-bits": 4, "quant.act-bits": 4}),
    "fed-w2a2": (FED, {"quant.weight-bits": 2, "quant.act-bits": 2}),
}
TARGETS = {"float-single": 0.985, "single-w4a4-1pct": 0.975, "single-w2a2-1pct": 0.90, "single-w2a2-full": 0.955,
           "fed-w2a2": 0.88}
QUICK = {"data.dataset": "digits", "model.arch": "cnn", "federation.rounds": 2, "model.pretrain-epochs": 2,
         "federation.num-devices": 4, "federation.devices-per-round": 2, "train.local-epochs": 1}


def cell_config(cell: str, seed: int, data: dict[str, Any], quick: bool = False) -> dict[str, Any]:
    """The flat scenario of one (cell, seed)."""
    base, over = CELLS[cell]
    flat = {**base, **over, **data, "federation.seed": seed}
    if quick:
        flat.update(QUICK)
        if cell.startswith("single"):
            flat.update({"federation.num-devices": 1, "federation.devices-per-round": 1})
    return flat


def _project(flat: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Run one scenario through the real path; accuracy per round and the reference's."""
    from fleet.config.scenario import parse_config
    from simulations.store.rundir import read_jsonl

    summary, wall = run_scenario(parse_config(flat, name="bench-learning"), run_dir)
    rows = read_jsonl(run_dir / "rounds.jsonl", [])
    return {"final": summary.get("final_accuracy"), "float": summary.get("fp_reference_accuracy"),
            "curve": [r["accuracy"] for r in rows], "wall_s": wall}


def _anchor(flat: dict[str, Any]) -> dict[str, Any]:
    """The same recipe as a plain PyTorch loop, from the project's data split and the same float reference."""
    from fleet.config.scenario import parse_config
    from fleet.data.splits import fleet_data, test_subset
    from fleet.model.reference import reference_model
    from simulations.benchmarks import plain_loops as plain

    cfg = parse_config(flat, name="bench-learning")
    fd = fleet_data(cfg)
    ds = fd.dataset
    ref, _, _ = reference_model(cfg, fd)  # cached by recipe: the project run trained it
    fp = plain.PlainCNN(ds.in_shape[0], ds.num_classes)
    fp.load_state_dict(ref.state_dict())
    fp.eval()
    x_test, y_test = test_subset(ds.x_test, ds.y_test, cfg.data.test_limit)
    t0 = time.perf_counter()
    wb, ab, seed = cfg.quant.weight_bits, cfg.quant.act_bits, cfg.federation.seed
    frac = 1.0 if cfg.coreset.method == "full" else cfg.coreset.fraction
    if cfg.federation.num_devices == 1:
        idx = torch.from_numpy(np.asarray(fd.train[0]))
        out = plain.qat_single_device(fp, ds.x_train[idx], ds.y_train[idx], x_test, y_test, wbits=wb, abits=ab,
                                      epochs=cfg.federation.rounds, reselect_every=cfg.coreset.reselect_every,
                                      fraction=frac, lr=cfg.train.lr, batch_size=cfg.train.batch_size, seed=seed)
        curve = [out["accuracy"]]
    else:
        curve = plain.fedavg_plain(fp, [np.asarray(t) for t in fd.train], ds.x_train, ds.y_train, x_test, y_test,
                                   wbits=wb, abits=ab, rounds=cfg.federation.rounds,
                                   per_round=cfg.federation.devices_per_round, local_epochs=cfg.train.local_epochs,
                                   fraction=frac, lr=cfg.train.lr, batch_size=cfg.train.batch_size, seed=seed)
    return {"final": curve[-1], "curve": curve, "wall_s": time.perf_counter() - t0}


def _last5(curve: list[float | None]) -> float:
    vals = [v for v in curve if v is not None][-5:]
    return float(np.mean(vals)) if vals else math.nan


def _swing(curve: list[float | None]) -> float:
    """Largest round-to-round change of the accuracy over the last 10 rounds (points in 0..1)."""
    vals = [v for v in curve if v is not None][-11:]
    return max((abs(b - a) for a, b in zip(vals, vals[1:])), default=math.nan)


def table(results: dict[str, Any]) -> str:
    """The docs' markdown table: mean ± 95% interval over seeds, project beside the plain anchor."""
    lines = ["| cell | float reference | edgefleet | plain PyTorch | target | seeds | edgefleet swing | "
             "plain swing |", "|---|---|---|---|---|---|---|---|"]
    for cell in CELLS:
        runs = results.get("runs", {}).get(cell, {})
        if not runs:
            continue
        key = (lambda r: _last5(r["curve"])) if cell.startswith("fed") else (lambda r: r["final"])
        proj = [key(r["project"]) for r in runs.values()]
        anch = [key(r["anchor"]) for r in runs.values() if "anchor" in r]
        flt = [r["project"]["float"] for r in runs.values()]
        target = TARGETS.get(cell)
        if cell == "fed-w4a4":
            target_s = "float − 1.5"
        else:
            target_s = f"≥ {100 * target:.1f}" if target else ""
        fed = cell.startswith("fed")
        swing_p = ci_text([_swing(r["project"]["curve"]) for r in runs.values()], 2) if fed else ""
        swing_a = ci_text([_swing(r["anchor"]["curve"]) for r in runs.values() if "anchor" in r], 2) if fed else ""
        lines.append(f"| {cell} | {ci_text(flt, 2)} | {ci_text(proj, 2)} | {ci_text(anch, 2)} | {target_s} | "
                     f"{len(runs)} | {swing_p} | {swing_a} |")
    return "\n".join(lines)


def _data_keys(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return {"data.dataset": "digits"}
    root = args.root or str(SHARED_DATA / "mnist")
    return {"data.dataset": args.dataset, "data.root": root}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m simulations.benchmarks.learning", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="run only cells whose name starts with this (single, fed, ...)")
    ap.add_argument("--cells", default="", help="comma-separated cell names to run (default: all)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--dataset", default="npz", help="data.dataset of every cell (default: npz)")
    ap.add_argument("--root", default="", help="data.root (default: ../shared/data/mnist)")
    ap.add_argument("--budget-min", type=float, default=0.0, help="start no new (cell, seed) after this many minutes")
    ap.add_argument("--quick", action="store_true", help="a smoke run on digits with tiny budgets")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: results/learning.json)")
    args = ap.parse_args(argv)
    out = args.out or RESULTS / ("learning-quick.json" if args.quick else "learning.json")
    results = read_json(out) or {"benchmark": "learning", "runs": {}}  # resume
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-learning-"))
    try:
        for seed in range(args.seeds):
            wanted = [c for c in args.cells.split(",") if c] or list(CELLS)
            unknown = sorted(set(wanted) - set(CELLS))
            if unknown:
                raise SystemExit(f"--cells: unknown cell {unknown[0]!r}; cells: {', '.join(CELLS)}")
            for cell in (c for c in wanted if c.startswith(args.only)):
                done = results["runs"].setdefault(cell, {})
                if str(seed) in done:
                    continue
                if args.budget_min and over_budget(t0, 60 * args.budget_min):
                    print(f"budget of {args.budget_min:g} min spent; run again to continue")
                    return results
                flat = cell_config(cell, seed, _data_keys(args), args.quick)
                proj = _project(flat, work / f"{cell}-{seed}")
                done[str(seed)] = {"project": proj, "anchor": _anchor(flat), "config": flat}
                results["machine"] = machine()
                write_json(out, results, indent=1, default=str)
                anchor = done[str(seed)]["anchor"]["final"]
                print(f"{cell} seed {seed}: edgefleet {proj['final']:.4f}, plain {anchor:.4f}"
                      f" (float {proj['float']:.4f}, {proj['wall_s']:.0f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
