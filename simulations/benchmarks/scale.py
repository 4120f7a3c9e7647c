"""Benchmark: seconds per device-round and peak memory at 1000 devices, vanilla Flower vs edgefleet.

Three cases, alternated over repetitions (rotating order, so machine-load drift
hits all of them), each repetition in a fresh subprocess so Ray starts clean:

- ``vanilla``: ``vanilla_flower.py``, Flower's FedAvg on the same MLP and digits;
- ``edgefleet-fp32``: edgefleet full-precision FedAvg (mlp, fp32 codec, no coreset);
- ``edgefleet-mission``: the mission's default: QuaRC coreset (fraction 0.5), CLC
  (``clc-beta = "auto"``), W2A2 with packed 2-bit uploads (``qweights``);
- ``edgefleet-fp32-local``, ``edgefleet-mission-local``: the same two on the single-machine engine
  (``federation.engine = "local"``) with one worker process, as Ray gets one CPU.

Both frameworks see 1000 devices, 100 per round, the same rounds, local epochs,
batch size, learning rate and optimizer (Adam), ``ray.num-cpus = 1``. Digits has
1347 training samples, so with 1000 devices every device holds one training
sample (IID split, ``data.min-partition-size = 1``): per-device compute is
negligible and the figure is the framework's overhead per device-round.

Timing: "with start-up" is the subprocess's whole wall time (Python imports, Ray
start, data, reference pretraining or cache load, edgefleet's roster query to
every node, all rounds, export) divided by the device-rounds; "rounds only" is
the mean per-round wall of the warm rounds 2..R (edgefleet: ``rounds.jsonl``
``wall_s``; vanilla: the same timer in its ServerApp, previous central evaluation
to this one) divided by devices per round. Round 1 is left out of "rounds only"
because Ray starts its actors lazily inside vanilla's first round, while edgefleet
has already warmed them up in its roster query.

Memory: every 0.2 s the parent sums the resident set size (RSS) of the
subprocess, all its descendants (Ray's gcs_server, raylet, agents, workers and
actors are started by the driver and stay in its tree) and any process whose
command line names the driver's Ray session (``session_..._<pid>``, in case one
was re-parented). Summed RSS counts shared pages (libraries, the object store)
once per process, so it is an upper bound.

Run: ``python -m simulations.benchmarks.scale [--reps 3] [--rounds 4] [--quick]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from simulations.benchmarks.common import RESULTS as RESULTS_DIR
from simulations.benchmarks.common import git_commit, machine, run_scenario, utc_now, write_json

RESULTS = RESULTS_DIR / "scale.json"
CASES = ("vanilla", "edgefleet-fp32", "edgefleet-mission", "edgefleet-fp32-local", "edgefleet-mission-local")
MISSION = {"coreset.method": "quarc", "coreset.fraction": 0.5, "train.clc-beta": "auto",
           "quant.weight-bits": 2, "quant.act-bits": 2, "quant.codec": "qweights"}


def edgefleet_flat(case: str, devices: int, per_round: int, rounds: int, epochs: int, seed: int,
                   root: str = "") -> dict[str, Any]:
    """The scenario of an edgefleet case (flat dotted keys); ``root``: an npz folder instead of digits."""
    flat: dict[str, Any] = {
        "federation.num-devices": devices, "federation.devices-per-round": per_round,
        "federation.rounds": rounds, "federation.seed": seed, "data.dataset": "npz" if root else "digits",
        "data.root": root,
        "data.partition": "iid", "data.min-partition-size": 1, "model.arch": "mlp",
        "model.pretrain-epochs": 5, "train.local-epochs": epochs, "train.lr": 0.005, "train.batch-size": 32,
        "train.optimizer": "adam", "quant.codec": "fp32", "coreset.method": "full", "ray.num-cpus": 1,
    }
    if case.startswith("edgefleet-mission"):
        flat.update(MISSION)
    if case.endswith("-local"):  # the single-machine engine, one worker: Ray's ray.num-cpus = 1
        flat.update({"federation.engine": "local", "federation.workers": 1})
    else:  # Flower's Ray engine (not the default of fleet run since the local engine)
        flat["federation.engine"] = "ray"
    return flat


def worker(case: str, out: Path, devices: int, per_round: int, rounds: int, epochs: int, seed: int,
           root: str = "") -> None:
    """Run one case in this process; writes ``out/result.json`` (round walls, accuracy)."""
    import torch

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    if case == "vanilla":
        from simulations.benchmarks.vanilla_flower import run

        timing = out / "vanilla_timing.json"
        run(devices, per_round, rounds, epochs, timing, num_cpus=1, seed=seed, root=root)
        data = json.loads(timing.read_text())
        walls, acc = data["round_wall_s"], data["accuracy"][-1]
    else:
        from fleet.config.scenario import parse_config
        from simulations.store.rundir import read_jsonl

        run_dir = out / "run"
        run_dir.mkdir()
        cfg = parse_config(edgefleet_flat(case, devices, per_round, rounds, epochs, seed, root), name=case)
        summary, _ = run_scenario(cfg, run_dir)
        # round 0 is the starting model's evaluation, not a round
        rows = [r for r in read_jsonl(run_dir / "rounds.jsonl", []) if r["round"] > 0]
        walls, acc = [r["wall_s"] for r in rows], summary.get("final_accuracy")
        startup = summary.get("startup_s", {})
    write_json(out / "result.json", {"round_wall_s": walls, "final_accuracy": acc,
                                     **({"startup_s": startup} if case != "vanilla" else {})}, indent=None)


class TreeMemory:
    """Peak summed RSS of a process, its descendants and its Ray session's processes, sampled every ``period``."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        self.pid, self.period = pid, period
        self.session = re.compile(rf"session_[0-9_-]+_{pid}\b")
        self.peak_bytes, self.peak_procs, self.samples = 0, 0, 0
        self.peak_by_name: dict[str, float] = {}  # MB per process name at the peak
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _procs(self) -> dict[int, psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            procs = {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.NoSuchProcess:
            procs = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid not in procs and self.session.search(" ".join(p.info["cmdline"] or ())):
                procs[p.pid] = p
        return procs

    def _loop(self) -> None:
        while not self._stop.is_set():
            total = 0
            by_name: dict[str, float] = {}
            procs = self._procs()
            for p in procs.values():
                try:
                    rss, name = p.memory_info().rss, p.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                by_name[name] = by_name.get(name, 0.0) + rss / 2**20
            self.samples += 1
            if total > self.peak_bytes:
                self.peak_bytes, self.peak_procs, self.peak_by_name = total, len(procs), by_name
            self._stop.wait(self.period)


def run_case(case: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One repetition of one case in a fresh subprocess, with its wall time and peak memory."""
    cmd = [sys.executable, "-m", "simulations.benchmarks.scale", "--worker", case, "--out", str(out),
           "--devices", str(args.devices), "--per-round", str(args.per_round), "--rounds", str(args.rounds),
           "--epochs", str(args.epochs), "--seeds", str(args.seeds[0]), "--root", args.root]
    env = {**os.environ, "EDGEFLEET_CACHE": str(args.cache)}
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        with TreeMemory(proc.pid) as mem:
            code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{case} failed with exit code {code}; see {out / 'log.txt'}")
    res = json.loads((out / "result.json").read_text())
    walls = res["round_wall_s"]
    warm = walls[1:] if len(walls) > 1 else walls
    return {"case": case, "wall_s": wall, "round_wall_s": walls, "final_accuracy": res["final_accuracy"],
            "startup_s": res.get("startup_s"),
            "s_per_device_round_startup": wall / (args.rounds * args.per_round),
            "s_per_device_round_rounds": statistics.mean(warm) / args.per_round,
            "peak_rss_mb": mem.peak_bytes / 2**20, "peak_procs": mem.peak_procs, "mem_samples": mem.samples,
            "peak_rss_mb_by_process": {k: round(v, 1) for k, v in sorted(mem.peak_by_name.items())}}


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for case in CASES:
        mine = [r for r in rows if r["case"] == case]
        if not mine:
            continue
        out[case] = {k: {"median": statistics.median(r[k] for r in mine), "min": min(r[k] for r in mine),
                         "max": max(r[k] for r in mine)}
                     for k in ("s_per_device_round_startup", "s_per_device_round_rounds", "peak_rss_mb", "wall_s")}
        out[case]["final_accuracy"] = [r["final_accuracy"] for r in mine]
    base = [r for r in rows if r["case"] == "vanilla"]
    for case in CASES[1:]:
        mine = [r for r in rows if r["case"] == case]
        if not base or not mine:
            continue
        for k in ("s_per_device_round_startup", "s_per_device_round_rounds"):
            # paired per repetition: both ran back to back under the same load
            paired = [m[k] / b[k] for m, b in zip(mine, base, strict=False)]
            out[case][f"ratio_{k.removeprefix('s_per_device_round_')}"] = {
                "of_medians": out[case][k]["median"] / out["vanilla"][k]["median"],
                "median_paired": statistics.median(paired)}
    return out


def _print_table(summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"scale: {args.devices} devices, {args.per_round}/round, {args.rounds} rounds, {args.epochs} local "
          f"epoch(s), {args.reps} A/B/C reps (fresh subprocess each), ray.num-cpus=1; medians [min-max]")
    print(f"{'case':<19} {'ms/dev-round +startup':>24} {'ms/dev-round rounds':>22} {'ratio +su':>9} "
          f"{'ratio rnd':>9} {'peak RSS MB':>18}")
    for case, s in summary.items():
        def cell(k: str, s: dict = s) -> str:
            return f"{1e3 * s[k]['median']:.1f} [{1e3 * s[k]['min']:.1f}-{1e3 * s[k]['max']:.1f}]"
        r_su = s.get("ratio_startup", {}).get("median_paired")
        r_rd = s.get("ratio_rounds", {}).get("median_paired")
        mem = s["peak_rss_mb"]
        print(f"{case:<19} {cell('s_per_device_round_startup'):>24} {cell('s_per_device_round_rounds'):>22} "
              f"{'-' if r_su is None else f'{r_su:.2f}x':>9} {'-' if r_rd is None else f'{r_rd:.2f}x':>9} "
              f"{mem['median']:>7.0f} [{mem['min']:.0f}-{mem['max']:.0f}]")


def main(argv: list[str] | None = None) -> None:
    """Run the A/B/C repetitions, print the table, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each case")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="federation seed (the first is used)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--root", default="", help="npz folder (e.g. ../shared/data/mnist, for 10,000 devices: "
                                                   "digits has 1347 training samples); default: digits")
    parser.add_argument("--quick", action="store_true", help="tiny budget (< 60 s): 20 devices, 2 rounds, 1 rep")
    parser.add_argument("--out", type=Path, default=None, help="JSON record (default: results/scale.json)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-scale"), help="run directories")
    parser.add_argument("--worker", choices=CASES, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.out, args.devices, args.per_round, args.rounds, args.epochs, args.seeds[0],
               args.root)
        return
    if args.quick:
        args.devices, args.per_round, args.rounds, args.reps = 20, 5, 2, 1
        if args.cases == list(CASES):  # not chosen on the command line
            args.cases = ["vanilla", "edgefleet-fp32"]
    args.out = args.out or (args.work / "scale.json" if args.quick else RESULTS)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    work = args.work / stamp
    args.cache = work / "cache"
    rows = []
    start = time.perf_counter()
    for rep in range(args.reps):
        order = args.cases[rep % len(args.cases):] + args.cases[: rep % len(args.cases)]  # rotate A/B/C
        for case in order:
            row = run_case(case, work / f"{rep}-{case}", args)
            row["rep"] = rep
            rows.append(row)
            print(f"  rep {rep} {case}: wall {row['wall_s']:.1f} s, rounds {[round(w, 2) for w in row['round_wall_s']]}"
                  f", peak {row['peak_rss_mb']:.0f} MB", flush=True)
    summary = _summarise(rows)
    _print_table(summary, args)
    facts = machine(("cores", "memory_gib", "python", "torch", "flwr", "ray", "load_avg"),  # scale.json's key names
                    rename={"cores": "cpu_count", "memory_gib": "memory_gb", "load_avg": "load_average"})
    record = {"benchmark": "scale", "date": utc_now(), "git_commit": git_commit(), "machine": facts,
              "total_wall_s": time.perf_counter() - start,
              "settings": {"devices": args.devices, "per_round": args.per_round, "rounds": args.rounds,
                           "local_epochs": args.epochs, "reps": args.reps, "seed": args.seeds[0],
                           "dataset": args.root or "digits",
                           "cases": args.cases, "ray_num_cpus": 1, "batch_size": 32, "lr": 0.005,
                           "optimizer": "adam", "mission_keys": MISSION, "memory_sampling_s": 0.2,
                           "timing": "with start-up = subprocess wall / device-rounds; rounds = mean wall of "
                                     "rounds 2..R / devices per round"},
              "summary": summary, "runs": rows}
    write_json(args.out, record)
    print(f"wrote {args.out} ({record['total_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
