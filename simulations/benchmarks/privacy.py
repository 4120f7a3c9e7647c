"""Privacy benchmark: what a low-bit fleet learns under differential privacy, what the guarantee is, what leaks.

MNIST, 100 devices, 10 per round, Dirichlet 0.5, QuaRC 10%, W4A4 and W2A2 (``qweights`` uplink). For each
width: no DP, then DP at four noise multipliers (clip norm :data:`CLIP`): final accuracy, epsilon (RDP,
sampling without replacement, replace-one; PLD, Poisson, add/remove) at delta 1e-5, and membership-inference
AUC (loss threshold, offline LiRA) of the final model. Then the same fleet with SecAgg+ and without, for the
round time. Last, the quantized fleets without distillation (and with every layer quantized), beside FP32,
for the question whether a low-bit uplink leaks less than a float one. Runs go through the ServerApp and
ClientApp on an in-process grid (no Ray start-up in the timings, one process: the 2 cores here), one run at a
time, resumable: finished cells are kept in ``results/privacy.json`` and skipped.

    python -m simulations.benchmarks.privacy            # the grid (about 13 min here)
    python -m simulations.benchmarks.privacy --quick    # digits, 8 devices, 2 rounds: the smoke test
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet.config.scenario import parse_config
from simulations.benchmarks.common import RESULTS as RESULTS_DIR
from simulations.benchmarks.common import SHARED_DATA, git_commit, machine, read_json, utc_now, write_json
from simulations.benchmarks.strategies import memo_reference, run_local
from simulations.store.rundir import read_jsonl

RESULTS = RESULTS_DIR / "privacy.json"
CLIP = 0.5
SIGMAS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
BITS: tuple[int, ...] = (4, 2)
FULL: dict[str, object] = {
    "federation.num-devices": 100, "federation.devices-per-round": 10, "federation.rounds": 5,
    "data.dataset": "npz", "data.root": str(SHARED_DATA / "mnist"), "data.alpha": 0.5, "data.test-limit": 2000,
    "model.arch": "mlp", "model.pretrain-epochs": 5, "quant.codec": "qweights",
    "coreset.method": "quarc", "coreset.fraction": 0.1, "train.local-epochs": 1, "strategy.guard": False,
    "privacy.clip-norm": CLIP, "privacy.delta": 1e-5, "privacy.shadow-models": 4, "privacy.label-inference": True,
}
QUICK: dict[str, object] = {
    **FULL, "federation.num-devices": 8, "federation.devices-per-round": 4, "federation.rounds": 2,
    "data.dataset": "digits", "data.root": "", "data.test-limit": 300, "model.arch": "mlp",
    "model.pretrain-epochs": 2, "privacy.shadow-models": 2,
}


def cells(base: dict[str, object], sigmas: tuple[float, ...]) -> list[tuple[str, dict[str, object]]]:
    """(name, overrides) of every run, in the order they run."""
    out: list[tuple[str, dict[str, object]]] = []
    fp32 = {"quant.weight-bits": 32, "quant.act-bits": 32, "quant.codec": "fp32"}
    out += [("FP32 no-dp", {**base, **fp32}), ("FP32 secagg", {**base, **fp32, "privacy.secure-aggregation": True})]
    for b in BITS:
        width = {"quant.weight-bits": b, "quant.act-bits": b}
        out.append((f"W{b}A{b} no-dp", {**base, **width}))
        out += [(f"W{b}A{b} dp sigma={s:g}", {**base, **width, "privacy.dp": True, "privacy.noise-multiplier": s})
                for s in sigmas]
        out.append((f"W{b}A{b} secagg", {**base, **width, "privacy.secure-aggregation": True}))
    # Does a low-bit uplink leak less than a float one? Without distillation (whose soft targets carry no
    # labels), and with the classifier quantized too, so the bit-width is the only difference from FP32 no-dp.
    for b in BITS:
        width = {"quant.weight-bits": b, "quant.act-bits": b, "train.kd": False}
        out.append((f"W{b}A{b} no-dp no-kd", {**base, **width}))
        out.append((f"W{b}A{b} no-dp no-kd all-quantized", {**base, **width, "quant.keep-fp": "none"}))
    return out


def run_cell(name: str, flat: dict[str, object], run_dir: Path) -> dict[str, Any]:
    """One run's numbers: accuracy, epsilon, attacks, round times, bytes."""
    cfg = parse_config(flat, name=name.replace(" ", "-"))
    t0 = time.perf_counter()
    summary, _ = run_local(cfg, run_dir)
    rounds = [r for r in read_jsonl(run_dir / "rounds.jsonl", []) if r["round"] > 0]
    priv = summary.get("privacy", {})
    member = priv.get("membership", {})
    return {
        "name": name, "status": summary.get("status"), "final_accuracy": summary.get("final_accuracy"),
        "fp_reference_accuracy": summary.get("fp_reference_accuracy"),
        "epsilon_rdp": priv.get("epsilon_rdp"), "epsilon_pld": priv.get("epsilon_pld"),
        "mia_loss_auc": member.get("loss-threshold", {}).get("auc"),
        "mia_lira_auc": member.get("lira-offline", {}).get("auc"),
        "mia_lira_tpr_at_1pct_fpr": member.get("lira-offline", {}).get("tpr_at_1pct_fpr"),
        "label_inference_auc": _mean([r.get("label_inference_auc") for r in rounds]),
        "round_wall_s": [r["wall_s"] for r in rounds],
        "uplink_bytes_per_device_round": (summary.get("uplink_bytes", 0) or 0)
        / max(summary.get("device_rounds_completed") or 1, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits smoke run (tests)")
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    args = p.parse_args(argv)
    out = args.out or (RESULTS.with_name("privacy-quick.json") if args.quick else RESULTS)
    base, sigmas = (QUICK, SIGMAS[1:3]) if args.quick else (FULL, SIGMAS)
    done = {c["name"]: c for c in (read_json(out) or {}).get("cells", []) if c.get("commit_config") == base}
    results: list[dict[str, Any]] = []
    with memo_reference(), tempfile.TemporaryDirectory() as tmp:
        for name, flat in cells(base, sigmas):
            if name in done:
                results.append(done[name])
                continue
            cell = run_cell(name, flat, Path(tmp) / name.replace(" ", "-"))
            cell["commit_config"] = base
            results.append(cell)
            print(_line(cell), flush=True)
            write_json(out, {"commit": git_commit(), "finished": utc_now(), "machine": machine(),
                             "config": base, "cells": results})
    print(table(results))
    return 0


def _line(c: dict[str, Any]) -> str:
    return (f"{c['name']:<22} acc {100 * (c['final_accuracy'] or 0):5.1f}%  eps rdp {_num(c['epsilon_rdp'])} "
            f"pld {_num(c['epsilon_pld'])}  MIA auc loss {_num(c['mia_loss_auc'])} lira {_num(c['mia_lira_auc'])}  "
            f"labels {_num(c.get('label_inference_auc'))}  round {_median(c['round_wall_s']):.2f} s  "
            f"up {c['uplink_bytes_per_device_round'] / 1e3:.1f} kB")


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _num(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3g}"


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def table(results: list[dict[str, Any]]) -> str:
    """The Markdown table of docs/benchmarks.md."""
    lines = ["| run | accuracy | epsilon RDP | epsilon PLD | MIA AUC loss | MIA AUC LiRA | LiRA TPR@1%FPR | "
             "label inference AUC | median round s | uplink kB/device-round |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in results:
        lines.append(f"| {c['name']} | {100 * (c['final_accuracy'] or 0):.2f}% | {_num(c['epsilon_rdp'])} | "
                     f"{_num(c['epsilon_pld'])} | {_num(c['mia_loss_auc'])} | {_num(c['mia_lira_auc'])} | "
                     f"{_num(c['mia_lira_tpr_at_1pct_fpr'])} | {_num(c.get('label_inference_auc'))} | "
                     f"{_median(c['round_wall_s']):.2f} | "
                     f"{c['uplink_bytes_per_device_round'] / 1e3:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
