"""Figures of one run's rounds and devices (accuracy, uplink, device spread, time, status).

Each ``plot_*`` function takes a :class:`~simulations.store.rundir.Run` and a PNG path, and
returns the path, or None when the run holds no data for that figure. Round 0 (the
starting model, before any device trained) is the first point of every per-round series
that has a value for it. Device statistics come from :mod:`simulations.analysis.devices`,
the same source as the report's table and captions.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from simulations.analysis.devices import (
    MIN_DEVICES,
    MIN_VAL_SAMPLES,
    WORST_SHARE,
    device_accuracy,
    eval_sizes,
    round_spread,
    size_range,
)
from simulations.analysis.plots.common import STATUS_COLORS, byte_unit, new_figure, pct, save
from simulations.store.rundir import Run

__all__ = [
    "plot_accuracy_rounds",
    "plot_accuracy_uplink",
    "plot_device_accuracy",
    "plot_time_status",
    "evaluated_rounds",
    "p10_note",
]


def _fp_reference(run: Run) -> float | None:
    fp = (run.summary or {}).get("fp_reference_accuracy")
    return None if fp is None else float(fp)


def evaluated_rounds(run: Run) -> list[dict[str, Any]]:
    """The rounds with a central accuracy, in round order (round 0 first when recorded)."""
    rows = [r for r in run.rounds if r.get("accuracy") is not None]  # eval-every skips some
    return sorted(rows, key=lambda r: int(r["round"]))


def p10_note(run: Run, *, min_val_samples: int = MIN_VAL_SAMPLES,
             min_devices: int = MIN_DEVICES) -> str:
    """Why the per-round 10th percentile is missing in some or all rounds ("" when it is not)."""
    spread = [s for s in round_spread(run, min_val_samples=min_val_samples,
                                      min_devices=min_devices) if s.n]
    missing = [s for s in spread if s.p10 is None]
    if not spread or not missing:
        return ""
    sizes = eval_sizes(run)
    devs = {int(d["device"]) for d in run.devices if d.get("status") == "ok"}
    most = max(s.n_qualified for s in missing)
    where = "any round" if len(missing) == len(spread) else f"{len(missing)} of {len(spread)} rounds"
    had = "none had" if most == 0 else f"at most {most} had"
    return (f"10th percentile not drawn in {where}: it needs >= {min_devices} completed devices "
            f"with >= {min_val_samples} held-out samples, and {had} that there "
            f"(held-out sets here: {size_range(sizes, devs)}).")


def plot_accuracy_rounds(run: Run, path: Path, *, min_val_samples: int = MIN_VAL_SAMPLES,
                         min_devices: int = MIN_DEVICES) -> Path | None:
    """Global-model test accuracy per round from round 0, the on-device mean and 10th percentile.

    Parameters
    ----------
    min_val_samples : int
        A device enters the 10th percentile only with at least this many held-out samples
        (default: :data:`~simulations.analysis.devices.MIN_VAL_SAMPLES`, 20).
    min_devices : int
        A round's percentile is drawn only when at least this many devices qualify
        (default: :data:`~simulations.analysis.devices.MIN_DEVICES`, 10).
    """
    if not run.rounds:
        return None
    fig, ax = new_figure(8, 5)
    evaluated = evaluated_rounds(run)
    start = (" from round 0, the starting model before any training"
             if evaluated and int(evaluated[0]["round"]) == 0 else "")
    ax.plot([r["round"] for r in evaluated], [pct(r["accuracy"]) for r in evaluated], "o-",
            color="C0", label=f"global model, central test set{start}")
    spread = round_spread(run, min_val_samples=min_val_samples, min_devices=min_devices)
    with_mean = [s for s in spread if s.mean is not None]
    if with_mean:
        ns = sorted({s.n for s in with_mean})
        n_text = str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
        held = size_range(eval_sizes(run), {int(d["device"]) for d in run.devices
                                            if d.get("status") == "ok" and d.get("accuracy") is not None})
        ax.plot([s.round for s in with_mean], [pct(s.mean) for s in with_mean], "s--",
                color="C1", ms=4, label=f"on-device, mean over each round's completed devices "
                f"(n = {n_text} devices; held-out sets: {held})")
    with_p10 = [s for s in spread if s.p10 is not None]
    if with_p10:
        ax.plot([s.round for s in with_p10], [pct(s.p10) for s in with_p10], "v:", color="C3",
                ms=5, label=f"on-device, 10th percentile of devices with >= {min_val_samples} "
                f"held-out samples (n per point)")
        for s in with_p10:
            ax.annotate(f"n={s.n_qualified}", (s.round, pct(s.p10)), textcoords="offset points",
                        xytext=(0, -12), ha="center", fontsize=7, color="C3")
    fp = _fp_reference(run)
    if fp is not None:
        ax.axhline(100 * fp, color="k", ls="--", lw=1, label=f"FP reference ({100 * fp:.1f}%)")
    ax.set(xlabel="Round (0 = the starting model)", ylabel="Accuracy (%)")
    note = p10_note(run, min_val_samples=min_val_samples, min_devices=min_devices)
    fig.suptitle("Accuracy per round")
    if note:
        ax.set_title(textwrap.fill(note, 110), fontsize=8, color="C3")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    # Below the axes: curves can pass through any corner.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, fontsize=8)
    return save(fig, path)


def plot_accuracy_uplink(run: Run, path: Path) -> Path | None:
    """Global-model accuracy against cumulative uplink bytes, from round 0 (no bytes yet)."""
    rows = sorted(run.rounds, key=lambda r: int(r["round"]))
    if not rows:
        return None
    cum = np.cumsum([float(r.get("uplink_bytes") or 0) for r in rows])  # (R,)
    keep = [i for i, r in enumerate(rows) if r.get("accuracy") is not None]
    if not keep:
        return None
    div, unit = byte_unit(float(cum[-1]))
    x = cum[keep] / div
    acc = [pct(rows[i]["accuracy"]) for i in keep]
    fig, ax = new_figure()
    ax.plot(x, acc, "o-", color="C0", label="global model (evaluated rounds)")
    # Label a few rounds so the reader can map bytes back to time.
    for j in sorted({0, len(keep) // 2, len(keep) - 1}):
        ax.annotate(f"round {rows[keep[j]]['round']}", (x[j], acc[j]),
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


def plot_device_accuracy(run: Run, path: Path, *, min_val_samples: int = MIN_VAL_SAMPLES,
                         min_devices: int = MIN_DEVICES, share: float = WORST_SHARE) -> Path | None:
    """Spread of on-device accuracy across devices, with the worst ``share`` marked.

    The mean is over all devices; the 10th percentile and the worst devices only over
    devices with at least ``min_val_samples`` held-out samples, when ``min_devices`` of
    them qualify (:class:`~simulations.analysis.devices.DeviceAccuracy`, the report
    table's source too).
    """
    da = device_accuracy(run, min_val_samples=min_val_samples, min_devices=min_devices,
                         share=share)
    if not da.accuracy:
        return None
    ranked = da.ranked
    qualified = set(da.qualified)
    worst = da.worst
    acc = 100 * np.array([da.accuracy[d] for d in ranked])  # (D,)
    big = np.array([d in qualified for d in ranked])  # (D,)
    fig, (ax_h, ax_r) = new_figure(12, 5, 1, 2)
    bins = np.linspace(0, 100, 21)
    ax_h.hist([acc[big], acc[~big]], bins=bins, stacked=True, color=["C0", "0.7"],
              label=[f">= {min_val_samples} held-out samples ({int(big.sum())})",
                     f"< {min_val_samples} held-out samples ({int((~big).sum())})"])
    ax_h.axvline(100 * da.mean, color="k", ls=":", label=f"mean of all {len(acc)} ({100 * da.mean:.1f}%)")
    if da.p10 is not None:
        ax_h.axvline(100 * da.p10, color="C3", ls="--",
                     label=f"10th percentile of the {len(qualified)} ({100 * da.p10:.1f}%)")
    ax_h.set(title="Histogram", xlabel="On-device accuracy (%)", ylabel="Devices", xlim=(-2, 102))
    ax_h.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_h.legend(loc="upper left", fontsize=8)
    rank = np.arange(1, len(acc) + 1)
    red = np.array([d in worst for d in ranked])  # (D,)
    ax_r.scatter(rank[big & ~red], acc[big & ~red], c="C0", s=16)
    ax_r.scatter(rank[red], acc[red], c="C3", s=20)
    ax_r.scatter(rank[~big], acc[~big], facecolors="none", edgecolors="0.5", s=16)
    if da.p10 is not None:
        ax_r.axhline(100 * da.p10, color="C3", ls="--", lw=1)
    handles = [Line2D([], [], ls="", marker="o", color="C0", label=f">= {min_val_samples} held-out samples"),
               Line2D([], [], ls="", marker="o", mfc="none", color="0.5",
                      label=f"< {min_val_samples} held-out samples "
                            f"({size_range(da.sizes, [d for d in ranked if d not in qualified])}), "
                            "not in the percentile or worst list")]
    if worst:
        names = ", ".join(str(d) for d in worst)
        handles.insert(1, Line2D([], [], ls="", marker="o", color="C3",
                                 label=textwrap.fill(f"worst {100 * share:g}%: {len(worst)} of "
                                                     f"{len(qualified)} devices ({names})", 60)))
        title = textwrap.fill(f"Devices sorted, worst first; red: the worst {100 * share:g}% of "
                              f"the {len(qualified)} with >= {min_val_samples} held-out samples", 75)
    else:
        title = textwrap.fill("No 10th percentile or worst devices: " + da.not_ranked_reason(), 80)
    ax_r.legend(handles=handles, loc="lower right", fontsize=8)
    ax_r.set(title=title, xlabel="Devices sorted by accuracy (worst first)",
             ylabel="On-device accuracy (%)",
             ylim=(-5, 105))
    ax_r.title.set_fontsize(9)
    ax_r.grid(alpha=0.3)
    fig.suptitle(f"On-device accuracy of the received global model: {len(acc)} devices, "
                 "each in the last round it reported one")
    return save(fig, path)


def plot_time_status(run: Run, path: Path) -> Path | None:
    """Per-round simulated (and wall) time, and device status counts as stacked bars, from round 0."""
    if not run.rounds:
        return None
    rows = sorted(run.rounds, key=lambda r: int(r["round"]))
    rounds = np.array([r["round"] for r in rows])  # (R,)
    fig, (ax_t, ax_s) = new_figure(8, 6.5, 2, 1, sharex=True)
    ax_t.bar(rounds, [float(r.get("sim_time_s") or 0) for r in rows], color="C0",
             label="simulated")
    ax_t.set(title="Round time (round 0: the starting model is evaluated, no device trains)",
             ylabel="Simulated time (s)")
    ax_t.title.set_fontsize(10)
    ax_w = ax_t.twinx()
    ax_w.plot(rounds, [float(r.get("wall_s") or 0) for r in rows], "o-", color="C1",
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
                           for r in rows])  # (R,)
        if counts.any():
            ax_s.bar(rounds, counts, bottom=bottom, color=color, label=status)
            bottom += counts
    ax_s.set(title="Device status per round", xlabel="Round", ylabel="Devices sampled")
    ax_s.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_s.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_s.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="status")
    return save(fig, path)
