"""QCore benchmark: continual on-device calibration of a fleet under covariate drift.

Run: ``python -m simulations.benchmarks.qcore [--devices 50] [--tasks 10] [--quick]``.

Setup (budgets chosen to fit ~15 min on 2 CPU cores; see docs/qcore.md):

* MNIST, average-pooled 28x28 -> 14x14 (4x cheaper forward passes), pixels in [0, 1].
* Public split: 10% of the training set. A small CNN (``cnn``) is trained on it
  centrally (Adam 0.01, ``FLOAT_EPOCHS`` epochs) while quantized copies at bits
  2/3/4/5/8 record quantization misses every ``RECORD_EVERY`` epochs -> the QCore (20).
* The other 90% is split over the devices by a Dirichlet(0.5) label split; each
  device's local data is its stream (``tasks`` batches, covariate drift).
* Per bit-width (W4A4, W2A2): quantize, BP-calibrate on the QCore (50 epochs), train
  the BFNs on pairs from that calibration plus ``BFN_EPISODES`` BP runs on simulated
  shifted cores of public data, then run every device with each calibration method.
* Accuracy on the held-out quarter of each task batch, on ``EVAL_TEST`` original test
  images (forgetting), and FLOPs per task; mean and std over devices.
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fleet.model.architectures import build_model
from fleet.qcore.continual import ContinualConfig, Deployment, deploy, run_device_stream
from fleet.qcore.misses import count_misses, sample_core, train_float_recording, update_core
from fleet.qcore.quant import to_qcore
from fleet.qcore.stream import make_stream
from simulations.benchmarks.common import RESULTS, SHARED_DATA, write_json

DATA = SHARED_DATA / "mnist"
OUT = RESULTS / "qcore.json"
METHODS = ("none", "bfn", "backprop-qcore", "backprop-random")
BITS = (4, 2)
HW = 14
PUBLIC_FRACTION = 0.1
FLOAT_EPOCHS = 10
FLOAT_LR = 0.002  # the code's 0.01 gave a noticeably weaker 14x14 CNN (0.90) here
RECORD_EVERY = 2
INIT_EPOCHS = 50
BFN_EPISODES = 20
EVAL_TEST = 500
SEVERITY = 0.5
DIRICHLET_ALPHA = 0.5
CODE_LR = 0.05  # at the default 0.01, 10 BP epochs move no code at all on this CNN
RECORDINGS = 5  # recorded passes per core update (the code: 10); halves the update cost
COUNT_BATCH = 64
MIN_DEVICE_SAMPLES = 200


def load_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, 14, 14)`` in [0, 1] and labels ``(N,)``."""
    d = np.load(DATA / f"mnist_{split}.npz", allow_pickle=False)
    x = torch.from_numpy(d["images"]).float().div(255.0)[:, None]  # (N, 1, 28, 28)
    return F.avg_pool2d(x, 28 // HW), torch.from_numpy(d["labels"]).long()


def dirichlet_split(y: np.ndarray, devices: int, alpha: float, rng: np.random.Generator,
                    min_size: int) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) proportions over devices; redraw until all >= min_size."""
    for _ in range(100):
        parts: list[list[int]] = [[] for _ in range(devices)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(devices, alpha))) * len(idx)).astype(int)[:-1]
            for d, chunk in enumerate(np.split(idx, cuts)):
                parts[d].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [rng.permutation(np.array(p)) for p in parts]
    raise RuntimeError("could not draw a Dirichlet split with the minimum device size")


def _device_job(job: tuple) -> dict:
    torch.set_num_threads(1)
    dev, seed, deps, cores, x, y, xt, yt, base = job
    out: dict = {}
    for bits, dep in deps.items():
        for method in METHODS:
            cfg = ContinualConfig(**{**base, "bits": bits, "calibration": method})
            core = cores[bits]["random" if method == "backprop-random" else "qcore"]
            rng = np.random.default_rng([seed, dev, bits])  # same stream for every method
            res = run_device_stream(dep.model, x, y, xt, yt, cfg, rng, core=core, bfns=dep.bfns)
            out[f"{bits}/{method}"] = [r.__dict__ for r in res]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--quick", action="store_true",
                    help="4 of a 50-device split, 5 tasks, 200 test images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    devices, tasks, eval_n = (4, 5, 200) if args.quick else (args.devices, args.tasks, EVAL_TEST)
    torch.set_num_threads(2)
    rng, gen = np.random.default_rng(args.seed), torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()

    x_all, y_all = load_mnist("train")
    x_test, y_test = load_mnist("test")
    eval_idx = torch.from_numpy(rng.choice(len(y_test), eval_n, replace=False))
    x_test, y_test = x_test[eval_idx], y_test[eval_idx]
    perm = torch.from_numpy(rng.permutation(len(y_all)))
    n_pub = int(PUBLIC_FRACTION * len(y_all))
    x_pub, y_pub = x_all[perm[:n_pub]], y_all[perm[:n_pub]]
    x_priv, y_priv = x_all[perm[n_pub:]], y_all[perm[n_pub:]]
    # --quick keeps the full run's per-device data sizes: split as for 50, keep 4.
    n_split = max(devices, 50) if args.quick else devices
    parts = dirichlet_split(y_priv.numpy(), n_split, DIRICHLET_ALPHA, rng,
                            MIN_DEVICE_SAMPLES)[:devices]

    with torch.random.fork_rng():  # layer init draws from torch's global RNG; seed it locally
        torch.manual_seed(args.seed)
        model = build_model("cnn", (1, HW, HW), 10)
    records = train_float_recording(model, x_pub, y_pub, FLOAT_EPOCHS, gen, lr=FLOAT_LR,
                                    record_every=RECORD_EVERY)
    counts = count_misses(records)
    with torch.no_grad():
        float_acc = float((model(x_test).argmax(1) == y_test).float().mean())
    print(f"float model: test acc {float_acc:.3f}; {int((counts > 0).sum())} samples with misses;"
          f" {time.perf_counter() - t0:.0f}s")

    base: dict[str, Any] = {"tasks": tasks, "drift": "covariate", "severity": SEVERITY, "code_lr": CODE_LR,
                            "recordings": RECORDINGS, "count_batch_size": COUNT_BATCH}
    deps: dict[int, Deployment] = {}
    cores: dict[int, dict] = {}
    for bits in BITS:
        cfg = ContinualConfig(**base, bits=bits)
        qi = torch.from_numpy(sample_core(counts, cfg.core_size, rng))
        ri = torch.from_numpy(rng.choice(n_pub, cfg.core_size, replace=False))
        qcore, rcore = (x_pub[qi], y_pub[qi]), (x_pub[ri], y_pub[ri])
        qmodel = to_qcore(model, bits, x_pub[:128])
        # Off-device BFN episodes: QCore-style cores of public data under simulated
        # shifts of the same family at random task levels (a favourable assumption).
        episodes = []
        for _ in range(BFN_EPISODES):
            sub = torch.from_numpy(rng.choice(n_pub, 200, replace=False))
            xt, yt = make_stream(x_pub[sub], y_pub[sub], tasks, "covariate", rng, SEVERITY)[
                int(rng.integers(tasks))]
            empty = (xt[:0], yt[:0])
            ex, ey, _ = update_core(qmodel, empty, (xt, yt), rng, size=cfg.core_size, recordings=5)
            episodes.append((ex, ey))
        deps[bits] = deploy(qmodel, qcore, cfg, episodes, gen, init_epochs=INIT_EPOCHS)
        cores[bits] = {"qcore": qcore, "random": rcore}
        print(f"W{bits}A{bits} deployed; {time.perf_counter() - t0:.0f}s")

    jobs = [(d, args.seed, deps, cores, x_priv[torch.from_numpy(p)], y_priv[torch.from_numpy(p)],
             x_test, y_test, base) for d, p in enumerate(parts)]
    with get_context("fork").Pool(args.workers) as pool:
        per_device = pool.map(_device_job, jobs)
    elapsed = time.perf_counter() - t0

    summary: dict = {}
    for key in per_device[0]:
        rows = [dev[key] for dev in per_device]  # devices x tasks
        def stat(field: str, rows: list = rows) -> dict:
            v = np.array([[r[field] for r in dev] for dev in rows], dtype=np.float64)  # (D, T)
            return {"mean": np.nanmean(v, 0).tolist(), "std": np.nanstd(v, 0).tolist()}
        summary[key] = {f: stat(f) for f in ("accuracy_task", "accuracy_original",
                                             "accuracy_core", "flops", "wall_s")}
    _print_table(summary, tasks)
    write_json(OUT, {
        "setup": {"devices": devices, "tasks": tasks, "hw": HW, "arch": "cnn", "bits": BITS,
                  "float_epochs": FLOAT_EPOCHS, "float_lr": FLOAT_LR, "record_every": RECORD_EVERY,
                  "init_epochs": INIT_EPOCHS, "bfn_episodes": BFN_EPISODES, "eval_test": eval_n,
                  "severity": SEVERITY, "dirichlet_alpha": DIRICHLET_ALPHA,
                  "config": ContinualConfig(**base).__dict__, "seed": args.seed},
        "float_test_accuracy": float_acc,
        "elapsed_s": elapsed,
        "results": summary,
    }, indent=1, default=list)
    print(f"wrote {OUT} ({elapsed:.0f}s)")


def _print_table(summary: dict, tasks: int) -> None:
    shown = sorted({0, tasks // 2, tasks - 1})
    head = " ".join(f"{'task ' + str(t):>11}" for t in shown)
    print(f"{'bits/method':<20} {head} {'mean task':>11} {'orig@last':>11} {'GFLOP/task':>10}")
    for key, s in summary.items():
        acc, orig = s["accuracy_task"], s["accuracy_original"]
        cells = " ".join(f"{acc['mean'][t]:.3f}±{acc['std'][t]:.3f}" for t in shown)
        print(f"{key:<20} {cells} {np.mean(acc['mean']):>11.3f} "
              f"{orig['mean'][-1]:.3f}±{orig['std'][-1]:.3f} "
              f"{np.mean(s['flops']['mean']) / 1e9:>10.3f}")


if __name__ == "__main__":
    main()
