"""Benchmark: one QAT training step, float vs fake-quantized W4A4.

Times forward + backward + optimizer step of a float model and of the same model
after ``quantize_model(..., 4, 4)`` (ACS's default float layers), alternating
A/B so that machine load drifts hit both equally. Prints a table of medians,
spread (interquartile range) and the quant/float ratio, and writes JSON to
``simulations/benchmarks/results/qat_step.json``.

Run: ``python -m simulations.benchmarks.qat_step [--reps 30] [--threads N]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from fleet.model.architectures import build_model
from fleet.quant.convert import init_quantizers, quantize_model
from simulations.benchmarks.common import RESULTS as RESULTS_DIR
from simulations.benchmarks.common import machine, write_json

CASES: list[tuple[str, tuple[int, int, int]]] = [("cnn", (1, 28, 28)), ("resnet20", (3, 32, 32))]
RESULTS = RESULTS_DIR / "qat_step.json"


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _quartiles(ms: list[float]) -> tuple[float, float, float]:
    q1, med, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    return q1, med, q3


def bench_case(
    arch: str, in_shape: tuple[int, int, int], batch: int, reps: int, warmup: int, seed: int
) -> dict[str, object]:
    """Time float vs W4A4 training steps for one architecture."""
    torch.manual_seed(seed)  # parameter init inside build_model
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *in_shape, generator=gen)  # (N, C, H, W)
    y = torch.randint(0, 10, (batch,), generator=gen)  # (N,)
    fp = build_model(arch, in_shape=in_shape, num_classes=10)
    qm = quantize_model(fp, weight_bits=4, act_bits=4)
    init_quantizers(qm, x)
    steps = {"float": _step_fn(fp, x, y), "w4a4": _step_fn(qm, x, y)}
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(reps):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))  # A/B, then B/A
        for name in order:
            times[name].append(1e3 * _timed(steps[name]))
    stats: dict[str, dict[str, Any]] = {}
    for name, ms in times.items():
        q1, med, q3 = _quartiles(ms)
        stats[name] = {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": min(ms), "all_ms": ms}
    # Per-repetition ratio: both members of a pair ran back to back under the same load.
    ratios = [q / f for q, f in zip(times["w4a4"], times["float"], strict=True)]
    return {
        "arch": arch,
        "in_shape": list(in_shape),
        "batch": batch,
        **stats,
        "ratio_of_medians": stats["w4a4"]["median_ms"] / stats["float"]["median_ms"],
        "median_paired_ratio": statistics.median(ratios),
    }


def main(argv: list[str] | None = None) -> None:
    """Run all cases, print the table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="A/B repetitions (>= 20)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.reps < 20:
        parser.error("--reps must be >= 20")
    torch.set_num_threads(args.threads)
    results = [
        bench_case(arch, shape, args.batch, args.reps, args.warmup, args.seed)
        for arch, shape in CASES
    ]
    print(f"QAT step, batch {args.batch}, {args.reps} A/B reps, {args.threads} threads")
    print(f"{'arch':<10} {'float ms (IQR)':>22} {'w4a4 ms (IQR)':>22} {'ratio':>7} {'paired':>7}")
    for r in results:
        cells = []
        for name in ("float", "w4a4"):
            s = r[name]
            cells.append(f"{s['median_ms']:7.1f} ({s['q1_ms']:.1f}-{s['q3_ms']:.1f})")  # type: ignore[index]
        print(
            f"{r['arch']:<10} {cells[0]:>22} {cells[1]:>22} "
            f"{r['ratio_of_medians']:>6.2f}x {r['median_paired_ratio']:>6.2f}x"
        )
    record = {
        "benchmark": "qat_step",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        # machine facts at the top level, under the key names qat_step.json has always used
        **machine(("torch", "python", "cores", "torch_threads", "load_avg", "date", "commit"),
                  rename={"cores": "cpu_count", "load_avg": "load_average", "commit": "git_commit"}),
        "results": results,
    }
    write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
