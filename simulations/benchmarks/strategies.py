"""Benchmark: the built-in aggregation strategies on a W4A4 MNIST fleet, clean and under corrupted updates.

Run: ``python -m simulations.benchmarks.strategies [--seeds 1] [--quick] [--out PATH]``.

Every built-in ``strategy.name`` (options in `STRATEGIES`) runs on MNIST (``cnn``), 100 devices,
Dirichlet label skew alpha in `ALPHAS`, W4A4 on ``rpi4`` devices with packed 4-bit uploads
(``quant.codec = "qweights"``) and a 10% QuaRC coreset, under three conditions (`CONDITIONS`):

* ``clean``: no faults;
* ``corrupt+guard``: 10% of device-rounds send an update with N(0, 1e4) noise added to its largest
  float tensor (``faults.corrupt-form = "norm"``); the fleet's guard (delta norm > 10x the round
  median) rejects them before the strategy sees them;
* ``corrupt-no-guard``: the same faults with ``strategy.guard-norm-factor = 1e12``, so the strategy
  alone faces the corrupted updates.

The faulty device-rounds are drawn by the server from the seed, so within one seed every strategy
(and both alphas) faces the same corrupted devices in the same rounds. Seeds whose draw corrupts
nothing are skipped (`fault_seeds`).

Choices (not tuned here; nothing is tuned on the test split):

* FedAdam/FedYogi ``eta = 10**-2.5``, ``tau = 1e-3``: the order of the best server rates Reddi et al.
  (2021, "Adaptive Federated Optimization") report for EMNIST; Flower's defaults (0.1 / 0.01) move
  every coordinate, LSQ step sizes included, by up to ~eta per round.
* FedAvgM ``server_learning_rate = 0.5``, ``server_momentum = 0.5``: effective rate
  lr / (1 - momentum) = 1, the regime Hsu et al. (2019) found best.
* FedProx ``proximal_mu = 0.01``; trimmed mean ``beta = 0.2`` (drops 1 value per tail with K = 5);
  Krum ``num_malicious_nodes = 1`` (K = 5 devices per round meets K >= 2f + 3; 0.5 corrupted updates
  are expected per round, so two in one round, probability 8%, can beat it).
* ``bit-aware`` equals FedAvg here (every device trains at 4 bits, so every weight ratio is 1); it is
  kept as a check.

Runs go through the project's own ServerApp and ClientApp (`simulations.server_app.make_server_app`,
`fleet.client_app.make_client_app`), but messages are delivered in-process by `LocalGrid` instead of
Flower's Ray engine: on this shared 2-core machine Ray's start-up cost ~55 s per run, more than the
run itself. Device code, RNG streams and results are the same (each device's randomness derives
from the config and the instruction, not the process). The float reference's central accuracy is
computed once per process (`memo_reference`), as it is identical for every run of a recipe.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from fleet.config.scenario import ScenarioConfig, parse_config
from simulations.benchmarks.common import RESULTS as RESULTS_DIR
from simulations.benchmarks.common import SHARED_DATA, ci_text, git_commit, machine, read_json, utc_now, write_json
from simulations.run.local_engine import LocalGrid, simulate_local
from simulations.store.rundir import read_jsonl
from strategies.sampling import draw_faults, sample_devices

RESULTS = RESULTS_DIR / "strategies.json"

#: strategy.name -> strategy.options (see the module docstring for the reasons)
STRATEGIES: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedprox": {"proximal-mu": 0.01},
    "fedadam": {"eta": 10**-2.5, "tau": 1e-3},
    "fedyogi": {"eta": 10**-2.5, "tau": 1e-3},
    "fedavgm": {"server-learning-rate": 0.5, "server-momentum": 0.5},
    "median": {},
    "trimmed-mean": {"beta": 0.2},
    "krum": {"num-malicious-nodes": 1},
    "bit-aware": {},
}
ALPHAS: tuple[float, ...] = (0.1, 1.0)
CORRUPT: dict[str, object] = {"faults.corrupt": 0.1, "faults.corrupt-form": "norm"}
CONDITIONS: dict[str, dict[str, object]] = {
    "clean": {},
    "corrupt+guard": dict(CORRUPT),
    "corrupt-no-guard": {**CORRUPT, "strategy.guard-norm-factor": 1e12},
}
RUN_ORDER: tuple[str, ...] = ("corrupt-no-guard", "clean", "corrupt+guard")
#: Everything but strategy, alpha, condition and seed. Cut to fit ~35 min on 2 cores shared with other jobs
#: (load average ~25 when it was set): 2 rounds x 5 devices, 1 local epoch, 500 test images.
FULL: dict[str, object] = {
    "federation.num-devices": 100, "federation.devices-per-round": 5, "federation.rounds": 2,
    "data.dataset": "npz", "data.root": str(SHARED_DATA / "mnist"), "data.test-limit": 500,
    "model.arch": "cnn", "model.pretrain-epochs": 5,
    "quant.weight-bits": 4, "quant.act-bits": 4, "quant.codec": "qweights", "devices.profiles.rpi4": 1.0,
    "coreset.method": "quarc", "coreset.fraction": 0.1, "train.local-epochs": 1, "ray.num-cpus": 1,
}
#: --quick: the same pipeline on scikit-learn's digits (no files), a few devices, for the smoke test.
QUICK: dict[str, object] = {
    **FULL, "federation.num-devices": 12, "federation.devices-per-round": 5, "federation.rounds": 2,
    "data.dataset": "digits", "data.root": "", "data.test-limit": 300, "model.arch": "mlp",
    "model.pretrain-epochs": 3, "train.batch-size": 16,
}
QUICK_STRATEGIES: tuple[str, ...] = ("fedavg", "median", "krum")


@contextmanager
def memo_reference() -> Iterator[None]:
    """Compute each recipe's float reference (and its full-test-set accuracy) once per process."""
    from fleet.model import reference as ref
    from simulations import server_app

    memo: dict[str, tuple] = {}
    original = server_app.reference_model

    def cached(cfg: ScenarioConfig, fd: Any) -> tuple:
        key = ref._recipe(cfg)  # the framework's own cache key of a reference
        if key not in memo:
            memo[key] = original(cfg, fd)
        return memo[key]

    with mock.patch.object(server_app, "reference_model", cached):
        yield


def run_local(cfg: ScenarioConfig, run_dir: Path) -> tuple[dict, float | None]:
    """Run a scenario through the ServerApp and ClientApp on a `LocalGrid`.

    Returns the summary and the central accuracy of the initial (round 0) model.
    """
    from fleet.client_app import make_client_app
    from simulations.server_app import make_server_app

    flat = cfg.to_flat()
    box: dict[str, Any] = {}
    seen: dict[str, float] = {}

    def progress(row: dict) -> None:
        if row.get("round") == 0:
            seen["round0"] = row["accuracy"]

    run_dir.mkdir(parents=True, exist_ok=True)
    server = make_server_app(flat, run_dir, progress, on_summary=box.update, name=cfg.name)
    simulate_local(server, lambda: LocalGrid(make_client_app(flat), cfg.federation.num_devices))
    return box, seen.get("round0")


def run_cell(base: dict[str, object], strategy: str, alpha: float, condition: str, seed: int,
             run_dir: Path) -> dict[str, Any]:
    """One run: returns final accuracy, accuracy per round (round 0 first), bytes and fault counts."""
    flat = {**base, **CONDITIONS[condition], "data.alpha": alpha, "federation.seed": seed,
            "strategy.name": strategy,
            **{f"strategy.options.{k}": v for k, v in STRATEGIES[strategy].items()}}
    cfg = parse_config(flat, name=f"{strategy}-a{alpha}-{condition}-s{seed}")
    t0 = time.perf_counter()
    summary, acc0 = run_local(cfg, run_dir)
    rounds = [r for r in read_jsonl(run_dir / "rounds.jsonl", []) if r["round"] > 0]  # acc0 is round 0
    devices = read_jsonl(run_dir / "devices.jsonl", [])
    return {
        "strategy": strategy, "options": STRATEGIES[strategy], "alpha": alpha, "condition": condition,
        "seed": seed, "status": summary.get("status"), "final_accuracy": summary.get("final_accuracy"),
        "fp_reference_accuracy": summary.get("fp_reference_accuracy"),
        "accuracy_per_round": [acc0] + [r["accuracy"] for r in rounds],
        "uplink_bytes": summary.get("uplink_bytes"),
        "uplink_bytes_per_round": [r["uplink_bytes"] for r in rounds],
        "corrupt_sent": sum(d.get("fault") == "corrupt" for d in devices),
        "rejected": sum(r["devices_rejected"] for r in rounds),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def table(cells: list[dict[str, Any]]) -> str:
    """Rows strategy, columns alpha x condition: final accuracy in percent (mean ± 95% CI over seeds)."""
    strategies = list(dict.fromkeys(c["strategy"] for c in cells))
    cols = [(a, cond) for a in dict.fromkeys(c["alpha"] for c in cells) for cond in CONDITIONS
            if any(c["alpha"] == a and c["condition"] == cond for c in cells)]
    heads = [f"a={a:g} {cond}" for a, cond in cols]
    width = max(len(h) for h in heads) + 2
    lines = [f"{'strategy':<13}" + "".join(f"{h:>{width}}" for h in heads)]
    for s in strategies:
        row = f"{s:<13}"
        for a, cond in cols:
            vals = [c["final_accuracy"] for c in cells if (c["strategy"], c["alpha"], c["condition"]) == (s, a, cond)]
            row += f"{ci_text(vals, digits=1, empty='-'):>{width}}"
        lines.append(row)
    return "\n".join(lines)


def fault_seeds(n: int, base: dict[str, object]) -> list[int]:
    """The first ``n`` seeds whose server-side fault draw corrupts at least one device-round.

    With K devices for R rounds at ``faults.corrupt = 0.1`` a run has no corrupted update with
    probability 0.9**(K R) (35% for 10 device-rounds; seed 0 is such a run), and then the corrupt
    conditions would repeat the clean one. The draw depends only on the seed (never on data or test
    results), so skipping those seeds selects nothing on accuracy. Clean runs use the same seeds.
    """
    cfg = parse_config({**base, **CORRUPT}, name="draw")
    fed = cfg.federation
    seeds: list[int] = []
    seed = 0
    while len(seeds) < n:
        for rnd in range(1, fed.rounds + 1):
            chosen = sample_devices(np.ones(fed.num_devices, bool), fed.devices_per_round, seed, rnd)
            if "corrupt" in draw_faults(cfg.faults, chosen, seed, rnd).values():
                seeds.append(seed)
                break
        seed += 1
    return seeds


def _resumable(path: Path, base: dict[str, object]) -> list[dict[str, Any]]:
    """Cells of an interrupted run at ``path`` with the same budget and options, else none."""
    old = read_json(path)
    if not old or not old.get("partial") or old.get("budget") != json.loads(json.dumps(base)):
        return []
    return [c for c in old["cells"] if STRATEGIES.get(c["strategy"]) == c["options"]]


def _init_worker() -> None:
    """Pool initializer: one torch thread, and the reference memo for the worker's lifetime."""
    torch.set_num_threads(1)
    memo_reference().__enter__()  # noqa: PLC2801 - lives as long as the worker process


def _run_job(job: tuple[dict[str, object], str, float, str, int, str]) -> dict[str, Any]:
    base, strategy, alpha, cond, seed, tmp = job
    return run_cell(base, strategy, alpha, cond, seed, Path(tmp) / f"{strategy}-{alpha}-{cond}-{seed}")


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the grid, print the table, write the JSON record; returns it."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1, help="seeds per cell (the first N of `fault_seeds`)")
    ap.add_argument("--quick", action="store_true", help="tiny budget on digits (smoke test, < 60 s)")
    ap.add_argument("--workers", type=int, default=None,
                    help="processes running cells side by side, 1 torch thread each (default: 1 quick, else 3)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--resume", action="store_true",
                    help="keep the cells of an interrupted run in --out (same budget) and run the rest")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    base = QUICK if args.quick else FULL
    workers = args.workers or (1 if args.quick else 3)
    strategies = QUICK_STRATEGIES if args.quick else tuple(STRATEGIES)
    alphas = ALPHAS[:1] if args.quick else ALPHAS
    commit = git_commit()  # at the start: the tree may move on while the grid runs
    seeds = fault_seeds(args.seeds, base)
    cells = [c for c in _resumable(args.out, base) if c["seed"] in seeds] if args.resume else []
    done = {(c["strategy"], c["alpha"], c["condition"], c["seed"]) for c in cells}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as tmp:
        # Most telling condition first (no guard), so an interrupted run still has whole columns.
        jobs = [(base, s, alpha, cond, seed, tmp) for seed in seeds for cond in RUN_ORDER
                for alpha in alphas for s in strategies if (s, alpha, cond, seed) not in done]
        with ExitStack() as stack:
            results: Iterator[dict[str, Any]]
            if workers > 1:
                pool = stack.enter_context(get_context("spawn").Pool(workers, initializer=_init_worker))
                results = pool.imap(_run_job, jobs)
            else:
                stack.enter_context(memo_reference())
                results = map(_run_job, jobs)
            for cell in results:
                cells.append(cell)
                write_json(args.out, {"partial": True, "budget": base, "cells": cells})  # for --resume
                log(f"{cell['strategy']:<13} a={cell['alpha']:<4g} {cell['condition']:<17} seed {cell['seed']}: "
                    f"final {cell['final_accuracy']:.4f} rounds {[round(a, 3) for a in cell['accuracy_per_round']]}"
                    f" corrupt {cell['corrupt_sent']} rejected {cell['rejected']} ({cell['wall_s']} s)")
    wall = time.perf_counter() - t0
    text = table(cells)
    log(f"Final deployed W4A4 accuracy (%), {args.seeds} seed(s) per cell; wall {wall:.0f} s\n{text}")
    record = {
        "benchmark": "strategies", "quick": args.quick, "seeds": seeds, "budget": base,
        "strategies": {s: STRATEGIES[s] for s in strategies}, "alphas": list(alphas), "conditions": CONDITIONS,
        "engine": "in-process LocalGrid (no Ray)", "workers": workers, "git_commit": commit,
        # strategies.json's key names
        "machine": machine(("cores", "memory_bytes", "python", "torch", "flwr", "ray", "load_avg"),
                           rename={"cores": "cpu_count", "load_avg": "load_average"}),
        "date": utc_now(),
        "wall_s": round(wall, 1), "table": text, "cells": cells,
    }
    write_json(args.out, record)
    log(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
