"""Figures comparing settings across runs: mean over seeds with 95% t intervals.

Every function takes the groups of :func:`simulations.analysis.compare.group_results` (in table
order, so the ``#`` numbers on the figures match ``compare.md``) and a PNG path, and
returns the path, or None when there is nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from simulations.analysis.plots.common import byte_unit, new_figure, save

if TYPE_CHECKING:  # compare imports this module; the types are only for the checker
    from simulations.analysis.compare import Group

__all__ = ["FRACTION_KEY", "plot_accuracy_by_setting", "plot_accuracy_vs_uplink",
           "plot_accuracy_vs_fraction"]

#: The config key of the coreset fraction (fleet.config.scenario: ``[coreset] fraction``).
FRACTION_KEY = "coreset.fraction"
#: Settings above this count are labelled only by their ``#`` number on the figures.
MAX_LEGEND = 10


def _err(half: float) -> float:
    return 0.0 if math.isnan(half) else half


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plot_accuracy_by_setting(groups: list[Group], path: Path) -> Path | None:
    """Final accuracy per setting as horizontal bars with the 95% interval over seeds."""
    rows = [(i, g) for i, g in enumerate(groups, start=1) if g.stat("final_accuracy")[2]]
    if not rows:
        return None
    fig, ax = new_figure(9, max(3.0, 0.45 * len(rows) + 1.8))
    right = 0.0
    for y, (i, g) in enumerate(rows):
        mean, half, n = g.stat("final_accuracy")
        end = 100 * (mean + _err(half))
        right = max(right, end)
        ax.barh(y, 100 * mean, xerr=100 * _err(half), color=f"C{(i - 1) % 10}", capsize=4,
                alpha=0.85)
        # Text after the error bar so the interval stays visible.
        ax.annotate(f"{100 * mean:.1f}% (n={n})", (end, y), xytext=(5, -3),
                    textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(rows)), [f"#{i} {_short(g.label)}" for i, g in rows], fontsize=8)
    ax.invert_yaxis()
    fps = [g.stat("fp_reference_accuracy")[0] for _, g in rows]
    fps = [f for f in fps if not math.isnan(f)]
    if fps and max(fps) - min(fps) < 1e-9:
        ax.axvline(100 * fps[0], color="k", ls="--", lw=1,
                   label=f"FP reference ({100 * fps[0]:.1f}%)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8)
        right = max(right, 100 * fps[0])
    ax.set_xlim(0, min(100.0, right) * 1.15)
    ax.set(title="Final accuracy per setting (mean over seeds, bars: 95% interval)",
           xlabel="Final accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def plot_accuracy_vs_uplink(groups: list[Group], path: Path) -> Path | None:
    """Mean final accuracy against mean total uplink bytes, one point per setting."""
    pts = [(i, g) for i, g in enumerate(groups, start=1)
           if g.stat("final_accuracy")[2] and g.stat("uplink_bytes")[2]]
    if not pts:
        return None
    div, unit = byte_unit(max(g.stat("uplink_bytes")[0] for _, g in pts))
    fig, ax = new_figure(8.5, 5)
    for i, g in pts:
        acc, acc_h, _ = g.stat("final_accuracy")
        up, up_h, _ = g.stat("uplink_bytes")
        ax.errorbar(up / div, 100 * acc, xerr=_err(up_h) / div, yerr=100 * _err(acc_h),
                    fmt="o", color=f"C{(i - 1) % 10}", capsize=3,
                    label=f"#{i} {_short(g.label, 45)}")
        ax.annotate(f"#{i}", (up / div, 100 * acc), xytext=(5, 4), textcoords="offset points",
                    fontsize=8)
    ax.set(title="Accuracy against communication (mean over seeds, 95% intervals)",
           xlabel=f"Total uplink per run ({unit})", ylabel="Final accuracy (%)")
    ax.grid(alpha=0.3)
    if len(pts) <= MAX_LEGEND:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def plot_accuracy_vs_fraction(groups: list[Group], keys: list[str], path: Path) -> Path | None:
    """Accuracy against coreset fraction, one line per combination of the other varying keys.

    Drawn only when :data:`FRACTION_KEY` is one of the varying ``keys`` with at least two
    values; the lines are then per method and bit-width when those keys vary too.
    """
    if FRACTION_KEY not in keys:
        return None
    k = keys.index(FRACTION_KEY)
    series: dict[tuple[str, ...], list[tuple[float, float, float]]] = {}
    for g in groups:
        mean, half, n = g.stat("final_accuracy")
        if not n:
            continue
        rest = g.setting[:k] + g.setting[k + 1 :]
        series.setdefault(rest, []).append((float(g.setting[k]), 100 * mean, 100 * _err(half)))
    if len({x for pts in series.values() for x, _, _ in pts}) < 2:
        return None
    others = keys[:k] + keys[k + 1 :]
    fig, ax = new_figure(8.5, 5)
    for j, (rest, pts) in enumerate(sorted(series.items())):
        pts.sort()
        label = ", ".join(f"{key}={v}" for key, v in zip(others, rest, strict=True)) or "all runs"
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    fmt="o-", color=f"C{j % 10}", capsize=3, label=_short(label, 50))
    ax.set(title="Accuracy against coreset fraction (mean over seeds, 95% intervals)",
           xlabel="Coreset fraction (share of local data)", ylabel="Final accuracy (%)")
    ax.grid(alpha=0.3)
    if len(series) <= MAX_LEGEND:
        ax.legend(fontsize=8, loc="best")
    return save(fig, path)
