"""Mean and 95% confidence interval over seeds (Student t), as docs/BENCHMARKS.md asks.

Low-bit training on small data is noisy, so every accuracy we compare is reported as
``mean ± half_width`` over seeds, where ``half_width = t_{0.975, n-1} · s / sqrt(n)``
and ``s`` is the sample standard deviation (``ddof=1``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["T975", "t_quantile_975", "mean_ci95", "format_ci"]

#: Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30 (index df - 1), from
#: scipy.stats.t.ppf(0.975, df) rounded to 4 decimals. Used when scipy is not importable.
T975: tuple[float, ...] = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t_quantile_975(df: int, use_scipy: bool = True) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom.

    Parameters
    ----------
    df : int
        Degrees of freedom, >= 1.
    use_scipy : bool
        Use ``scipy.stats.t.ppf`` when scipy is importable (default: True). Without
        scipy, :data:`T975` gives df 1..30 and the normal quantile 1.96 is used beyond,
        which understates the interval by at most 3% (df 31: t = 2.040).

    Examples
    --------
    >>> t_quantile_975(4, use_scipy=False)
    2.7764
    >>> t_quantile_975(100, use_scipy=False)
    1.96
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if use_scipy:
        try:
            from scipy import stats  # optional: exact quantile for any df
        except ImportError:
            pass
        else:
            return float(stats.t.ppf(0.975, df))
    return T975[df - 1] if df <= len(T975) else 1.96


def mean_ci95(values: Iterable[float], use_scipy: bool = True) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% t interval.

    Parameters
    ----------
    values : iterable of float
        One value per seed; must not be empty.
    use_scipy : bool
        Passed to :func:`t_quantile_975` (default: True).

    Returns
    -------
    tuple[float, float]
        ``(mean, half_width)``; the half-width is ``nan`` for a single value (no spread
        can be estimated from one seed).

    Examples
    --------
    >>> m, h = mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0], use_scipy=False)
    >>> round(m, 4), round(h, 4)
    (3.0, 1.9632)
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = math.fsum(xs) / n
    if n == 1:
        return mean, math.nan
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return mean, t_quantile_975(n - 1, use_scipy) * math.sqrt(var / n)


def format_ci(mean: float, half: float, scale: float = 1.0, digits: int = 2) -> str:
    """Text ``mean ± half`` (times ``scale``), or just ``mean`` when the half-width is nan.

    Examples
    --------
    >>> format_ci(0.8123, 0.0151, scale=100, digits=1)
    '81.2 ± 1.5'
    >>> format_ci(0.5, float("nan"))
    '0.50'
    """
    if math.isnan(mean):
        return "–"
    if math.isnan(half):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {half * scale:.{digits}f}"
