"""The reproduction study's QCore cells: continual on-device calibration at a budget where back-propagation moves
integer codes.

A cell is ``qcore/<bits>/drift/<row>`` (e.g. ``qcore/w4/drift/bfn``); one (cell, seed) is every study device's
drifting stream calibrated by that row's method, on a deployment shared by the seed's rows (the same float model,
QCore, quantized model and initial calibration, and the same streams: rows are paired by seed).

Setup (as ``simulations/benchmarks/qcore.py``, which runs the library's defaults over 50 devices): MNIST pooled to
14x14, a public 10% that trains the float CNN while quantized copies record misses, the other 90% split over 50
devices by Dirichlet(0.5) label proportions, of which the first ``DEVICES`` run; covariate drift (rotation,
contrast, noise) growing to ``SETTING["severity"]`` over ``SETTING["tasks"]`` stream batches.

The calibration setting (``SETTING``) is the study's answer to "at the library's default (20 samples, one batch of
128, code lr 0.01, 10 epochs) back-propagation moves almost no code": a 200-sample core, batch 32, Adam at 0.03
quantization steps per step, 30 epochs (210 steps per task). There back-propagation moves about a tenth of the codes
per task and gains tens of points under drift (``docs/reproduction.md``).

Rows: ``none``; ``bfn`` (fitted to the code changes of codes-only back-propagation in this setting, on the initial
core and ``BFN_EPISODES`` simulated shifts of public data); ``backprop`` (codes, biases and norms on the QCore);
``backprop-codes`` (codes only: the most a BFN could imitate); ``backprop-random`` (a random core of the same size).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from fleet.qcore.continual import ContinualConfig, Deployment, deploy, run_device_stream
from simulations.benchmarks.common import git_commit
from simulations.benchmarks.reproduce_grid import parse_cell

__all__ = ["QCORE_ROWS", "QCORE_SCHEMA", "SETTING", "qcore_flat", "run_qcore_cell"]

#: The calibration setting of the study (ContinualConfig fields).
SETTING: dict[str, Any] = {"tasks": 10, "drift": "covariate", "severity": 0.5, "core_size": 200, "batch_size": 32,
                           "code_lr": 0.03, "epochs": 30, "recordings": 5, "count_batch_size": 64}
#: row -> (calibration, codes_only)
QCORE_ROWS: dict[str, tuple[str, bool]] = {
    "none": ("none", False), "bfn": ("bfn", True), "backprop": ("backprop-qcore", False),
    "backprop-codes": ("backprop-qcore", True), "backprop-random": ("backprop-random", False)}
DEVICES, SPLIT_DEVICES, DIRICHLET_ALPHA, MIN_DEVICE_SAMPLES = 4, 50, 0.5, 200
FLOAT_EPOCHS, RECORD_EVERY, INIT_EPOCHS, BFN_EPISODES, EVAL_TEST = 10, 2, 50, 20, 500
#: --quick: digits, 2 devices of a 4-way split, 3 tasks, a 40-sample core, short float training and BFN fitting.
QUICK: dict[str, Any] = {"tasks": 3, "core_size": 40, "epochs": 3, "recordings": 2}
_QUICK_SIZES = {"devices": 2, "split": 4, "min_samples": 60, "float_epochs": 3, "episodes": 2, "eval": 200,
                "init_epochs": 5}

#: Keys of one QCore run's record (the tests check them).
QCORE_SCHEMA = ("accuracy", "accuracy_original", "accuracy_core", "codes_changed", "flops_per_task",
                "flops_calibration_per_task", "calibration_s_per_task", "wall_s", "prepare_s", "per_device_accuracy",
                "per_task_accuracy", "bfn_fit", "commit", "config")

_prepared: dict[tuple[int, int, bool], tuple[Deployment, dict[str, Any]]] = {}


def qcore_flat(cell: str, seed: int, quick: bool = False) -> dict[str, Any]:
    """A QCore cell's settings as a flat record (stored with the run; a changed setting reruns it)."""
    _, bits, _, row = parse_cell(cell)
    calibration, codes_only = QCORE_ROWS[row]
    sizes = _QUICK_SIZES if quick else {"devices": DEVICES, "split": SPLIT_DEVICES, "min_samples": MIN_DEVICE_SAMPLES,
                                        "float_epochs": FLOAT_EPOCHS, "episodes": BFN_EPISODES, "eval": EVAL_TEST}
    return {**SETTING, **(QUICK if quick else {}), "bits": int(bits[1:]), "calibration": calibration,
            "codes_only": codes_only, "seed": seed, "quick": quick, "init_epochs": INIT_EPOCHS,
            "dirichlet_alpha": DIRICHLET_ALPHA, **sizes,  # the quick sizes replace init_epochs
            **({"bfn_init_seed": seed} if row == "bfn" else {})}  # the BFNs' initialisation is seeded


def _data(quick: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if quick:
        from fleet.data.datasets import load_dataset

        ds = load_dataset("digits")
        return ds.x_train, ds.y_train, ds.x_test, ds.y_test
    from simulations.benchmarks.qcore import load_mnist

    return (*load_mnist("train"), *load_mnist("test"))


def _prepare(flat: dict[str, Any]) -> tuple[Deployment, dict[str, Any]]:
    """The seed's shared products: float model, QCore, random core, deployment with BFNs, device data."""
    from fleet.model.architectures import build_model
    from fleet.qcore.misses import count_misses, sample_core, train_float_recording, update_core
    from fleet.qcore.quant import to_qcore
    from fleet.qcore.stream import make_stream
    from simulations.benchmarks.qcore import FLOAT_LR, dirichlet_split

    seed, bits = flat["seed"], flat["bits"]
    rng, gen = np.random.default_rng([seed, bits]), torch.Generator().manual_seed(seed)
    x_all, y_all, x_test, y_test = _data(flat["quick"])
    eval_idx = torch.from_numpy(rng.choice(len(y_test), min(flat["eval"], len(y_test)), replace=False))
    perm = torch.from_numpy(rng.permutation(len(y_all)))
    n_pub = len(y_all) // 10
    x_pub, y_pub, x_priv, y_priv = x_all[perm[:n_pub]], y_all[perm[:n_pub]], x_all[perm[n_pub:]], y_all[perm[n_pub:]]
    parts = dirichlet_split(y_priv.numpy(), flat["split"], DIRICHLET_ALPHA, rng, flat["min_samples"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        c, h, w = x_all.shape[1:]
        model = build_model("cnn", (c, h, w), int(y_all.max()) + 1)
    counts = count_misses(train_float_recording(model, x_pub, y_pub, flat["float_epochs"], gen, lr=FLOAT_LR,
                                                record_every=RECORD_EVERY))
    cfg = ContinualConfig(**{k: flat[k] for k in (*SETTING, "bits", "codes_only") if k != "calibration"})
    core_size = min(cfg.core_size, n_pub // 2)
    qi, ri = sample_core(counts, core_size, rng), rng.choice(n_pub, core_size, replace=False)
    qcore, rcore = (x_pub[qi], y_pub[qi]), (x_pub[ri], y_pub[ri])
    qmodel = to_qcore(model, bits, x_pub[:128])
    episodes = []  # off-device BFN training cores: QCore-style cores of public data under the same drift family
    for _ in range(flat["episodes"]):
        sub = torch.from_numpy(rng.choice(n_pub, min(n_pub, cfg.tasks * 2 * core_size), replace=False))
        xt, yt = make_stream(x_pub[sub], y_pub[sub], cfg.tasks, cfg.drift, rng, cfg.severity)[
            int(rng.integers(cfg.tasks))]
        ex, ey, _ = update_core(qmodel, (xt[:0], yt[:0]), (xt, yt), rng, size=core_size, recordings=cfg.recordings)
        episodes.append((ex, ey))
    with torch.random.fork_rng():  # the BFNs' initial weights come from torch's global generator: seed it
        torch.manual_seed(seed)
        dep = deploy(qmodel, qcore, replace(cfg, codes_only=True), episodes, gen, init_epochs=flat["init_epochs"])
    devices = [(x_priv[torch.from_numpy(p)], y_priv[torch.from_numpy(p)]) for p in parts[: flat["devices"]]]
    return dep, {"cores": {"qcore": qcore, "random": rcore}, "devices": devices,
                 "test": (x_test[eval_idx], y_test[eval_idx])}


def _device(job: tuple) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    dev, flat, dep, shared = job
    cfg = ContinualConfig(**{k: flat[k] for k in (*SETTING, "bits", "calibration", "codes_only")
                             if k in ContinualConfig.__dataclass_fields__})
    cfg = replace(cfg, core_size=len(shared["cores"]["qcore"][1]))
    core = shared["cores"]["random" if cfg.calibration == "backprop-random" else "qcore"]
    x, y = shared["devices"][dev]
    x_test, y_test = shared["test"]
    rng = np.random.default_rng([flat["seed"], dev, flat["bits"]])  # the same stream for every row
    return [asdict(t) for t in run_device_stream(dep.model, x, y, x_test, y_test, cfg, rng, core=core,
                                                 bfns=dep.bfns)]


def run_qcore_cell(cell: str, seed: int, quick: bool = False, workers: int = 2) -> dict[str, Any]:
    """One QCore (cell, seed): every study device's stream; the record the study stores."""
    flat = qcore_flat(cell, seed, quick)
    key = (seed, flat["bits"], quick)
    t0 = time.perf_counter()
    if key not in _prepared:
        _prepared.clear()  # seed-major: the previous seed's deployments are done with
        _prepared[key] = _prepare(flat)
    prepare_s, t0 = time.perf_counter() - t0, time.perf_counter()
    dep, shared = _prepared[key]
    jobs = [(d, flat, dep, shared) for d in range(len(shared["devices"]))]
    with get_context("fork").Pool(min(workers, len(jobs))) as pool:
        per_device = pool.map(_device, jobs)
    tasks = [t for dev in per_device for t in dev]

    def mean(field: str, rows: list[dict[str, Any]] = tasks) -> float:
        vals = [r[field] for r in rows if r[field] == r[field]]  # NaN-free
        return float(np.mean(vals)) if vals else float("nan")

    last = [dev[-1] for dev in per_device]
    return {"accuracy": mean("accuracy_task"), "accuracy_original": mean("accuracy_original", last),
            "accuracy_core": mean("accuracy_core"), "codes_changed": mean("codes_changed"),
            "flops_per_task": mean("flops"), "flops_calibration_per_task": mean("flops_calibration"),
            "calibration_s_per_task": mean("wall_s"), "wall_s": time.perf_counter() - t0, "prepare_s": prepare_s,
            "per_device_accuracy": [float(np.nanmean([t["accuracy_task"] for t in dev])) for dev in per_device],
            "per_task_accuracy": [float(np.nanmean([dev[t]["accuracy_task"] for dev in per_device]))
                                  for t in range(len(per_device[0]))],
            "bfn_fit": dep.fit, "commit": git_commit(), "config": flat}
