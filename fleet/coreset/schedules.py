"""Schedules for the weight on EVS when mixing EVS and DS (ACS, QuaRC).

Each schedule maps ``(t, T)`` (epoch, total epochs) to the weight ``w`` on EVS;
the weight on DS is ``1 - w``. All go from 1 at ``t = 0`` to 0 at ``t = T``
except the constant ones (docs/methods.md (ACS)).

- ``paper``: ``cos(pi t / (2T))``, the ACS and QuaRC papers' formula.
- ``code``: ``0.5 (1 + cos(pi t / T))``, ACS's released ``--adaptive cosine``.
- ``linear`` / ``quadratic`` / ``sqrt``: ``1 - a`` with ACS's code's
  ``a = t/T``, ``(t/T)^2``, ``sqrt(t/T)``.
- ``evs-only`` (1) and ``ds-only`` (0).

Examples
--------
>>> round(SCHEDULES["paper"](5, 10), 4)  # cos(pi/4)
0.7071
>>> SCHEDULES["code"](5, 10)
0.5
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["SCHEDULES", "Schedule"]

Schedule = Callable[[int, int], float]


def _progress(t: int, total: int) -> float:
    """``t / T`` clipped to [0, 1], so a device past its nominal horizon stays at 0."""
    if total < 1:
        raise ValueError(f"total epochs must be >= 1, got {total}")
    return min(max(t / total, 0.0), 1.0)


def _paper(t: int, total: int) -> float:
    return math.cos(math.pi * _progress(t, total) / 2)


def _code(t: int, total: int) -> float:
    return 0.5 * (1 + math.cos(math.pi * _progress(t, total)))


def _linear(t: int, total: int) -> float:
    return 1 - _progress(t, total)


def _quadratic(t: int, total: int) -> float:
    return 1 - _progress(t, total) ** 2


def _sqrt(t: int, total: int) -> float:
    return 1 - math.sqrt(_progress(t, total))


def _evs_only(t: int, total: int) -> float:
    return 1.0


def _ds_only(t: int, total: int) -> float:
    return 0.0


SCHEDULES: dict[str, Schedule] = {
    "paper": _paper,
    "code": _code,
    "linear": _linear,
    "quadratic": _quadratic,
    "sqrt": _sqrt,
    "evs-only": _evs_only,
    "ds-only": _ds_only,
}
