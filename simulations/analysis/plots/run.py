"""Figures of one run's rounds and devices (accuracy, uplink, device spread, time, status).

Each ``plot_*`` function takes a :class:`~simulations.store.rundir.Run` and a PNG path, and
returns the path, or None when the run holds no data for that figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from simulations.analysis.plots.common import STATUS_COLORS, byte_unit, new_figure, pct, save
from simulations.store.rundir import Run

__all__ = [
    "plot_accuracy_rounds",
    "plot_accuracy_uplink",
    "plot_device_accuracy",
    "plot_time_status",
    "last_device_accuracy",
    "worst_devices",
]


def _fp_reference(run: Run) -> float | None:
    fp = (run.summary or {}).get("fp_reference_accuracy")
    return None if fp is None else float(fp)


def plot_accuracy_rounds(run: Run, path: Path) -> Path | None:
    """Global-model test accuracy per round, the on-device mean/p10, and the FP reference."""
    if not run.rounds:
        return None
    fig, ax = new_figure()
    rounds = [r["round"] for r in run.rounds]
    evaluated = [r for r in run.rounds if r.get("accuracy") is not None]  # federation.eval-every skips some
    ax.plot([r["round"] for r in evaluated], [pct(r["accuracy"]) for r in evaluated], "o-", color="C0",
            label="global model, central test set (round 0: the starting model)")
    dev_mean = [pct(r.get("device_accuracy_mean")) for r in run.rounds]
    if not all(math.isnan(v) for v in dev_mean):
        ax.plot(rounds, dev_mean, "s--", color="C1", ms=4, label="on-device held-out, mean")
        ax.plot(rounds, [pct(r.get("device_accuracy_p10")) for r in run.rounds], "v:",
                color="C3", ms=4, label="on-device held-out, 10th percentile")
    fp = _fp_reference(run)
    if fp is not None:
        ax.axhline(100 * fp, color="k", ls="--", lw=1, label=f"FP reference ({100 * fp:.1f}%)")
    ax.set(title="Accuracy per round", xlabel="Round", ylabel="Accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    # Below the axes: curves can pass through any corner.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9)
    return save(fig, path)


def plot_accuracy_uplink(run: Run, path: Path) -> Path | None:
    """Global-model accuracy against cumulative uplink bytes (the communication cost)."""
    if not run.rounds:
        return None
    cum = np.cumsum([float(r.get("uplink_bytes") or 0) for r in run.rounds])  # (R,)
    div, unit = byte_unit(float(cum[-1]))
    acc = [pct(r.get("accuracy")) for r in run.rounds]
    fig, ax = new_figure()
    ax.plot(cum / div, acc, "o-", color="C0", label="global model")
    # Label a few rounds so the reader can map bytes back to time.
    for i in sorted({0, len(cum) // 2, len(cum) - 1}):
        ax.annotate(f"round {run.rounds[i]['round']}", (cum[i] / div, acc[i]),
                    textcoords="offset points", xytext=(4, -12), fontsize=8)
    fp = _fp_reference(run)
    if fp is not None:
        ax.axhline(100 * fp, color="k", ls="--", lw=1, label=f"FP reference ({100 * fp:.1f}%)")
    ax.set(title="Accuracy against communication", xlabel=f"Cumulative uplink ({unit})",
           ylabel="Accuracy (%)")
    ax.grid(alpha=0.3)
    # Below the axes: curves can pass through any corner.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9)
    return save(fig, path)


def last_device_accuracy(run: Run) -> dict[int, float]:
    """Each device's on-device accuracy in the last round it reported one (device -> 0..1)."""
    last: dict[int, tuple[int, float]] = {}
    for rec in run.devices:
        acc = rec.get("accuracy")
        if acc is None:
            continue
        dev, rnd = int(rec["device"]), int(rec["round"])
        if dev not in last or rnd >= last[dev][0]:
            last[dev] = (rnd, float(acc))
    return {dev: acc for dev, (_, acc) in last.items()}


def worst_devices(per_device: dict[int, float], share: float = 0.1) -> list[int]:
    """The ``ceil(share * n)`` devices with the lowest accuracy, worst first (at least one)."""
    ranked = sorted(per_device, key=lambda d: (per_device[d], d))
    return ranked[: max(1, math.ceil(share * len(ranked)))] if ranked else []


def plot_device_accuracy(run: Run, path: Path) -> Path | None:
    """Spread of on-device accuracy across devices, with the worst 10% marked."""
    per_device = last_device_accuracy(run)
    if not per_device:
        return None
    devs = sorted(per_device, key=lambda d: (per_device[d], d))  # worst first
    acc = 100 * np.array([per_device[d] for d in devs])  # (D,)
    p10 = float(np.percentile(acc, 10))
    worst = worst_devices(per_device)
    n_worst = len(worst)
    fig, (ax_h, ax_r) = new_figure(11, 4.5, 1, 2)
    ax_h.hist(acc, bins=min(30, max(5, len(acc) // 3)), color="C0", alpha=0.8)
    ax_h.axvspan(acc.min() - 0.5, p10, color="C3", alpha=0.15, label="worst 10% of devices")
    ax_h.axvline(p10, color="C3", ls="--", label=f"10th percentile ({p10:.1f}%)")
    ax_h.axvline(acc.mean(), color="k", ls=":", label=f"mean ({acc.mean():.1f}%)")
    ax_h.set(title="Histogram", xlabel="On-device accuracy (%)", ylabel="Devices")
    ax_h.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_h.legend(loc="upper left", fontsize=8)
    rank = np.arange(1, len(acc) + 1)
    colors = ["C3" if i < n_worst else "C0" for i in range(len(acc))]
    ax_r.scatter(rank, acc, c=colors, s=14)
    ax_r.axhline(p10, color="C3", ls="--", lw=1)
    names = ", ".join(str(d) for d in worst[:5]) + ("" if n_worst <= 5 else ", ...")
    plural = "s" if n_worst > 1 else ""
    ax_r.set(title=f"Devices ranked; red: worst 10% ({n_worst} device{plural}: {names})",
             xlabel="Device rank (worst first)", ylabel="On-device accuracy (%)")
    ax_r.title.set_fontsize(9)
    ax_r.grid(alpha=0.3)
    fig.suptitle(f"On-device accuracy of the received global model, last round each of "
                 f"{len(acc)} devices took part")
    return save(fig, path)


def plot_time_status(run: Run, path: Path) -> Path | None:
    """Per-round simulated (and wall) time, and device status counts as stacked bars."""
    if not run.rounds:
        return None
    rounds = np.array([r["round"] for r in run.rounds])  # (R,)
    fig, (ax_t, ax_s) = new_figure(8, 6.5, 2, 1, sharex=True)
    ax_t.bar(rounds, [float(r.get("sim_time_s") or 0) for r in run.rounds], color="C0",
             label="simulated")
    ax_t.set(title="Round time", ylabel="Simulated time (s)")
    ax_w = ax_t.twinx()
    ax_w.plot(rounds, [float(r.get("wall_s") or 0) for r in run.rounds], "o-", color="C1",
              ms=3, label="wall")
    ax_w.set_ylabel("Wall time (s)")
    ax_w.set_ylim(bottom=0)
    handles = ax_t.get_legend_handles_labels()[0] + ax_w.get_legend_handles_labels()[0]
    # Outside the axes: bars fill the panel, so any inside corner would hide data.
    ax_t.legend(handles, ["simulated\n(slowest accepted\ndevice)", "wall"], loc="upper left",
                bbox_to_anchor=(1.12, 1.0), fontsize=8, title="round time")
    bottom = np.zeros(len(rounds))  # (R,)
    for status, color in STATUS_COLORS.items():
        counts = np.array([float((r.get("status_counts") or {}).get(status, 0))
                           for r in run.rounds])  # (R,)
        if counts.any():
            ax_s.bar(rounds, counts, bottom=bottom, color=color, label=status)
            bottom += counts
    ax_s.set(title="Device status per round", xlabel="Round", ylabel="Devices sampled")
    ax_s.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_s.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_s.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="status")
    return save(fig, path)
