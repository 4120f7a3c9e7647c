"""Benchmark: one big device's whole run, command to report, against a plain PyTorch loop of the same recipe.

    python -m simulations.benchmarks.single_device            # MNIST (../shared/data/mnist), 3 reps
    python -m simulations.benchmarks.single_device --quick    # digits, a smoke run (the tests use it)

The recipe is the papers' single-device protocol (scenario ``single-device``, the learning benchmark's
``single-*-1pct`` cells): one device holding the whole training set (60,000 MNIST samples), a 1%
class-balanced random coreset re-drawn every 10 epochs, 30 epochs with one Adam and one cosine schedule,
KD from the frozen float reference, LSQ fake quantization, BatchNorm re-estimated on the coreset after each
epoch (``train.bn-refresh``), the test split evaluated before training and every 10 epochs.

- **edgefleet**: ``fleet run single-device --set ...`` in a fresh subprocess, timed from the command to its
  report (imports, data, the reference from its cache, the engine, every round, the export, the privacy
  measurements, report and figures). The device gets every CPU (``ray.num-cpus-per-device``).
- **plain**: :func:`plain_run` in a fresh subprocess (this module with ``--plain``), which imports nothing
  of the project: it reads the npz files with numpy, standardises them as the project does, loads the same
  float reference from a safetensors file, and runs the recipe with :mod:`simulations.benchmarks.plain_loops`'s
  torch-only pieces, torch at its default threads (every CPU).

Both subprocesses are alternated over repetitions (rep r uses seed r), after one untimed warm-up of each.
Peak memory is the summed RSS of each subprocess tree (``scale.TreeMemory``). Results:
``results/single_device.json`` with the commit and machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

RECIPE: dict[str, Any] = {"coreset.fraction": 0.01, "federation.rounds": 30, "coreset.reselect-every": 10,
                          "train.lr": 0.001, "train.batch-size": 64, "federation.eval-every": 10,
                          "model.pretrain-epochs": 8, "quant.codec": "fp32"}
CELLS = {"w4a4": (4, 4), "w2a2": (2, 2)}
QUICK = {"coreset.fraction": 0.1, "federation.rounds": 4, "federation.eval-every": 2, "model.pretrain-epochs": 2}


class _Measured(Exception):
    """Ends a forward pass at the BatchNorm being measured."""


@torch.no_grad()
def refresh_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> None:
    """Each BatchNorm's running mean and (unbiased) variance := those of its input over ``x``, measured in eval
    mode in forward order (earlier BatchNorms already refreshed), in batches; the model is left in eval mode."""
    model.eval()
    for bn in [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
        acc = torch.zeros(3, bn.num_features, dtype=torch.float64)  # count, sum, sum of squares

        def grab(_m: nn.Module, args: tuple[torch.Tensor, ...], acc: torch.Tensor = acc) -> None:
            t = args[0].double()
            acc += torch.stack([torch.full_like(acc[0], t.numel() / t.shape[1]), t.sum((0, 2, 3)),
                                (t * t).sum((0, 2, 3))])
            raise _Measured

        handle = bn.register_forward_pre_hook(grab)
        for s in range(0, len(x), batch_size):
            try:
                model(x[s:s + batch_size])
            except _Measured:
                pass
        handle.remove()
        n, mean = acc[0], acc[1] / acc[0]
        bn.running_mean.copy_(mean.float())  # type: ignore[union-attr]
        bn.running_var.copy_(((acc[2] - n * mean * mean) / (n - 1)).float())  # type: ignore[union-attr]


def load_npz(root: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``<root>/*_train.npz`` and ``*_test.npz`` as standardised float (N, C, H, W) tensors and int64 labels."""
    train = next(Path(root).glob("*_train.npz"))
    splits = [np.load(train), np.load(train.with_name(train.name.replace("_train", "_test")))]
    xs = [torch.from_numpy(d["images"]).float() / 255.0 for d in splits]
    xs = [x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2) for x in xs]
    mean, std = xs[0].mean((0, 2, 3), keepdim=True), xs[0].std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    x_tr, x_te = (((x - mean) / std).contiguous() for x in xs)
    return x_tr, torch.from_numpy(splits[0]["labels"]).long(), x_te, torch.from_numpy(splits[1]["labels"]).long()


def plain_run(data: tuple[torch.Tensor, ...], ref_path: str, wbits: int, abits: int, seed: int,
              recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as a plain loop; returns the test accuracy before training and every ``eval-every`` epochs."""
    from safetensors.torch import load_file

    from simulations.benchmarks import plain_loops as plain

    x, y, x_test, y_test = data
    fp = plain.PlainCNN(x.shape[1], int(y.max()) + 1)
    fp.load_state_dict(load_file(ref_path))
    teacher = fp.eval()
    student = plain.quantize_plain(fp, wbits, abits)
    plain._init_quantizers(student, x, seed)
    epochs, every, frac = recipe["federation.rounds"], recipe["federation.eval-every"], recipe["coreset.fraction"]
    batch = recipe["train.batch-size"]
    size = max(1, round(frac * len(y)))
    opt = torch.optim.Adam(student.parameters(), lr=recipe["train.lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * math.ceil(size / batch)))
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    curve, subset = [plain.evaluate(student, x_test, y_test, batch_size=512)], np.arange(0)
    for epoch in range(epochs):
        if epoch % recipe["coreset.reselect-every"] == 0:
            subset = plain.balanced_random_coreset(y, frac, rng)
        student.train()
        for b in plain._batches(len(subset), batch, gen):
            plain._kd_step(student, teacher, opt, x[torch.from_numpy(subset[b.numpy()])])
            sched.step()
        refresh_bn(student, x[torch.from_numpy(subset)])
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            curve.append(plain.evaluate(student, x_test, y_test, batch_size=512))
    return {"final_accuracy": curve[-1], "curve": curve}


def _sets(flat: dict[str, Any]) -> list[str]:
    return [a for k, v in flat.items() for a in ("--set", f"{k}={json.dumps(v) if isinstance(v, str) else v}")]


def _timed(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` to completion; (wall seconds, peak summed RSS MB of its process tree)."""
    from simulations.benchmarks.scale import TreeMemory

    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        with TreeMemory(proc.pid) as mem:
            code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {code}; see {log}")
    return time.perf_counter() - start, mem.peak_bytes / 2**20


def _flat(args: argparse.Namespace, cell: str, seed: int) -> dict[str, Any]:
    wb, ab = CELLS[cell]
    data = {"data.dataset": "digits"} if args.quick else {"data.dataset": "npz", "data.root": str(args.root)}
    return {**RECIPE, **(QUICK if args.quick else {}), **data, "quant.weight-bits": wb, "quant.act-bits": ab,
            "federation.seed": seed, "ray.num-cpus-per-device": os.cpu_count() or 1}


def _reference(flat: dict[str, Any], path: Path) -> None:
    """The project's float reference for the scenario (trained once, then from its cache), as a plain file."""
    from fleet.data.splits import fleet_data
    from fleet.model.reference import reference_model, save_atomic
    from simulations.run.scenario import load_config

    cfg, _ = load_config("single-device", flat)
    model, _, _ = reference_model(cfg, fleet_data(cfg))
    save_atomic(model.state_dict(), path)


def _run_one(side: str, args: argparse.Namespace, cell: str, seed: int, work: Path) -> dict[str, Any]:
    flat = _flat(args, cell, seed)
    ref = work / f"reference-{cell}-{seed}.safetensors"
    if not ref.is_file():
        _reference(flat, ref)
    out = work / f"{side}-{cell}-{seed}-{time.monotonic_ns()}"
    if side == "edgefleet":
        cmd = [sys.executable, "-m", "simulations.cli", "run", "single-device", *_sets(flat), "--out", str(out),
               "--quiet"]
    else:
        out.mkdir(parents=True)
        cmd = [sys.executable, "-m", "simulations.benchmarks.single_device", "--plain", str(ref), "--cell", cell,
               "--seed", str(seed), "--result", str(out / "summary.json")] + (["--quick"] if args.quick else
                                                                                ["--root", str(args.root)])
    wall, peak = _timed(cmd, work / f"{out.name}.log")
    summary = json.loads((out / "summary.json").read_text())
    return {"side": side, "cell": cell, "seed": seed, "wall_s": wall, "peak_rss_mb": peak,
            "final_accuracy": summary["final_accuracy"]}


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        mine = {side: [r for r in rows if r["cell"] == cell and r["side"] == side] for side in ("edgefleet", "plain")}
        if not all(mine.values()):
            continue
        med = {side: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "peak_rss_mb", "final_accuracy")}
               for side, rs in mine.items()}
        paired = [e["wall_s"] / p["wall_s"] for e, p in zip(mine["edgefleet"], mine["plain"], strict=False)]
        out[cell] = {**{f"{side}_{k}": v for side, m in med.items() for k, v in m.items()},
                     "wall_ratio_median_paired": statistics.median(paired),
                     "wall_ratio_range": [min(paired), max(paired)],
                     "accuracy": {side: [r["final_accuracy"] for r in rs] for side, rs in mine.items()}}
    return out


def _print(summary: dict[str, Any], reps: int) -> None:
    print(f"single device: whole wall, command to result, median of {reps} alternated reps (seed = rep)")
    print(f"{'cell':<6} {'edgefleet s':>11} {'plain s':>8} {'ratio':>12} {'acc edgefleet':>14} {'acc plain':>10} "
          f"{'RSS MB e/p':>12}")
    for cell, s in summary.items():
        lo, hi = s["wall_ratio_range"]
        print(f"{cell:<6} {s['edgefleet_wall_s']:>11.1f} {s['plain_wall_s']:>8.1f} "
              f"{s['wall_ratio_median_paired']:>5.2f}x [{lo:.2f}-{hi:.2f}] "
              f"{100 * s['edgefleet_final_accuracy']:>13.2f}% {100 * s['plain_final_accuracy']:>9.2f}% "
              f"{s['edgefleet_peak_rss_mb']:>5.0f}/{s['plain_peak_rss_mb']:.0f}")


def _plain_child(args: argparse.Namespace) -> None:
    """``--plain``: the plain loop alone in this process (no project import), its result as JSON."""
    wb, ab = CELLS[args.cell]
    recipe = {**RECIPE, **(QUICK if args.quick else {})}
    data = _digits() if args.quick else load_npz(str(args.root))
    res = plain_run(data, args.plain, wb, ab, args.seed, recipe)
    Path(args.result).write_text(json.dumps(res))


def _digits() -> tuple[torch.Tensor, ...]:
    """``--quick``: the project's digits split, the one dataset without files (the smoke run's only import of it)."""
    from fleet.data.datasets import load_dataset

    ds = load_dataset("digits")
    return ds.x_train, ds.y_train, ds.x_test, ds.y_test


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Warm up, alternate the two sides over the repetitions, print the table, write the JSON record."""
    from simulations.benchmarks.common import RESULTS, SHARED_DATA, git_commit, machine, utc_now, write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--root", type=Path, default=SHARED_DATA / "mnist", help="folder of *_train/_test.npz")
    parser.add_argument("--quick", action="store_true", help="digits, 4 epochs, 1 rep, one cell (< 1 min)")
    parser.add_argument("--out", type=Path, default=None, help="JSON record (default: results/single_device.json)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-single-device"))
    parser.add_argument("--plain", default=None, help=argparse.SUPPRESS)  # child: the reference file
    parser.add_argument("--cell", default="w4a4", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain is not None:
        _plain_child(args)
        return {}
    if args.quick:
        args.reps, args.cells = 1, args.cells[:1]
    args.out = args.out or (args.work / "single_device.json" if args.quick else RESULTS / "single_device.json")
    work = args.work / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True, exist_ok=True)
    start, rows = time.perf_counter(), []
    record: dict[str, Any] = {
              "benchmark": "single_device", "date": utc_now(), "git_commit": git_commit(), "machine": machine(),
              "settings": {"recipe": {**RECIPE, **(QUICK if args.quick else {})}, "reps": args.reps,
                           "dataset": "digits" if args.quick else str(args.root), "threads": os.cpu_count(),
                           "timing": "subprocess wall, command to result; one untimed warm-up of each side"}}
    for cell in args.cells:
        for side in ("edgefleet", "plain"):  # warm-up: the reference trained or cached, files in the page cache
            _run_one(side, args, cell, 0, work)
        for rep in range(args.reps):
            for side in ("edgefleet", "plain") if rep % 2 == 0 else ("plain", "edgefleet"):
                row = {**_run_one(side, args, cell, rep, work), "rep": rep}
                rows.append(row)
                print(f"  {cell} rep {rep} {side}: {row['wall_s']:.1f} s, accuracy {100 * row['final_accuracy']:.2f}%",
                      flush=True)
                record.update(summary=_summarise(rows), runs=rows, total_wall_s=time.perf_counter() - start)
                write_json(args.out, record)  # after every run: a crash keeps what finished
    _print(record["summary"], args.reps)
    print(f"wrote {args.out} ({record['total_wall_s']:.0f} s)")
    return record


if __name__ == "__main__":
    main()
