"""Figures of a run's data and side analyses: label partition, QGT ranking, continual calibration.

Each ``plot_*`` function takes a :class:`~simulations.store.rundir.Run` and a PNG path, and
returns the path, or None when the run holds no data for that figure.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from simulations.analysis.plots.common import new_figure, save, subset_indices
from simulations.store.rundir import Run

__all__ = ["plot_partition", "plot_qgt", "plot_continual", "MAX_DEVICES_SHOWN", "MAX_LAYERS_SHOWN"]

#: Rows of the partition heatmap; more devices are subsampled evenly (and the title says so).
MAX_DEVICES_SHOWN = 40
#: Bars of the QGT ranking; the highest-ranked layers are kept.
MAX_LAYERS_SHOWN = 25


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
              left=[int(d.get("train", 0)) for d in shown], color="C1", label="val")
    ax_n.set(xlabel="Samples", title="Local data size")
    ax_n.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8)
    subset = "" if len(shown) == len(devices) else (
        f" (showing {len(shown)} of {len(devices)} devices, evenly spaced)")
    fig.suptitle(f"Data partition: {len(devices)} devices, {k} classes{subset}")
    return save(fig, path)


def plot_qgt(run: Run, path: Path, max_layers: int = MAX_LAYERS_SHOWN) -> Path | None:
    """QGT bottleneck ranking: per-layer residual and quantization MSE, worst on top."""
    if not run.qgt or not run.qgt.get("layers"):
        return None
    layers = sorted(run.qgt["layers"], key=lambda x: int(x.get("rank", 0)))[:max_layers]
    names = [str(x["layer"]) for x in layers]
    y = np.arange(len(layers))
    fig, (ax_r, ax_m) = new_figure(10, max(3.5, 0.3 * len(layers) + 1.5), 1, 2, sharey=True)
    for ax, key, color, label in ((ax_r, "residual", "C3", "QGT residual R_b"),
                                  (ax_m, "quant_mse", "C0", "Quantization MSE")):
        vals = np.array([float(x.get(key) or 0.0) for x in layers])  # (L,)
        ax.barh(y, vals, color=color)
        positive = vals[vals > 0]
        if positive.size and positive.max() / positive.min() > 100:
            ax.set_xscale("log")  # residuals span orders of magnitude across layers
        else:
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
            ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set(xlabel=f"{label} (lower is better)")
        ax.grid(axis="x", alpha=0.3)
    ax_r.set_yticks(y, [f"#{x.get('rank', '?')} {n}" for x, n in zip(layers, names, strict=True)],
                    fontsize=8)
    ax_r.invert_yaxis()  # rank 1 (the worst bottleneck) on top
    ax_r.set_ylabel("Layer (rank)")
    more = "" if len(layers) == len(run.qgt["layers"]) else (
        f", top {len(layers)} of {len(run.qgt['layers'])} layers")
    fig.suptitle(f"QGT bottleneck ranking at {run.qgt.get('bits', '?')} bits{more}: "
                 "top layers are candidates for more bits")
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
