"""Mean and 95% t interval: arithmetic worked out by hand."""

from __future__ import annotations

import math

import pytest

from simulations.analysis.stats import T975, format_ci, mean_ci95, t_quantile_975


def test_five_values_by_hand() -> None:
    # Prepare: 1..5 -> mean 3; squared deviations 4+1+0+1+4 = 10; s^2 = 10/4 = 2.5;
    # se = sqrt(2.5/5) = sqrt(0.5) = 0.707107; t(0.975, df=4) = 2.7764 -> 1.963212.
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    # Execute
    mean, half = mean_ci95(values, use_scipy=False)
    # Assert
    assert mean == 3.0
    assert half == pytest.approx(2.7764 * math.sqrt(0.5), abs=1e-9)
    assert half == pytest.approx(1.963212, abs=1e-5)


def test_two_values_by_hand() -> None:
    # 0.5, 0.7 -> mean 0.6; s^2 = (0.01 + 0.01)/1 = 0.02; se = sqrt(0.02/2) = 0.1;
    # t(0.975, df=1) = 12.7062 -> half-width 1.27062.
    mean, half = mean_ci95([0.5, 0.7], use_scipy=False)
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(1.27062, abs=1e-9)


def test_three_accuracies_by_hand() -> None:
    # 0.70, 0.72, 0.74 -> mean 0.72; s = 0.02; se = 0.02/sqrt(3) = 0.0115470;
    # t(df=2) = 4.3027 -> 0.0496834.
    mean, half = mean_ci95([0.70, 0.72, 0.74], use_scipy=False)
    assert mean == pytest.approx(0.72)
    assert half == pytest.approx(0.0496834, abs=1e-6)


def test_single_value_has_nan_half_width() -> None:
    mean, half = mean_ci95([0.42])
    assert mean == 0.42
    assert math.isnan(half)


def test_identical_values_have_zero_width() -> None:
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.0)


def test_empty_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one"):
        mean_ci95([])


def test_table_fallback_beyond_30_is_normal_quantile() -> None:
    assert t_quantile_975(30, use_scipy=False) == 2.0423
    assert t_quantile_975(31, use_scipy=False) == 1.96
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_table_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df, t in enumerate(T975, start=1):
        assert t == pytest.approx(stats.t.ppf(0.975, df), abs=5e-5)
        assert t_quantile_975(df) == pytest.approx(t, abs=5e-5)


def test_format_ci() -> None:
    assert format_ci(0.8123, 0.0151, scale=100, digits=1) == "81.2 ± 1.5"
    assert format_ci(0.5, math.nan) == "0.50"
    assert format_ci(math.nan, math.nan) == "–"
