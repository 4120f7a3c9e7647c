"""The papers' claims, judged: a reproduction study of QuaRC, ACS, QGT and QCore (single-device and federated).

    python -m simulations.benchmarks.reproduce                     # the whole grid, 5 seeds (resumable)
    python -m simulations.benchmarks.reproduce --budget-min 60     # start no new run after an hour
    python -m simulations.benchmarks.reproduce --tables ablation,clc-everywhere --seeds 3
    python -m simulations.benchmarks.reproduce --report-only       # docs/reproduction.md from the JSON
    python -m simulations.benchmarks.reproduce --quick             # a smoke run on digits (the tests use it)

Every run goes through the project's real path (``run_config``: the engine, the ServerApp and the ClientApp,
the export), one cell and seed at a time, seed-major: every cell's seed 0, then every cell's seed 1, so that a
budget cut leaves paired seeds. Results go to ``results/reproduce.json`` after every run, with the commit and
machine; a second invocation skips what is there. ``docs/reproduction.md`` is written from the JSON at the end
(``--doc`` elsewhere). The grid, the claims and the verdict rule: :mod:`reproduce_grid`, :mod:`reproduce_report`.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simulations.benchmarks.common import (
    RESULTS,
    SHARED_DATA,
    git_commit,
    machine,
    over_budget,
    read_json,
    write_json,
)
from simulations.benchmarks.reproduce_grid import (
    DATASETS,
    MAIN_DATASETS,
    PROTOCOL,
    TABLES,
    cell_overrides,
    parse_cell,
)
from simulations.benchmarks.reproduce_report import render

__all__ = ["SCHEMA", "main", "run_cell"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduction.md"
COMMAND = "python -m simulations.benchmarks.reproduce"
#: Keys of one run's record in the JSON (the tests check them).
SCHEMA = ("accuracy", "fake_quant_accuracy", "float_accuracy", "curve", "wall_s", "reference_s", "commit", "flops",
          "kd_clc_ratio", "clc_beta", "coreset_size", "train_samples", "steps", "reference")
QUICK: dict[str, Any] = {"data.dataset": "digits", "data.root": "", "federation.rounds": 2,
                         "coreset.reselect-every": 1, "federation.eval-every": 1, "model.pretrain-epochs": 2,
                         "coreset.fraction": 0.2}
#: --quick: the two cells of the first claim, 3 seeds (enough for a verdict), in a few seconds each.
QUICK_CELLS = ("mnist/w2a2/1%/acs", "mnist/w2a2/1%/quarc")
QUICK_SEEDS = 3
#: --quick on a federated cell: a small fleet, two devices a round.
QUICK_FED: dict[str, Any] = {"federation.num-devices": 6, "federation.devices-per-round": 2, "train.local-epochs": 1}


def _flops(cfg: Any, devices: list[dict[str, Any]]) -> float:
    """Compute the virtual clock charged: its seconds times the profile's effective GFLOP/s (custom profiles too)."""
    from fleet.hardware.catalogue import resolve_profile

    return sum(r.get("compute_s", 0.0) * resolve_profile(cfg, r["profile"]).gflops * 1e9 for r in devices
               if r.get("profile"))


def _record(cfg: Any, summary: dict[str, Any], run_dir: Path, wall: float) -> dict[str, Any]:
    from simulations.store.rundir import read_jsonl

    rounds = read_jsonl(run_dir / "rounds.jsonl", [])
    devices = [d for d in read_jsonl(run_dir / "devices.jsonl", []) if d.get("status") == "ok"]
    first = devices[0] if devices else {}
    samples = sum(d.get("train_samples", 0) for d in devices)
    reference_s = (summary.get("startup_s") or {}).get("reference", 0.0)  # pretraining, when not cached
    elapsed = dict(zip((r["round"] for r in rounds), itertools.accumulate(
        (r.get("wall_s") or 0.0) if r["round"] > 0 else 0.0 for r in rounds), strict=True))
    return {"accuracy": summary.get("final_accuracy"), "fake_quant_accuracy": summary.get("fake_quant_accuracy"),
            "float_accuracy": summary.get("fp_reference_accuracy"),
            "reference": summary.get("reference_hash"),  # the float reference's content hash (pairing)
            # [round, accuracy, the round's wall s, wall s of rounds 1..round] at each evaluated round
            "curve": [[r["round"], r["accuracy"], r.get("wall_s"), elapsed[r["round"]]] for r in rounds
                      if r.get("accuracy") is not None],
            "wall_s": wall - reference_s, "reference_s": reference_s, "commit": git_commit(),
            "flops": _flops(cfg, devices), "kd_clc_ratio": first.get("kd-clc-ratio"),
            "clc_beta": first.get("clc-beta"), "coreset_size": first.get("coreset_size"), "train_samples": samples,
            "steps": sum(d.get("train_steps", 0) for d in devices),
            "bottleneck": [row["layer"] for row in (read_json(run_dir / "qgt.json") or {}).get("layers", [])]}


def cell_flat(cell: str, seed: int, data: dict[str, Any], quick: bool = False) -> dict[str, Any]:
    """The flat scenario of one (cell, seed)."""
    flat = {**cell_overrides(cell), **data, "federation.seed": seed, **(QUICK if quick else {})}
    dataset, _, _, row = parse_cell(cell)
    if quick and row == "full":
        flat["coreset.fraction"] = 1.0
    if quick and dataset.endswith("-fed"):
        flat.update(QUICK_FED)
    return flat


#: How a record names a data folder under :data:`SHARED_DATA`: the study's JSON is read on other machines
#: and in other checkouts, where the shared data lies elsewhere.
SHARED_TOKEN = "$EDGEFLEET_SHARED_DATA"


def portable(flat: dict[str, Any]) -> dict[str, Any]:
    """``flat`` as a record keeps it: a data.root under :data:`SHARED_DATA` relative to it, any other resolved.

    >>> portable({"data.root": str(SHARED_DATA / "mnist")})["data.root"]
    '$EDGEFLEET_SHARED_DATA/mnist'
    """
    root = flat.get("data.root")
    if not root or root.startswith(SHARED_TOKEN):
        return flat
    path, shared = Path(root).resolve(), SHARED_DATA.resolve()
    shown = f"{SHARED_TOKEN}/{path.relative_to(shared).as_posix()}" if path.is_relative_to(shared) else str(path)
    return {**flat, "data.root": shown}


def _same(stored: dict[str, Any] | None, flat: dict[str, Any]) -> bool:
    """Whether a stored run's config is this cell's (data.root compared as the folder it names)."""
    return stored is not None and portable(stored) == portable(flat)


def _flat(cell: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    if parse_cell(cell)[0] == "qcore":
        from simulations.benchmarks.reproduce_qcore import qcore_flat

        return qcore_flat(cell, seed, args.quick)
    return cell_flat(cell, seed, _data_keys(parse_cell(cell)[0], args), args.quick)


def _run(cell: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One (cell, seed): a QCore cell through the continual-calibration library, any other through run_config."""
    if parse_cell(cell)[0] == "qcore":
        from simulations.benchmarks.reproduce_qcore import run_qcore_cell

        return run_qcore_cell(cell, seed, args.quick)
    return run_cell(cell, seed, _data_keys(parse_cell(cell)[0], args), work, args.quick)


def run_cell(cell: str, seed: int, data: dict[str, Any], work: Path, quick: bool = False) -> dict[str, Any]:
    """One (cell, seed) through the real path; its record (:data:`SCHEMA`)."""
    from fleet.config.scenario import parse_config
    from simulations.benchmarks.common import run_scenario

    flat = cell_flat(cell, seed, data, quick)
    cfg = parse_config(flat, name="reproduce")
    run_dir = work / f"{cell.replace('/', '_').replace('%', 'pct')}-{seed}"
    summary, wall = run_scenario(cfg, run_dir)
    return {**_record(cfg, summary, run_dir, wall), "config": portable(flat)}


def _data_keys(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return {}
    keys = dict(DATASETS[dataset])
    if dataset in MAIN_DATASETS and (args.dataset or args.root):
        keys = {"data.dataset": args.dataset or "npz", "data.root": args.root}
    elif not Path(keys["data.root"]).is_absolute():
        keys["data.root"] = str(SHARED_DATA / keys["data.root"])
    return keys


def _cells(args: argparse.Namespace) -> list[str]:
    if args.quick and not args.tables and not args.cells:
        return list(QUICK_CELLS)
    wanted = [t for t in args.tables.split(",") if t] or [t.key for t in TABLES]
    known = {t.key: t for t in TABLES}
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise SystemExit(f"--tables: unknown table {unknown[0]!r}; tables: {', '.join(known)}")
    cells = list(dict.fromkeys(c for t in wanted for c in known[t].cells))
    patterns = [p for p in args.cells.split(",") if p]
    if not patterns:
        return cells
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c, p) for c in cells)]
    if unmatched:
        raise SystemExit(f"--cells: {unmatched[0]!r} matches no cell of the tables {', '.join(wanted)} "
                         f"(cells are named like {cells[0]!r})")
    return [c for c in cells if any(fnmatch.fnmatchcase(c, p) for p in patterns)]


def _shown(path: Path) -> str:
    """A data folder as the docs name it: beside the checkout (``../shared/...``) when it is there."""
    beside = Path(__file__).resolve().parents[3]  # the folder holding the checkout
    return str(Path("..") / path.relative_to(beside)) if path.is_relative_to(beside) else str(path)


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    quick = f"--quick overrides {QUICK} on: " if args.quick else ""
    return {"protocol": quick + "one device holding the whole training set; T = {} epochs, one Adam (lr {}), cosine "
                        "schedule over the run, batch {}, coreset re-selected every {} epochs, KD from the float "
                        "reference, BatchNorm re-estimated on the coreset; CLC rows: beta 'auto' (beta * L_CLC = "
                        "0.5 * L_KD on the first batch)".format(
                            PROTOCOL["federation.rounds"], PROTOCOL["train.lr"], PROTOCOL["train.batch-size"],
                            PROTOCOL["coreset.reselect-every"]) + "; federated (`mnist-fed`) cells: the learning "
                        "benchmark's federated recipe (the deviations below)",
            "data": "digits (--quick)" if args.quick else
                    f"MNIST (60,000 training samples: 1% = 600) from {args.root or _shown(SHARED_DATA / 'mnist')}; "
                    f"CIFAR-10 (JPEG) from {_shown(SHARED_DATA / 'cifar10-jpeg')}",
            "seeds": args.seeds, "note": f"budget {args.budget_min:g} min per invocation" if args.budget_min else ""}


def _expected_s(runs: dict[str, Any]) -> float | None:
    """The median wall time of a cell's recorded seeds: a 10% cell costs ten 1% cells, so the mean of
    the invocation's runs so far would mislead the budget (None when the cell has no record)."""
    walls = [r["wall_s"] for r in runs.values() if isinstance(r.get("wall_s"), (int, float))]
    return statistics.median(walls) if walls else None


#: reference recipe -> its content hash, in this process: cells that share a reference load it once.
_DIGESTS: dict[str, str] = {}


def _reference_for(cell: str, flat: dict[str, Any]) -> str | None:
    """The content hash of the float reference a (cell, seed) learns from here: loaded from the cache, or
    pretrained into it (the run would do that anyway). None for a QCore cell (it has no such reference)."""
    if parse_cell(cell)[0] == "qcore":
        return None
    from fleet.config.scenario import parse_config
    from fleet.data.splits import fleet_data
    from fleet.model import reference as ref

    cfg = parse_config(flat, name="reproduce")
    key = ref._recipe(cfg)  # the framework's own cache key of a reference
    if key not in _DIGESTS:
        _DIGESTS[key] = ref.reference_model(cfg, fleet_data(cfg))[1]
    return _DIGESTS[key]


def _current(done: dict[str, Any], cell: str, seed: int, args: argparse.Namespace) -> bool:
    """Whether a stored run still stands: it has an accuracy, its cell's config and this machine's float
    reference (pretraining is not bit-identical across machines: a record from another reference, or from before
    records kept it, runs again)."""
    flat = _flat(cell, seed, args)
    if done.get("accuracy") is None or not _same(done.get("config"), flat):
        return False
    reference = _reference_for(cell, flat)
    return reference is None or done.get("reference") == reference


def _run_all(args: argparse.Namespace, results: dict[str, Any], out: Path) -> None:
    cells, t0, done_now = _cells(args), time.perf_counter(), 0
    work = Path(tempfile.mkdtemp(prefix="bench-reproduce-"))
    try:
        for seed in range(args.seeds):
            for cell in cells:
                runs = results["runs"].setdefault(cell, {})
                done = runs.get(str(seed), {})
                if _current(done, cell, seed, args):
                    continue  # a record of another grid or reference, or a run without an accuracy, runs again
                if args.budget_min and over_budget(t0, 60 * args.budget_min, done_now, _expected_s(runs)):
                    print(f"budget of {args.budget_min:g} min spent; run again to continue", flush=True)
                    return
                runs[str(seed)] = _run(cell, seed, args, work)
                done_now += 1
                results["machine"] = machine()
                write_json(out, results, indent=1, default=str)
                r = runs[str(seed)]
                what = (f"{r['steps']} steps on {r['coreset_size']} samples" if "steps" in r else
                        f"{100 * r['codes_changed']:.1f}% of codes moved per task")
                print(f"{cell} seed {seed}: {100 * (r['accuracy'] or 0):.2f}% ({r['wall_s']:.0f} s, {what})",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    ap.add_argument("--tables", default="", help="comma-separated tables to run (default: all, in order): "
                    + ", ".join(t.key for t in TABLES))
    ap.add_argument("--cells", default="", help="only the tables' cells matching these comma-separated patterns, "
                                                "e.g. 'mnist/w4a4/*'")
    ap.add_argument("--seeds", type=int, default=None, help=f"seeds per cell (default 5; --quick {QUICK_SEEDS})")
    ap.add_argument("--dataset", default="", help="data.dataset of the main (MNIST) cells and their federated "
                                                  "versions, for your own data")
    ap.add_argument("--root", default="", help="data.root of the main cells and their federated versions "
                                               "(default: ../shared/data/mnist)")
    ap.add_argument("--budget-min", type=float, default=0.0, help="start no run expected to end after this many "
                    "minutes (a cell's recorded seeds give its expected time)")
    ap.add_argument("--report-only", action="store_true", help="only write the doc from the JSON")
    ap.add_argument("--note", default=None, help="a sentence about the budget and the machine's load, kept in the "
                                                 "JSON and printed with the budget")
    ap.add_argument("--quick", action="store_true", help="a smoke run on digits with tiny budgets")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: results/reproduce.json)")
    ap.add_argument("--doc", type=Path, default=None, help="the report (default: docs/reproduction.md; "
                                                           "--quick: beside the JSON)")
    args = ap.parse_args(argv)
    args.seeds = args.seeds or (QUICK_SEEDS if args.quick else 5)
    out = args.out or RESULTS / ("reproduce-quick.json" if args.quick else "reproduce.json")
    results = read_json(out) or {"benchmark": "reproduce", "runs": {}}
    if not args.report_only or "budget" not in results:
        results["budget"] = _budget(args)
    if args.note is not None:
        results["budget"]["note"] = args.note
    if not args.report_only:
        _run_all(args, results, out)
    results["path"] = str(out.relative_to(DOC.parents[1])) if out.is_relative_to(DOC.parents[1]) else str(out)
    doc = args.doc or (out.with_suffix(".md") if args.quick else DOC)
    doc.write_text(render(results, f"{COMMAND} --report-only" if not args.quick else f"{COMMAND} --quick"))
    write_json(out, results, indent=1, default=str)
    print(f"report: {doc}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
