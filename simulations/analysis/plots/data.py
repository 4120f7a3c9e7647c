"""Figures of a run's data and side analyses: label partition, QGT ranking, continual calibration.

Each ``plot_*`` function takes a :class:`~simulations.store.rundir.Run` and a PNG path, and
returns the path, or None when the run holds no data for that figure.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator

from fleet.quant.spec import FLOAT_BITS
from simulations.analysis.plots.common import new_figure, save, subset_indices
from simulations.store.rundir import Run

__all__ = ["plot_partition", "plot_qgt", "plot_continual", "qgt_layers", "qgt_note", "QgtLayers",
           "safetensors_keys", "MAX_DEVICES_SHOWN", "MAX_LAYERS_SHOWN"]

#: Rows of the partition heatmap; more devices are subsampled evenly (and the title says so).
MAX_DEVICES_SHOWN = 40
#: Bars of the QGT ranking; the highest-ranked layers are kept.
MAX_LAYERS_SHOWN = 25
#: The run directory's model files (docs/results.md, docs/quantization.md).
INT_MODEL, FLOAT_MODEL = "model-int.safetensors", "model.safetensors"


def plot_partition(run: Run, path: Path, max_devices: int = MAX_DEVICES_SHOWN) -> Path | None:
    """Label share per device (heatmap) beside each device's training-set size.

    Parameters
    ----------
    max_devices : int
        Rows shown; larger fleets show an evenly spaced subset (default: 40).
    """
    part = run.partition
    if not part or not part.get("devices"):
        return None
    devices = sorted(part["devices"], key=lambda d: int(d["device"]))
    shown = [devices[i] for i in subset_indices(len(devices), max_devices)]
    counts = np.array([d["labels"] for d in shown], dtype=float)  # (D, K)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # (D, K)
    k = counts.shape[1]
    height = max(4.0, 0.18 * len(shown) + 1.8)
    fig, (ax_h, ax_n) = new_figure(10, height, 1, 2, sharey=True,
                                   gridspec_kw={"width_ratios": [3, 1]})
    # Scale colours to the largest share shown so mild skew is still visible.
    img = ax_h.imshow(share, aspect="auto", cmap="viridis", vmin=0,
                      vmax=max(float(share.max()), 1e-9), interpolation="nearest")
    fig.colorbar(img, ax=ax_h, label="Share of the device's training labels", pad=0.01)
    ax_h.set_xticks(range(0, k, max(1, k // 20)))
    ax_h.set_yticks(range(len(shown)), [str(d["device"]) for d in shown],
                    fontsize=7 if len(shown) > 20 else 9)
    ax_h.set(xlabel="Class", ylabel="Device")
    ax_h.set_title("Label distribution per device")
    ax_n.barh(range(len(shown)), [int(d.get("train", 0)) for d in shown], color="C0",
              label="train")
    ax_n.barh(range(len(shown)), [int(d.get("val", 0)) for d in shown],
              left=[int(d.get("train", 0)) for d in shown], color="C1", label="held-out")
    # The key in the title: below the axes it left a band of empty space.
    ax_n.set(xlabel="Samples")
    ax_n.set_title("Local data size\nblue: train, orange: held-out", fontsize=9)
    subset = "" if len(shown) == len(devices) else (
        f" (showing {len(shown)} of {len(devices)} devices, evenly spaced)")
    fig.suptitle(f"Data partition: {len(devices)} devices, {k} classes{subset}")
    return save(fig, path)


@dataclass(frozen=True)
class QgtLayers:
    """The layers of ``qgt.json`` split into quantized and float ones.

    Parameters
    ----------
    quantized : list of dict
        The quantized layers' rows, in rank order (the float layers have no grid to rank on).
    floats : list of str
        Names of the layers left in float.
    source : str
        How float layers were told apart; "" when that is unknown (then ``quantized``
        holds every layer).
    """

    quantized: list[dict[str, Any]]
    floats: list[str]
    source: str


def safetensors_keys(path: Path) -> set[str] | None:
    """Tensor names in a ``.safetensors`` file, read from its JSON header only (None if unreadable)."""
    try:
        with path.open("rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size)) if 0 < size < 100_000_000 else None
    except (OSError, ValueError):
        return None
    return set(header) - {"__metadata__"} if isinstance(header, dict) else None


def _quantized_names(run: Run, names: list[str]) -> tuple[set[str] | None, str]:
    rows = (run.qgt or {}).get("layers", [])
    if rows and all("quantized" in x for x in rows):
        return {str(x["layer"]) for x in rows if x["quantized"]}, "qgt.json's per-layer 'quantized'"
    if rows and all("bits" in x for x in rows):
        return ({str(x["layer"]) for x in rows if int(x["bits"]) < FLOAT_BITS},
                "qgt.json's per-layer bits (32 = float)")
    if int(run.flat_config.get("quant.weight-bits", 0) or 0) >= FLOAT_BITS:
        return set(), f"quant.weight-bits = {FLOAT_BITS} (a float model)"
    for file, markers in ((INT_MODEL, ("weight::qspec", "weight_quant.step")),
                          (FLOAT_MODEL, ("weight_quant.step",))):
        keys = safetensors_keys(run.path / file)
        if keys is not None:
            return ({n for n in names if any(f"{n}.{m}" in keys for m in markers)},
                    f"{file}: a quantized layer has a weight quantizer step")
    return None, ""


def qgt_layers(run: Run) -> QgtLayers | None:
    """``qgt.json``'s layers split into quantized and float (None without ``qgt.json`` layers).

    Float layers are told apart, in order, by a per-layer ``quantized`` or ``bits`` field in
    ``qgt.json``, by ``quant.weight-bits = 32`` (all float), or by the model files: a
    quantized layer ``L`` has ``L.weight::qspec`` in ``model-int.safetensors`` and
    ``L.weight_quant.step`` in both (docs/quantization.md).
    """
    if not run.qgt or not run.qgt.get("layers"):
        return None
    rows = sorted(run.qgt["layers"], key=lambda x: int(x.get("rank", 0)))
    names = [str(x["layer"]) for x in rows]
    quantized, source = _quantized_names(run, names)
    if quantized is None:
        return QgtLayers(rows, [], "")
    return (QgtLayers([x for x in rows if str(x["layer"]) in quantized],
                      [n for n in names if n not in quantized], source))


def qgt_note(run: Run) -> str:
    """The report's text when ``qgt.json`` has no quantized layer to show ("" otherwise)."""
    layers = qgt_layers(run)
    if layers is None or layers.quantized:
        return ""
    return (f"No QGT figure: qgt.json lists {len(layers.floats)} layer(s) "
            f"({', '.join(layers.floats)}), all of them float ({layers.source}), so no "
            "layer has a low-bit grid to rank.")


def plot_qgt(run: Run, path: Path, max_layers: int = MAX_LAYERS_SHOWN) -> Path | None:
    """QGT bottleneck ranking of the quantized layers only: ranking key and MSE, worst on top.

    Returns None without ``qgt.json`` or when every layer is float (:func:`qgt_note` says
    so). When float layers cannot be told apart, every layer is shown and the title says so.
    """
    info = qgt_layers(run)
    if info is None or not info.quantized:
        return None
    layers = info.quantized[:max_layers]
    key = "norm_residual" if all("norm_residual" in x for x in layers) else "residual"
    y = np.arange(len(layers))
    fig, (ax_r, ax_m) = new_figure(10, max(3.5, 0.3 * len(layers) + 2.0), 1, 2, sharey=True)
    for ax, k, color, label in ((ax_r, key, "C3", "normalised QGT residual (the ranking key)"
                                 if key == "norm_residual" else "QGT residual R_b (the ranking key)"),
                                (ax_m, "quant_mse", "C0", "Quantization MSE")):
        vals = np.array([float(x.get(k) or 0.0) for x in layers])  # (L,)
        ax.barh(y, vals, color=color)
        if vals.min() > 0 and vals.max() / vals.min() > 100:
            ax.set_xscale("log")  # residuals span orders of magnitude across layers
        elif vals.max() > 0:
            # Each tick spelled out: matplotlib's shared "1e-5" offset text collides with the label.
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.set_xlim(0, float(vals.max()) * 1.3)
        else:  # every value is 0: no scale to show, only the zeros
            ax.set_xlim(0, 1)
            ax.set_xticks([0], ["0"])
        for yi, v in zip(y, vals, strict=True):  # the value, so a zero bar still reads as 0
            text = "0 (weights exactly on the grid)" if v == 0 else f"{v:.3g}"
            ax.annotate(text, (v, yi), xytext=(3, -3), textcoords="offset points", fontsize=8)
        ax.set(xlabel=f"{label}, lower is better")
        ax.grid(axis="x", alpha=0.3)
    ax_r.set_yticks(y, [f"#{i} {x['layer']}" for i, x in enumerate(layers, start=1)], fontsize=8)
    ax_r.invert_yaxis()  # rank 1 (the worst bottleneck) on top
    ax_r.set_ylabel("Quantized layer (rank among them)")
    n, bits = len(info.quantized), (run.qgt or {}).get("bits", "?")
    what = (f"QGT ranking of the {n} quantized layers at {bits} bits: "
            "top = first candidate for more bits" if n > 1 else
            f"QGT residual of the only quantized layer at {bits} bits "
            "(nothing to rank it against)")
    more = "" if len(layers) == n else f"; top {len(layers)} of {n} shown"
    left = (f"float layers left out: {', '.join(info.floats)}" if info.floats else
            "no float layers" if info.source else
            "which layers are float is unknown (no model file): all layers shown")
    fig.suptitle(textwrap.fill(f"{what}{more}", 110) + "\n" + textwrap.fill(f"({left})", 110),
                 fontsize=10)
    return save(fig, path)


def plot_continual(run: Run, path: Path) -> Path | None:
    """Continual calibration: accuracy per stream task per method, mean over devices with spread.

    The band is the 10th..90th percentile over devices (linearly interpolated, so with
    few devices it lies just inside their min..max).
    """
    if not run.continual:
        return None
    # (method, task) -> accuracies over devices
    cur: dict[tuple[str, int], list[float]] = defaultdict(list)
    orig: dict[tuple[str, int], list[float]] = defaultdict(list)
    for rec in run.continual:
        key = (str(rec.get("calibration")), int(rec["task"]))
        if rec.get("accuracy_task") is not None:
            cur[key].append(100 * float(rec["accuracy_task"]))
        if rec.get("accuracy_original") is not None:
            orig[key].append(100 * float(rec["accuracy_original"]))
    methods = sorted({m for m, _ in cur} | {m for m, _ in orig})
    devices = len({rec.get("device") for rec in run.continual})
    fig, (ax_c, ax_o) = new_figure(11, 4.5, 1, 2, sharey=True)
    for ax, data, title in ((ax_c, cur, "Accuracy on the current stream task"),
                            (ax_o, orig, "Accuracy on the original data (forgetting)")):
        for i, method in enumerate(methods):
            tasks = sorted(t for m, t in data if m == method)
            if not tasks:
                continue
            vals = [np.array(data[(method, t)]) for t in tasks]
            lo = [np.percentile(v, 10) for v in vals]
            hi = [np.percentile(v, 90) for v in vals]
            ax.plot(tasks, [v.mean() for v in vals], "o-", color=f"C{i}", label=method)
            ax.fill_between(tasks, lo, hi, color=f"C{i}", alpha=0.15)
        ax.set(title=title, xlabel="Stream task")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    ax_c.set_ylabel("Accuracy (%)")
    ax_c.legend(title="calibration", fontsize=8)
    fig.suptitle(f"Continual calibration over {devices} devices "
                 "(line: mean; band: 10th-90th percentile over devices)")
    return save(fig, path)
