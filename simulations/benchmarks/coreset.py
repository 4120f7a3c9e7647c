"""Coreset selection + QAT benchmark: random vs ACS vs QuaRC (with/without CLC) vs full data.

Run: ``python -m simulations.benchmarks.coreset [--quick] [--seeds 5] [--out PATH]``.

Reproduces the SHAPE of QuaRC's Tables I/III (docs/methods.md (Sources)) on small data, in
two settings: (a) one device holding all the benchmark data, in-process
(``coreset_single``), and (b) a federated fleet of 100 devices, Dirichlet alpha 0.3,
through ``run_config`` (``coreset_fed``). Cells: W2A2 and W4A4 x fractions 1%, 10% x
rows ``random``, ``acs``, ``quarc`` (beta = 0), ``quarc+clc`` (fixed beta from the
start-of-training probe, see ``probe_beta``), ``quarc-zscore`` (score-norm zscore,
beta = 0), ``quarc+clc-auto`` (beta = "auto"), and ``full`` (100% of the data).
Data and references: ``coreset_data``. Budgets: ``BUDGETS`` (written to the JSON).
Results are written after every run, and a rerun with the same settings skips runs
already in the file (resume).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from fleet.config.scenario import ScenarioConfig, parse_config
from fleet.data.splits import device_data, fleet_data, test_subset
from fleet.model.assembly import trainable_model
from fleet.quant.convert import init_quantizers
from fleet.train.losses import FeatureTaps, clc_loss, kd_loss
from simulations.analysis.stats import format_ci, mean_ci95
from simulations.benchmarks.common import RESULTS, machine, read_json, write_json
from simulations.benchmarks.coreset_data import BenchData, load_reference, prepare
from simulations.benchmarks.coreset_fed import run_fed
from simulations.benchmarks.coreset_single import run_single

OUT = RESULTS / "coreset.json"
BITS = (2, 4)
FRACTIONS = (0.01, 0.1)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {  # label -> (method, overrides); "BETA" = the probed beta
    "random": ("random", {}),
    "acs": ("acs", {}),
    "quarc": ("quarc", {}),
    "quarc+clc": ("quarc", {"train.clc-beta": "BETA"}),
    "quarc-zscore": ("quarc", {"coreset.score-norm": "zscore"}),
    "quarc+clc-auto": ("quarc", {"train.clc-beta": "auto"}),
    "full": ("full", {}),
}
# Per (setting, dataset): data sizes, T epochs/rounds, R, test subset, seeds. Sized for ~1 h on 2 shared cores.
BUDGETS: dict[str, dict[str, Any]] = {
    "single/mnist14": {"epochs": 10, "reselect": 5, "test": 2000, "seeds": 5},
    # 32x32x3 costs ~5x MNIST-14 per sample: 4 epochs.
    "single/cifar10": {"epochs": 4, "reselect": 2, "test": 1000, "seeds": 5},
    # Federated: a larger B (``data``) so that a device holds ~200 (MNIST-14) or ~100 (CIFAR-10) samples
    # on average and 1% differs from 10% (with B = 3000, 30 samples per device made 1% = 10% after the
    # one-per-class floor). Each run starts Ray once (~8 s on a quiet machine). Cut to fit: the two extra
    # rows (quarc-zscore, quarc+clc-auto) run in the single-device settings only.
    "fed/mnist14": {"epochs": 6, "reselect": 2, "test": 1000, "seeds": 5, "devices": 100, "per_round": 10,
                    "data": {"n_bench": 20000}, "rows": ["random", "acs", "quarc", "quarc+clc", "full"]},
    "fed/cifar10": {"epochs": 5, "reselect": 2, "test": 1000, "seeds": 5, "devices": 100, "per_round": 10,
                    "data": {"n_bench": 10000}, "rows": ["random", "acs", "quarc", "quarc+clc", "full"]},
}
# Budget keys that only choose which cells run; any other key changes what a run does.
CELL_SELECTORS = ("rows", "fractions", "bits", "seeds")
DATA: dict[str, dict[str, int]] = {  # pretraining set P, benchmark set B, reference epochs
    "mnist14": {"n_pretrain": 4000, "n_bench": 3000, "pretrain_epochs": 8},
    "cifar10": {"n_pretrain": 5000, "n_bench": 2000, "pretrain_epochs": 8},
}
QUICK_BUDGETS: dict[str, dict[str, Any]] = {
    "single/mnist14": {"epochs": 2, "reselect": 1, "test": 300, "seeds": 1},
    "fed/mnist14": {"epochs": 2, "reselect": 1, "test": 300, "seeds": 1, "devices": 20, "per_round": 3,
                    "rows": ["quarc+clc"], "bits": [4], "fractions": [0.1]},
}
QUICK_DATA = {"mnist14": {"n_pretrain": 600, "n_bench": 800, "pretrain_epochs": 1}}
TRAIN = {"train.lr": 0.00125,  # Adam at ACS/QuaRC's ImageNet LR (docs/methods.md (Sources))
         "train.batch-size": 32, "train.optimizer": "adam", "train.local-epochs": 1}


def scenario(data: BenchData, setting: str, budget: dict[str, Any], bits: int, fraction: float, row: str,
             seed: int, beta: float) -> ScenarioConfig:
    """The flat scenario of one (cell, seed)."""
    method, over = ROWS[row]
    flat: dict[str, Any] = {
        "data.dataset": "npz", "data.root": data.root, "data.public-fraction": 0.0, "data.val-fraction": 0.0,
        "data.test-limit": budget["test"], "model.arch": "cnn", "model.checkpoint": data.checkpoint,
        "quant.weight-bits": bits, "quant.act-bits": bits, "coreset.method": method,
        "coreset.fraction": 1.0 if method == "full" else fraction,
        "coreset.reselect-every": budget["reselect"], "federation.rounds": budget["epochs"],
        "federation.seed": seed, "ray.num-cpus": 1, **TRAIN,
    }
    if setting == "single":
        # The seed also draws which 90% of B the device holds (the rest is its held-out split), so seeds vary
        # the data, not only the batch order: otherwise a 1% ACS/QuaRC coreset is the same for every seed.
        flat.update({"federation.num-devices": 1, "federation.devices-per-round": 1, "data.partition": "iid",
                     "data.val-fraction": 0.1})
    else:
        flat.update({"federation.num-devices": budget["devices"], "federation.devices-per-round":
                     budget["per_round"], "data.partition": "dirichlet", "data.alpha": 0.3})
    flat.update({k: (beta if v == "BETA" else v) for k, v in over.items()})
    return parse_config(flat, name=f"bench-coreset-{setting}-{data.name}")


def probe_beta(data: BenchData, bits: int, budget: dict[str, Any]) -> dict[str, float]:
    """L_KD and L_CLC (flat-softmax, all blocks) at the start of training, seed 0, first train batch.

    The fixed beta is ``10^round(log10(L_KD / L_CLC))``: beta * L_CLC about L_KD, the
    balance the paper's best beta strikes (docs/methods.md (KD and CLC; Small-scale notes)). Training data only.
    """
    cfg = scenario(data, "single", budget, bits, 0.1, "quarc+clc", 0, 1.0)
    ref = load_reference(data)
    model = trainable_model(cfg, ref, bits, bits)
    fd = fleet_data(cfg)
    x = fd.dataset.x_train
    init_quantizers(model, x[fd.train[0][:256]])
    xb = device_data(cfg, 0).x[torch.randperm(len(fd.train[0]), generator=torch.Generator().manual_seed(0))[:32]]
    names = list(model.block_names)  # type: ignore[arg-type]
    model.train()
    with FeatureTaps(model, names) as tq, FeatureTaps(ref, names) as tf, torch.no_grad():
        l_kd = float(kd_loss(model(xb), ref(xb)))
        l_clc = float(clc_loss(tq.features, tf.features))
    beta = 10.0 ** round(math.log10(l_kd / l_clc))
    return {"l_kd": l_kd, "l_clc": l_clc, "beta": beta, "ratio_at_beta": l_kd / (beta * l_clc),
            "ratio_at_1e5": l_kd / (1e5 * l_clc)}


def _cells(budget: dict[str, Any]) -> list[tuple[int, float, str]]:
    rows = budget.get("rows", list(ROWS))
    out = []
    for bits in budget.get("bits", BITS):
        for row in rows:
            for frac in ([1.0] if row == "full" else budget.get("fractions", FRACTIONS)):
                out.append((bits, frac, row))
    return out


def _run_budget(budget: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of a setting's budget that decides what each run does (not which cells run)."""
    return None if budget is None else {k: v for k, v in budget.items() if k not in CELL_SELECTORS}


def _key(setting: str, bits: int, frac: float, row: str) -> str:
    return f"{setting}|W{bits}A{bits}|{frac:g}|{row}"


def summarise(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and 95% interval over seeds per cell key."""
    cells: dict[str, list[dict[str, Any]]] = {}
    for k, r in runs.items():
        cells.setdefault(k.rsplit("|seed", 1)[0], []).append(r)
    out = {}
    for key, rs in cells.items():
        acc = mean_ci95([r["accuracy"] for r in rs])  # half-width nan for one seed
        wall = sum(r["wall_s"] for r in rs) / len(rs)
        share = [r["selection_s"] / r["wall_s"] if "selection_s" in r else r["selection_share"] for r in rs]
        out[key] = {"n": len(rs), "accuracy_mean": acc[0], "accuracy_ci95": acc[1], "wall_s_mean": wall,
                    "selection_share_mean": sum(share) / len(share),
                    "kd_clc_ratio_median": sorted(r["kd_clc_ratio"] for r in rs)[len(rs) // 2],
                    "clc_beta_median": sorted(r["clc_beta"] for r in rs)[len(rs) // 2]}
    return out


def print_table(summary: dict[str, dict[str, Any]], settings: list[str]) -> None:
    """One block per setting/dataset: rows x (bits, fraction) cells, accuracy % mean ± CI, wall s, sel %."""
    for sd in settings:
        keys = [k for k in summary if k.startswith(sd + "|")]
        if not keys:
            continue
        print(f"\n== {sd}: deployed accuracy % (mean ± 95% CI), mean wall s, selection share %")
        for bits in BITS:
            for row in ROWS:
                parts = []
                for frac in ([1.0] if row == "full" else FRACTIONS):
                    s = summary.get(_key(sd, bits, frac, row))
                    if s is None:
                        continue
                    parts.append(f"{frac:>4.0%}: {format_ci(s['accuracy_mean'], s['accuracy_ci95'], 100, 1):>12}"
                                 f" n={s['n']} {s['wall_s_mean']:5.0f}s sel {100 * s['selection_share_mean']:3.0f}%")
                if parts:
                    print(f"W{bits}A{bits} {row:<15} " + " | ".join(parts))


def markdown_table(summary: dict[str, dict[str, Any]], settings: list[str]) -> str:
    """The docs' table: one line per (setting, fraction, bits), one column per row; mean ± 95% CI in %."""
    rows = [r for r in ROWS if any(k.endswith("|" + r) for k in summary)]
    lines = ["| setting | bits | " + " | ".join(rows) + " |", "|---" * (len(rows) + 2) + "|"]
    for sd in settings:
        for bits in BITS:
            for frac in FRACTIONS:
                cells = []
                for r in rows:
                    s = summary.get(_key(sd, bits, 1.0 if r == "full" else frac, r))
                    if s is None or (r == "full" and frac != FRACTIONS[0]):
                        cells.append("")
                    else:
                        cells.append(format_ci(s["accuracy_mean"], s["accuracy_ci95"], 100, 1))
                if any(cells):
                    lines.append(f"| {sd} {frac:.0%} | W{bits}A{bits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge(paths: list[Path], out: Path) -> dict[str, Any]:
    """Combine the records of several ``--only`` invocations (disjoint settings) into one file."""
    record: dict[str, Any] = {"benchmark": "coreset", "quick": False, "runs": {}, "budgets": {}, "data": {},
                              "probe": {}, "parts": []}
    for p in paths:
        part = json.loads(p.read_text())
        for field in ("runs", "budgets", "data", "probe"):
            record[field].update(part.get(field, {}))
        record["parts"].append({"file": p.name, "machine": part.get("machine"), "elapsed_s": part.get("elapsed_s")})
        record.update({k: part[k] for k in ("train", "rows", "machine") if k in part})
    record["summary"] = summarise(record["runs"])
    write_json(out, record, indent=1, default=float)
    print_table(record["summary"], list(record["budgets"]))
    print("\n" + markdown_table(record["summary"], list(record["budgets"])))
    print(f"\nprobe (start of training, seed 0): {json.dumps(record['probe'])}")
    print(f"wrote {out}")
    return record


def main(argv: list[str] | None = None) -> None:
    """Prepare data, probe beta, run the grid (resumable), print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny budget (< 1 min) for the smoke test")
    ap.add_argument("--seeds", type=int, default=0, help="override every setting's seed count (0 = BUDGETS)")
    ap.add_argument("--first-seed", type=int, default=0, help="first seed (to split seeds over processes)")
    ap.add_argument("--only", default="", help="comma-separated setting/dataset keys, e.g. single/mnist14")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--merge", nargs="*", type=Path, default=[],
                    help="combine result files of parallel --only invocations into --out and print the table")
    args = ap.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return
    torch.set_num_threads(1)
    if args.quick and args.out == OUT:
        args.out = OUT.with_name("coreset-quick.json")  # never clobber the full result
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    datasets = QUICK_DATA if args.quick else DATA
    order = [k for k in budgets if not args.only or k in args.only.split(",")]
    record: dict[str, Any] = {"benchmark": "coreset", "quick": args.quick, "runs": {}}
    old = read_json(args.out)
    if old is not None and old.get("quick") == args.quick:  # resume: keep the finished runs of every unchanged setting
        same = {sd for sd in budgets if _run_budget(old.get("budgets", {}).get(sd)) == _run_budget(budgets[sd])}
        cells = {_key(sd, *c) for sd in same for c in _cells(budgets[sd])}
        record["runs"] = {k: v for k, v in old.get("runs", {}).items() if k.rsplit("|seed", 1)[0] in cells}
    # the machine block under the key names coreset.json has always used
    facts = machine(("cores", "memory_mb", "torch", "flwr", "ray", "python", "commit", "load_avg", "date"),
                    rename={"commit": "git_commit", "load_avg": "load_average_start"})
    record.update({"budgets": budgets, "data": {}, "train": TRAIN, "machine": facts, "probe": {},
                   "rows": {k: [m, o] for k, (m, o) in ROWS.items()}})
    t_all = time.perf_counter()
    for sd in order:
        setting, name = sd.split("/")
        budget = budgets[sd]
        data = prepare(name, **{**datasets[name], **budget.get("data", {})})
        record["data"][sd] = asdict(data)
        betas = {}
        for bits in budget.get("bits", BITS):
            probe = probe_beta(data, bits, budget)
            record["probe"][f"{sd}|W{bits}A{bits}"] = probe
            betas[bits] = probe["beta"]
        ref = load_reference(data)
        seeds = args.seeds or budget["seeds"]
        for seed in range(args.first_seed, args.first_seed + seeds):
            for bits, frac, row in _cells(budget):
                key = f"{_key(sd, bits, frac, row)}|seed{seed}"
                if key in record["runs"]:
                    continue
                cfg = scenario(data, setting, budget, bits, frac, row, seed, betas[bits])
                if setting == "single":
                    ds = fleet_data(cfg).dataset
                    res = asdict(run_single(cfg, ref, *test_subset(ds.x_test, ds.y_test, budget["test"])))
                else:
                    out_dir = Path(tempfile.gettempdir()) / f"bench-coreset-run-{os.getpid()}"
                    res = asdict(run_fed(cfg, out_dir))
                res["beta_setting"] = cfg.train.clc_beta
                record["runs"][key] = res
                print(f"{key}: acc {res['accuracy']:.4f} wall {res['wall_s']:.1f}s", flush=True)
                record["summary"] = summarise(record["runs"])
                record["elapsed_s"] = time.perf_counter() - t_all
                write_json(args.out, record, indent=1, default=float)
    record["summary"] = summarise(record["runs"])
    print_table(record["summary"], order)
    print(f"\nprobe (start of training, seed 0): {json.dumps(record['probe'])}")
    print(f"wrote {args.out} ({time.perf_counter() - t_all:.0f} s this invocation)")


if __name__ == "__main__":
    main()
