"""The reproduction study's grid: the papers' tables as cells, and the claims the cells decide.

A *cell* is one run: of the federated recipe for an ``mnist-fed`` cell (:data:`FEDERATED`), of a QCore calibration
for a ``qcore`` cell (:mod:`reproduce_qcore`), and otherwise one single-device run of the papers' protocol (the
learning benchmark's ``single-*`` recipe: one device holding the whole training set, the float reference trained on
it, T = 30 epochs with one Adam and one cosine schedule, the coreset re-selected every R = 10 epochs, KD from the
reference, BatchNorm re-estimated on the coreset) at one bit-width, fraction and *row* (selector, with or without
CLC). On MNIST's 60,000 samples a 1% cell trains on 600 samples for 30 x 10 = 300 optimizer steps (batch 64).

Cell names are ``<dataset>/<bits>/<fraction>/<row>``, e.g. ``mnist/w2a2/1%/quarc``. Tables list cells in the
order the study runs them; a cell in several tables runs once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from simulations.benchmarks.learning import FED, SINGLE

__all__ = ["BITS", "CLAIMS", "Claim", "DATASETS", "FEDERATED", "MAIN_DATASETS", "ROWS", "TABLES", "Table",
           "cell_name", "cell_overrides", "parse_cell"]

#: The single-device protocol of the learning issue, T = 30 epochs, evaluated every 10; the device gets every CPU
#: (as in the single-device benchmark); the end-of-run membership attack and ONNX check, which do not change the
#: accuracy, are off.
PROTOCOL: dict[str, Any] = {**SINGLE, "federation.rounds": 30, "coreset.redraw": False,
                            "ray.num-cpus-per-device": float(os.cpu_count() or 1),
                            "privacy.membership-inference": False, "output.onnx": False}
#: The federated versions of the cells (``mnist-fed/...``): the learning issue's federated recipe (100 devices,
#: Dirichlet(0.3) labels, 10 devices per round, 30 rounds of 5 local epochs, the coreset re-selected at each
#: participation, quantized uploads) with the cell's selector, fraction and CLC in place of its own.
FEDERATED: dict[str, Any] = {**{k: v for k, v in FED.items() if k not in ("coreset.method", "coreset.fraction",
                                                                        "train.clc-beta")},
                             "privacy.membership-inference": False, "output.onnx": False}
BITS: dict[str, dict[str, Any]] = {
    "w2a2": {"quant.weight-bits": 2, "quant.act-bits": 2},
    # No catalogue profile has 3-bit kernels: on rpi4 (the default) the device would train at 4 bits while the
    # global model is 3-bit, whose steps then never adapt (the note of this study). A lab profile that has them:
    "w3a3": {"quant.weight-bits": 3, "quant.act-bits": 3, "devices.custom.lab-3bit.base": "rpi4",
             "devices.custom.lab-3bit.bits": [2, 3, 4, 8, 32], "devices.profiles.lab-3bit": 1.0},
    "w4a4": {"quant.weight-bits": 4, "quant.act-bits": 4},
    "w2": {"quant.weight-bits": 2, "quant.act-bits": 32, "quant.weights-only": True},  # QuaRC's MobileNetV2 rows
}
_CLC = {"train.clc-beta": "auto"}  # beta * L_CLC = 0.5 * L_KD on the first batch (docs/coreset.md)
#: The quantized layers of the study's CNN with ``quant.keep-fp = "none"`` (fleet/model/architectures.py).
BOTTLENECK_LAYERS = ("conv1", "conv2", "conv3", "classifier")
#: row -> overrides: the selector, and CLC where the row has it. ``quarc`` is QuaRC as published (RES + EVS + DS
#: selection and CLC); ``acs+res`` is its selection without CLC.
ROWS: dict[str, dict[str, Any]] = {
    "random": {"coreset.method": "random", "coreset.redraw": True},
    "forgetting": {"coreset.method": "forgetting"},
    "moderate": {"coreset.method": "moderate"},
    "acs": {"coreset.method": "acs"},
    "quarc": {"coreset.method": "quarc", **_CLC},
    "acs+res": {"coreset.method": "quarc"},
    "acs+clc": {"coreset.method": "acs", **_CLC},
    "random+clc": {"coreset.method": "random", "coreset.redraw": True, **_CLC},
    "forgetting+clc": {"coreset.method": "forgetting", **_CLC},
    "moderate+clc": {"coreset.method": "moderate", **_CLC},
    "evs+clc": {"coreset.method": "evs", **_CLC},
    "ds+clc": {"coreset.method": "ds", **_CLC},
    "res+clc": {"coreset.method": "res", **_CLC},
    "evs+res+clc": {"coreset.method": "evs+res", **_CLC},
    "ds+res+clc": {"coreset.method": "ds+res", **_CLC},
    **{f"quarc-beta{e}": {"coreset.method": "quarc", "train.clc-beta": float(10 ** int(e[2:]))}
       for e in ("1e2", "1e3", "1e4", "1e5", "1e6", "1e7")},
    "full": {"coreset.method": "full", "federation.rounds": 3, "federation.eval-every": 1},
    # The cost table's QuaRC: evaluated every epoch, so its time to an accuracy is read to the epoch
    "quarc-timed": {"coreset.method": "quarc", **_CLC, "federation.eval-every": 1},
    # QGT's own mode on the same random 1% as the `random` row (which is LSQ QAT): float training with the grid
    # regulariser, then round-to-nearest (train.qgt-mode = "ptq") on the least-squared-error steps (train.ptq-step
    # = "mse"); lambda = 0 is plain PTQ. The `-lsq-init` rows round on LSQ's initial steps instead (the rule before
    # train.ptq-step existed: their records ran before the key, with that rule).
    **{f"{name}{suffix}": {"coreset.method": "random", "coreset.redraw": True, "train.qgt-mode": "ptq",
                           "train.qgt-lambda": lam, "train.ptq-step": rule}
       for name, lam in (("ptq", 0.0), ("qgt-ptq", 100.0), ("qgt-ptq-1e3", 1000.0))
       for suffix, rule in (("", "mse"), ("-lsq-init", "lsq-init"))},
    # The bottleneck check: QGT-PTQ with every conv/linear layer quantized, then with one layer's weights at 8 bits
    # (run weights-only: the report ranks weights).
    **{f"qgt-ptq-all{suffix}": {"coreset.method": "random", "coreset.redraw": True, "train.qgt-mode": "ptq",
                                "train.qgt-lambda": 100.0, "train.ptq-step": "mse", "quant.keep-fp": "none",
                                "quant.w8-layers": layer}
       for suffix, layer in (("", ""), *((f"+w8-{n}", n) for n in BOTTLENECK_LAYERS))},
}
#: dataset -> its data keys (a relative root is a folder of ../shared/data); ``--dataset``/``--root`` replace those
#: of :data:`MAIN_DATASETS`.
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": {"data.dataset": "npz", "data.root": "mnist"},
    "cifar10": {"data.dataset": "npz", "data.root": "cifar10-jpeg"},
    "mnist-fed": {"data.dataset": "npz", "data.root": "mnist"},
}
#: The datasets ``--dataset``/``--root`` replace (the main cells and their federated versions).
MAIN_DATASETS = ("mnist", "mnist-fed")
FRACTIONS = {"1%": 0.01, "3%": 0.03, "5%": 0.05, "10%": 0.1}


def cell_name(dataset: str, bits: str, fraction: str, row: str) -> str:
    return f"{dataset}/{bits}/{fraction}/{row}"


def parse_cell(name: str) -> tuple[str, str, str, str]:
    dataset, bits, fraction, row = name.split("/")
    return dataset, bits, fraction, row


def cell_overrides(name: str) -> dict[str, Any]:
    """The flat scenario keys of a cell (data keys excepted: the study adds them)."""
    dataset, bits, fraction, row = parse_cell(name)
    base = FEDERATED if dataset.endswith("-fed") else PROTOCOL
    flat = {**base, **BITS[bits], "coreset.fraction": FRACTIONS[fraction], **ROWS[row]}
    if row == "full":
        flat["coreset.fraction"] = 1.0
    return flat


@dataclass(frozen=True)
class Table:
    """One of the papers' tables, as cells of this study."""

    key: str
    title: str
    source: str
    cells: tuple[str, ...]


def _grid(dataset: str, bits: tuple[str, ...], fractions: tuple[str, ...], rows: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(cell_name(dataset, b, f, r) for b in bits for f in fractions for r in rows)


#: The QCore table's rows (simulations/benchmarks/reproduce_qcore.py runs them).
QCORE_ROW_NAMES = ("none", "bfn", "backprop", "backprop-codes", "backprop-random")
SELECTOR_ROWS = ("random", "forgetting", "moderate", "acs", "quarc")
QGT_LSQ_INIT_ROWS = ("ptq-lsq-init", "qgt-ptq-lsq-init", "qgt-ptq-1e3-lsq-init")
#: In the order the study runs them (most decisive first): a budget cut leaves the later tables short.
TABLES: tuple[Table, ...] = (
    Table("ablation", "Ablation at 1%, W2A2: ACS, +RES, +CLC, +RES+CLC", "QuaRC Table III",
          _grid("mnist", ("w2a2",), ("1%",), ("acs", "acs+res", "acs+clc", "quarc"))),
    Table("clc-everywhere", "CLC added to other selectors, 1%, W2A2", "QuaRC Table V",
          _grid("mnist", ("w2a2",), ("1%",), ("random", "random+clc", "forgetting", "forgetting+clc", "moderate",
                                              "moderate+clc", "acs", "acs+clc"))),
    Table("table1-1pct", "Selectors at 1% (MNIST)", "QuaRC Table I, 1% column",
          _grid("mnist", ("w2a2", "w4a4", "w3a3", "w2"), ("1%",), SELECTOR_ROWS)),
    Table("table1-10pct", "Selectors at 10% (MNIST)", "QuaRC Table I, 10% column; ACS §2.4",
          _grid("mnist", ("w2a2", "w4a4", "w3a3", "w2"), ("10%",), SELECTOR_ROWS)),
    Table("metrics", "Selection metrics with CLC, 1%, W2A2", "QuaRC Table IV",
          _grid("mnist", ("w2a2",), ("1%",), ("evs+clc", "ds+clc", "res+clc", "acs+clc", "evs+res+clc",
                                              "ds+res+clc", "quarc"))),
    Table("beta", "CLC weight beta, QuaRC at 1%, W2A2", "QuaRC §1 (beta); ALGORITHMS.md defaults",
          _grid("mnist", ("w2a2",), ("1%",), ("quarc-beta1e2", "quarc-beta1e3", "quarc-beta1e4", "quarc-beta1e5",
                                              "quarc-beta1e6", "quarc-beta1e7", "quarc"))),
    Table("qgt", "QGT in its own mode against plain PTQ and LSQ QAT (random 1% coreset)",
          "ALGORITHMS.md §3 (QGT)", _grid("mnist", ("w2a2", "w4a4"), ("1%",), ("random", "ptq", "qgt-ptq",
                                                                              "qgt-ptq-1e3", *QGT_LSQ_INIT_ROWS))),
    Table("bottleneck", "QGT's bottleneck report against giving one layer 8-bit weights (QGT-PTQ, every layer's "
          "weights at 2 bits, activations float, random 1%)", "ALGORITHMS.md §3.1", _grid("mnist", ("w2",), ("1%",), (
              "qgt-ptq-all", *(f"qgt-ptq-all+w8-{n}" for n in BOTTLENECK_LAYERS)))),
    Table("qcore", "QCore: continual calibration under drift, where back-propagation moves codes",
          "ALGORITHMS.md §4 (QCore)", tuple(f"qcore/{b}/drift/{r}" for b in ("w4", "w2") for r in QCORE_ROW_NAMES)),
    Table("cost", "Cost: full-data QAT against QuaRC at 10%, W2A2", "QuaRC timing",
          _grid("mnist", ("w2a2",), ("10%",), ("quarc", "quarc-timed"))
          + _grid("mnist", ("w2a2",), ("1%",), ("full",))),
    Table("federated", "Selectors federated: 100 devices of MNIST, Dirichlet(0.3), 10 per round, 30 rounds",
          "issue 13: does a single-device effect survive non-IID federation?",
          _grid("mnist-fed", ("w2a2", "w4a4"), ("1%", "10%"), ("random", "acs", "quarc"))),
    Table("table1-fractions", "Selectors at 3% and 5% (MNIST)", "QuaRC Table I, 3% and 5% columns",
          _grid("mnist", ("w2a2", "w4a4", "w3a3", "w2"), ("3%", "5%"), SELECTOR_ROWS)),
    Table("cifar10", "Selectors at 1% and 10% (CIFAR-10)", "QuaRC Table I analog on CIFAR-10",
          _grid("cifar10", ("w2a2", "w4a4"), ("1%", "10%"), SELECTOR_ROWS)),
)


@dataclass(frozen=True)
class Claim:
    """A claim of ALGORITHMS.md and the cells that decide it: ``better`` beats each of ``against``, seed by seed."""

    key: str
    source: str
    text: str
    better: str
    against: tuple[str, ...]
    paper: str = ""  # the paper's numbers for the same comparison
    tags: tuple[str, ...] = field(default=())


def _c(bits: str, frac: str, row: str) -> str:
    return cell_name("mnist", bits, frac, row)


def _federated(claim: Claim) -> Claim:
    """A single-device claim asked again of the federated cells."""
    fed = [cell_name("mnist-fed", *parse_cell(c)[1:]) for c in (claim.better, *claim.against)]
    return Claim(f"{claim.key}-federated", "issue 13 (federated version of " + claim.key + ")",
                 f"{claim.text}, federated (100 devices, Dirichlet 0.3)", fed[0], tuple(fed[1:]),
                 "no number (the papers are single-device)")


_QUARC_ACS_2BIT = Claim("quarc-beats-acs-2bit-1pct", "ALGORITHMS.md §1.8, Table I/II", "QuaRC beats ACS at 1%, 2 bits",
                        _c("w2a2", "1%", "quarc"), (_c("w2a2", "1%", "acs"),),
                        "+5.72 (2w2a ImageNet), +9.52 (2w CIFAR-100)")
_QUARC_ACS_4BIT = Claim("quarc-beats-acs-4bit-1pct", "ALGORITHMS.md §1.8, Table I/II", "QuaRC beats ACS at 1%, 4 bits",
                        _c("w4a4", "1%", "quarc"), (_c("w4a4", "1%", "acs"),),
                        "+1.87 (4w4a ImageNet), +1.88 (4w CIFAR-100)")
_ACS_RANDOM_4BIT = Claim("acs-beats-random-4bit-10pct", "ALGORITHMS.md §2.4", "ACS beats random at 10%, 4 bits",
                         _c("w4a4", "10%", "acs"), (_c("w4a4", "10%", "random"),), "+4.24 (4w4a ImageNet)")
CLAIMS: tuple[Claim, ...] = (
    _QUARC_ACS_2BIT,
    _QUARC_ACS_4BIT,
    *(Claim(f"quarc-beats-acs-2bit-{f[:-1]}pct", "ALGORITHMS.md §1.8, Table I/II", f"QuaRC beats ACS at {f}, 2 bits",
            _c("w2a2", f, "quarc"), (_c("w2a2", f, "acs"),), paper)
      for f, paper in (("3%", "+2.54 (2w2a ImageNet), +4.90 (2w CIFAR-100)"),
                       ("5%", "+2.42 (2w2a ImageNet), +3.71 (2w CIFAR-100)"))),
    Claim("quarc-beats-acs-3bit-1pct", "ALGORITHMS.md §1.8, Table I/II", "QuaRC beats ACS at 1%, 3 bits",
          _c("w3a3", "1%", "quarc"), (_c("w3a3", "1%", "acs"),), "+2.82 (3w3a ImageNet), +3.71 (3w CIFAR-100)"),
    Claim("quarc-beats-acs-w2-1pct", "ALGORITHMS.md §1.8, Table I", "QuaRC beats ACS at 1%, weight-only 2 bits",
          _c("w2", "1%", "quarc"), (_c("w2", "1%", "acs"),), "+9.52 (2w32a CIFAR-100)"),
    Claim("quarc-beats-baselines-2bit-1pct", "ALGORITHMS.md §1.8, Tables I-II", "QuaRC beats every baseline at "
          "1%, 2 bits", _c("w2a2", "1%", "quarc"), tuple(_c("w2a2", "1%", r) for r in SELECTOR_ROWS[:4]),
          "+5.7 to +24.1 (2w2a ImageNet)"),
    Claim("clc-supplies-most", "ALGORITHMS.md §1.8, Table III", "CLC supplies most of QuaRC's gain over ACS: "
          "ACS+CLC beats ACS+RES", _c("w2a2", "1%", "acs+clc"), (_c("w2a2", "1%", "acs+res"),),
          "55.25 vs 48.77 (2w CIFAR-100)"),
    Claim("res-adds", "ALGORITHMS.md §1.8, Table III", "RES adds to ACS's selection (no CLC)",
          _c("w2a2", "1%", "acs+res"), (_c("w2a2", "1%", "acs"),), "+1.93 (2w), +0.92 (3w), +0.20 (4w)"),
    Claim("res-adds-with-clc", "ALGORITHMS.md §1.8, Table III", "RES adds to ACS+CLC",
          _c("w2a2", "1%", "quarc"), (_c("w2a2", "1%", "acs+clc"),), "+1.11 (2w), +0.37 (3w), +0.31 (4w)"),
    *(Claim(f"clc-helps-{r}", "ALGORITHMS.md §1.8, Table V", f"CLC helps {r}", _c("w2a2", "1%", f"{r}+clc"),
            (_c("w2a2", "1%", r),), paper) for r, paper in (("random", "+8.75"), ("forgetting", "+6.56"),
                                                            ("moderate", "+11.26"), ("acs", "+8.41"))),
    Claim("all-metrics-best", "ALGORITHMS.md §1.8, Table IV", "All three metrics beat each one alone (with CLC)",
          _c("w2a2", "1%", "quarc"), tuple(_c("w2a2", "1%", r) for r in ("evs+clc", "ds+clc", "res+clc")),
          "56.36 vs 53.87 / 54.05 / 55.41"),
    _ACS_RANDOM_4BIT,
    Claim("acs-beats-random-2bit-10pct", "ALGORITHMS.md §2.4", "ACS beats random at 10%, 2 bits",
          _c("w2", "10%", "acs"), (_c("w2", "10%", "random"),), "+1.45 (2w CIFAR-100, plot)"),
    Claim("acs-beats-baselines-10pct", "ALGORITHMS.md §2.4", "ACS beats forgetting and moderate at 10%, 4 bits",
          _c("w4a4", "10%", "acs"), (_c("w4a4", "10%", "forgetting"), _c("w4a4", "10%", "moderate")),
          "all baselines roughly at random's level, below ACS"),
    *(Claim(f"qgt-beats-ptq-{b}", "ALGORITHMS.md §3.1", f"QGT's regulariser before round-to-nearest beats plain "
            f"PTQ, {b.upper()}", _c(b, "1%", "qgt-ptq"), (_c(b, "1%", "ptq"),), "no number: the paper's contrast "
            "(2-bit VWW model within 3% of float)")
      for b in ("w2a2", "w4a4")),
    *(c for b in ("w4", "w2") for c in (
        Claim(f"qcore-bp-gains-{b}", "ALGORITHMS.md §4.4-4.5 (the setting's premise)", f"Back-propagation on the "
              f"QCore gains accuracy under drift, {b.upper()}", f"qcore/{b}/drift/backprop", (f"qcore/{b}/drift/none",),
              "no number (the paper's results were not available)"),
        Claim(f"qcore-bfn-gains-{b}", "ALGORITHMS.md §4.1, §4.5", f"The bit-flipping network gains accuracy under "
              f"drift without back-propagation, {b.upper()}", f"qcore/{b}/drift/bfn", (f"qcore/{b}/drift/none",),
              "no number (abstract: outperforms strong baselines)"),
        Claim(f"qcore-core-beats-random-{b}", "ALGORITHMS.md §4.3", f"The QCore beats a random core of the same "
              f"size for back-propagation calibration, {b.upper()}", f"qcore/{b}/drift/backprop",
              (f"qcore/{b}/drift/backprop-random",), "no number"))),
    *(_federated(c) for c in (_QUARC_ACS_2BIT, _QUARC_ACS_4BIT, _ACS_RANDOM_4BIT)),
    Claim("quarc-gap-shrinks", "ALGORITHMS.md §1.8, Table I/VI", "QuaRC still beats ACS at 10%, 2 bits (the "
          "paper: by less than at 1%; the shrinking itself is not tested)", _c("w2a2", "10%", "quarc"),
          (_c("w2a2", "10%", "acs"),),
          "+0.77 (2w2a ImageNet), +2.32 (2w CIFAR-100)"),
)
