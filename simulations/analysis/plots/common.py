"""Shared figure helpers: figure creation, saving, units and colours.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through
``pyplot``: ``Figure.savefig`` renders PNG with the Agg canvas, so no GUI backend is
touched and there is no global figure registry to leak between Ray workers or tests.
The figures themselves live in :mod:`simulations.analysis.plots.run` (one run),
:mod:`simulations.analysis.plots.data` (partition, QGT, continual calibration) and
:mod:`simulations.analysis.plots.compare` (several runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["STATUS_COLORS", "DPI", "new_figure", "save", "byte_unit", "pct", "subset_indices"]

#: Device statuses in stacking order, with colours that read as good -> bad.
STATUS_COLORS: dict[str, str] = {
    "ok": "#2ca02c",
    "straggler": "#ffbf00",
    "oom": "#9467bd",
    "offline": "#7f7f7f",
    "failed": "#d62728",
    "rejected": "#1f1f1f",
}

#: Resolution of every PNG; 120 dpi keeps an 8-inch figure ~960 px wide.
DPI = 120


def new_figure(width: float = 8.0, height: float = 4.5, nrows: int = 1, ncols: int = 1,
               **subplot_kw: Any) -> tuple[Figure, Any]:
    """A constrained-layout figure and its axes (an array when ``nrows * ncols > 1``)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **subplot_kw)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as PNG at :data:`DPI` and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def byte_unit(max_bytes: float) -> tuple[float, str]:
    """A divisor and decimal unit (B, kB, MB, GB) that keeps ``max_bytes`` readable.

    Examples
    --------
    >>> byte_unit(3_500_000)
    (1000000.0, 'MB')
    >>> byte_unit(12)
    (1.0, 'B')
    """
    for div, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if max_bytes >= div:
            return div, unit
    return 1.0, "B"


def pct(x: float | None) -> float:
    """A 0..1 fraction as a percentage (None -> nan), so plots can skip missing values."""
    return float("nan") if x is None else 100.0 * float(x)


def subset_indices(n: int, limit: int) -> list[int]:
    """Up to ``limit`` indices spread evenly over ``range(n)`` (all of them when n <= limit).

    Examples
    --------
    >>> subset_indices(10, 4)
    [0, 3, 6, 9]
    """
    if n <= limit:
        return list(range(n))
    step = (n - 1) / (limit - 1)
    return sorted({round(i * step) for i in range(limit)})
