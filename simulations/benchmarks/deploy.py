"""Benchmark: what a device stores and runs. Size, integer-only path and ONNX file of short real runs.

    python -m simulations.benchmarks.deploy            # the quickstart and a CIFAR-10 CNN, both float-layer policies
    python -m simulations.benchmarks.deploy --quick    # the quickstart at 2 rounds (the tests use it)

Each cell is a ``fleet run``-equivalent run (``run_scenario``). Its summary gives:
- the deployed accuracy;
- the model as a device stores it (packed b-bit codes, steps, float layers), the ONNX file and float32;
- the integer path's agreement with the fake-quantized model;
- onnxruntime's agreement with the integer path, with its fused integer kernels and without them.

Agreement is measured on the first ``CHECK_SAMPLES`` test samples (``simulations/store/deploy.py``). Cells:
``quant.keep-fp = "default"`` (ACS: stem and classifier in float) and ``"int8"`` (those layers at W8A8).
Results: ``results/deploy.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmarks.common import RESULTS, SHARED_DATA, git_commit, machine, run_scenario, utc_now, write_json

CIFAR = {"data.dataset": "npz", "data.root": str(SHARED_DATA / "cifar10-jpeg"), "model.arch": "cnn",
         "federation.num-devices": 20, "federation.devices-per-round": 5, "federation.rounds": 5,
         "model.pretrain-epochs": 10, "quant.weight-bits": 4, "quant.act-bits": 4, "data.test-limit": 0}
CELLS: dict[str, dict[str, Any]] = {
    "quickstart": {},
    "quickstart-int8": {"quant.keep-fp": "int8"},
    "cifar10-cnn-w4a4": CIFAR,
    "cifar10-cnn-w4a4-int8": {**CIFAR, "quant.keep-fp": "int8"},
}
FIELDS = ("final_accuracy", "model_size_bytes", "onnx_bytes", "fp32_model_size_bytes", "integer_agreement",
          "onnx_agreement", "onnx_unfused_agreement", "integer_float_ops", "deploy_check_samples")


def run_cell(name: str, quick: bool) -> dict[str, Any]:
    from simulations.run.scenario import load_config

    over = {**CELLS[name], **({"federation.rounds": 2} if quick else {})}
    cfg, _ = load_config("quickstart", over)
    with tempfile.TemporaryDirectory() as tmp:
        summary, wall = run_scenario(cfg, Path(tmp) / "run")
    return {"cell": name, "overrides": over, "wall_s": wall, **{k: summary.get(k) for k in FIELDS}}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| cell | accuracy | stored | ONNX | float32 | integer vs fake-quant | onnxruntime vs integer "
             "(fused / unfused) | float ops |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {100 * r['final_accuracy']:.2f}% | {r['model_size_bytes'] / 1e3:.1f} kB "
                     f"| {r['onnx_bytes'] / 1e3:.1f} kB | {r['fp32_model_size_bytes'] / 1e3:.1f} kB "
                     f"| {100 * r['integer_agreement']:.2f}% | {100 * r['onnx_agreement']:.2f}% / "
                     f"{100 * r['onnx_unfused_agreement']:.2f}% | {', '.join(r['integer_float_ops']) or '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=CELLS)
    parser.add_argument("--quick", action="store_true", help="the quickstart at 2 rounds only")
    parser.add_argument("--out", type=Path, default=None, help="JSON record (default: results/deploy.json)")
    args = parser.parse_args(argv)
    cells = ["quickstart"] if args.quick else args.cells
    out = args.out or (Path("runs/bench-deploy/deploy.json") if args.quick else RESULTS / "deploy.json")
    start = time.perf_counter()
    rows = []
    for name in cells:
        rows.append(run_cell(name, args.quick))
        print(f"  {name}: {rows[-1]['wall_s']:.0f} s", flush=True)
    record = {"benchmark": "deploy", "date": utc_now(), "git_commit": git_commit(), "machine": machine(),
              "rows": rows, "total_wall_s": time.perf_counter() - start}
    write_json(out, record)
    print(table(rows))
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    main()
