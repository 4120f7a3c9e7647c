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
           "plot_accuracy_vs_fraction", "wrap_label", "uplink_note", "fraction_note", "runs_text"]

#: The config key of the coreset fraction (fleet.config.scenario: ``[coreset] fraction``).
FRACTION_KEY = "coreset.fraction"
#: Settings above this count are labelled only by their ``#`` number on the figures.
MAX_LEGEND = 10
#: Lines of one setting's label; the keys beyond are counted and left to the table.
MAX_LABEL_LINES = 6


def _err(half: float) -> float:
    return 0.0 if math.isnan(half) else half


def wrap_label(text: str, width: int = 40, max_lines: int | None = None, ref: str = "") -> str:
    """A ``key=value, key=value`` label on lines of about ``width`` characters.

    Lines break only between pairs, so no key or value is cut. Beyond ``max_lines`` lines
    (default: no limit) the rest is replaced by a line saying how many pairs are left out
    and where to read them (``ref``, e.g. ``"#3 in compare.md"``).

    Examples
    --------
    >>> print(wrap_label("coreset.method=acs, coreset.fraction=0.1", 20))
    coreset.method=acs,
    coreset.fraction=0.1
    >>> print(wrap_label("a=1, b=2, c=3", 4, max_lines=2, ref="#1"))
    a=1,
    (+2 more: #1)
    """
    lines: list[list[str]] = []
    for pair in text.split(", "):
        if lines and len(", ".join(lines[-1])) + 2 + len(pair) <= width:
            lines[-1].append(pair)
        else:
            lines.append([pair])
    if max_lines is not None and len(lines) > max_lines:
        kept = lines[: max_lines - 1]
        left = sum(len(x) for x in lines[max_lines - 1 :])
        return ",\n".join(", ".join(x) for x in kept) + f",\n(+{left} more: {ref or 'the table'})"
    return ",\n".join(", ".join(x) for x in lines)


def _label(i: int, g: Group, width: int = 40) -> str:
    return f"#{i} " + wrap_label(g.label, width, MAX_LABEL_LINES, f"row #{i} of the table")


def runs_text(g: Group) -> str:
    """``3 seeds``, or ``1 seed, 2 runs`` when runs repeat a seed."""
    k, n = len(g.seeds), len(g.results)
    return f"{k} seed{'s' if k != 1 else ''}" + ("" if n == k else f", {n} runs")


def _uplink_points(groups: list[Group]) -> list[tuple[int, Group]]:
    return [(i, g) for i, g in enumerate(groups, start=1)
            if g.stat("final_accuracy")[2] and g.stat("uplink_bytes")[2]]


def uplink_note(groups: list[Group]) -> str:
    """Why :func:`plot_accuracy_vs_uplink` draws nothing ("" when it draws, or has no data).

    The figure needs at least two distinct uplink totals: with one, its x axis is a
    single value and only restates the accuracy per setting.
    """
    pts = _uplink_points(groups)
    values = {round(g.stat("uplink_bytes")[0]) for _, g in pts}
    if not pts or len(values) > 1:
        return ""
    (up,) = values
    div, unit = byte_unit(float(up))
    who = "the only setting" if len(pts) == 1 else f"each of the {len(pts)} settings"
    return (f"Not drawn: {who} sent the same uplink "
            f"per run ({up / div:.2f} {unit}), so there is no communication axis to read "
            "accuracy against; see the accuracy per setting above.")


def plot_accuracy_by_setting(groups: list[Group], path: Path) -> Path | None:
    """Final accuracy per setting as horizontal bars with the 95% interval over seeds."""
    rows = [(i, g) for i, g in enumerate(groups, start=1) if g.stat("final_accuracy")[2]]
    if not rows:
        return None
    labels = [_label(i, g) for i, g in rows]
    height = sum(max(1, lab.count("\n") + 1) for lab in labels)
    fig, ax = new_figure(10, max(3.0, 0.3 * height + 0.25 * len(rows) + 1.8))
    right = 0.0
    for y, (i, g) in enumerate(rows):
        mean, half, _ = g.stat("final_accuracy")
        end = 100 * (mean + _err(half))
        right = max(right, end)
        ax.barh(y, 100 * mean, xerr=100 * _err(half), color=f"C{(i - 1) % 10}", capsize=4,
                alpha=0.85)
        # Text after the error bar so the interval stays visible.
        ax.annotate(f"{100 * mean:.1f}% ({runs_text(g)})", (end, y), xytext=(5, -3),
                    textcoords="offset points", fontsize=8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    fps = [g.stat("fp_reference_accuracy")[0] for _, g in rows]
    fps = [f for f in fps if not math.isnan(f)]
    if fps and max(fps) - min(fps) < 1e-9:
        ax.axvline(100 * fps[0], color="k", ls="--", lw=1,
                   label=f"FP reference ({100 * fps[0]:.1f}%, mean over seeds)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8)
        right = max(right, 100 * fps[0])
    ax.set_xlim(0, min(100.0, right) * 1.15)
    ax.set_xticks([t for t in range(0, 101, 20) if t <= ax.get_xlim()[1]])  # no ticks past 100%
    ax.set(title="Final accuracy per setting (mean over distinct seeds, bars: 95% interval)",
           xlabel="Final accuracy (%)")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def plot_accuracy_vs_uplink(groups: list[Group], path: Path) -> Path | None:
    """Mean final accuracy against mean total uplink bytes, one point per setting.

    Returns None when every setting sent the same bytes (:func:`uplink_note` says why).
    """
    pts = _uplink_points(groups)
    if not pts or uplink_note(groups):
        return None
    div, unit = byte_unit(max(g.stat("uplink_bytes")[0] for _, g in pts))
    fig, ax = new_figure(8.5, 5)
    for i, g in pts:
        acc, acc_h, _ = g.stat("final_accuracy")
        up, up_h, _ = g.stat("uplink_bytes")
        ax.errorbar(up / div, 100 * acc, xerr=_err(up_h) / div, yerr=100 * _err(acc_h),
                    fmt="o", color=f"C{(i - 1) % 10}", capsize=3,
                    label=_label(i, g, 45))
        ax.annotate(f"#{i}", (up / div, 100 * acc), xytext=(5, 4), textcoords="offset points",
                    fontsize=8)
    # A figure title: the legend outside the axes narrows them, and an axes title would be cut.
    fig.suptitle("Accuracy against communication (mean over distinct seeds, 95% intervals)")
    ax.set(xlabel=f"Total uplink per run ({unit})", ylabel="Final accuracy (%)")
    ax.margins(0.08)  # room for the "#i" tags of the outermost points
    ax.grid(alpha=0.3)
    if len(pts) <= MAX_LEGEND:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def _fraction_series(groups: list[Group], keys: list[str]
                     ) -> dict[tuple[str, ...], list[tuple[float, float, float]]]:
    """Other keys' values -> ``(fraction, accuracy %, half-width %)`` points, for the fraction figure."""
    k = keys.index(FRACTION_KEY)
    series: dict[tuple[str, ...], list[tuple[float, float, float]]] = {}
    for g in groups:
        mean, half, n = g.stat("final_accuracy")
        if n:
            rest = g.setting[:k] + g.setting[k + 1 :]
            series.setdefault(rest, []).append((float(g.setting[k]), 100 * mean, 100 * _err(half)))
    return series


def fraction_note(groups: list[Group], keys: list[str]) -> str:
    """Why :func:`plot_accuracy_vs_fraction` draws nothing although the fraction varies ("" else)."""
    if FRACTION_KEY not in keys:
        return ""
    series = _fraction_series(groups, keys)
    if len({x for pts in series.values() for x, _, _ in pts}) < 2:
        return ""
    if any(len({x for x, _, _ in pts}) > 1 for pts in series.values()):
        return ""
    return ("Not drawn: coreset.fraction differs between settings, but never with everything "
            "else equal (each combination of the other keys was run at one fraction only), so "
            "a line against the fraction would mix in the other differences.")


def plot_accuracy_vs_fraction(groups: list[Group], keys: list[str], path: Path) -> Path | None:
    """Accuracy against coreset fraction, one line per combination of the other varying keys.

    Drawn only when :data:`FRACTION_KEY` is one of the varying ``keys`` and at least one
    combination of the other keys was run at two or more fractions (otherwise
    :func:`fraction_note` says why); the lines are then per method and bit-width when those
    keys vary too.
    """
    if FRACTION_KEY not in keys:
        return None
    series = _fraction_series(groups, keys)
    if not any(len({x for x, _, _ in pts}) > 1 for pts in series.values()):
        return None
    k = keys.index(FRACTION_KEY)
    others = keys[:k] + keys[k + 1 :]
    # Label lines by the other keys that differ between groups only.
    wanted = set(others if groups[0].label_keys is None else groups[0].label_keys)
    fig, ax = new_figure(9.5, 5)
    for j, (rest, pts) in enumerate(sorted(series.items())):
        pts.sort()
        label = ", ".join(f"{key}={v}" for key, v in zip(others, rest, strict=True)
                          if key in wanted) or "all runs"
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    fmt="o-", color=f"C{j % 10}", capsize=3,
                    label=wrap_label(label, 45, MAX_LABEL_LINES, "the table"))
    fig.suptitle("Accuracy against coreset fraction (mean over distinct seeds, 95% intervals)")
    ax.set(xlabel="Coreset fraction (share of local data)", ylabel="Final accuracy (%)")
    ax.grid(alpha=0.3)
    if len(series) <= MAX_LEGEND:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)
