"""Guard: absolute checks per update and the median-based norm test, by hand."""

import numpy as np
import pytest

from strategies.guard import (
    RejectedUpdate,
    check_update,
    delta_norm,
    norm_outliers,
    screen_updates,
)

REF = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


def _good() -> dict[str, np.ndarray]:
    return {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}


def test_good_update_passes() -> None:
    assert check_update(_good(), REF) is None


def test_float64_update_passes() -> None:
    update = {k: v.astype(np.float64) for k, v in _good().items()}
    assert check_update(update, REF) is None


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda u: u["w"].__setitem__((0, 0), np.nan), "'w': 1 non-finite value(s)"),
        (lambda u: u["b"].__setitem__(1, -np.inf), "'b': 1 non-finite value(s)"),
        (lambda u: u.pop("b"), "missing keys: ['b']"),
        (lambda u: u.update(extra=np.zeros(1, np.float32)), "extra keys: ['extra']"),
        (
            lambda u: u.update(b=np.zeros(3, np.float32)),
            "'b': shape (3,) != expected (2,)",
        ),
        (
            lambda u: u.update(w=np.zeros((2, 2), np.int8)),
            "'w': dtype int8 is not floating",
        ),
    ],
    ids=["nan", "inf", "missing-key", "extra-key", "wrong-shape", "int-dtype"],
)
def test_each_kind_of_bad_update_is_rejected(edit, expected: str) -> None:
    # Prepare
    update = _good()
    edit(update)
    # Execute
    reason = check_update(update, REF)
    # Assert
    assert reason is not None and reason.startswith(expected)


def test_delta_norm_over_all_tensors() -> None:
    # sqrt(4 * 1^2 + 2 * 1^2) = sqrt(6); then a 3-4-5 triangle across two tensors
    assert delta_norm(_good(), REF) == pytest.approx(np.sqrt(6))
    local = {"a": np.array([3.0]), "b": np.array([1.0, 4.0])}
    glob = {"a": np.array([0.0]), "b": np.array([1.0, 0.0])}
    assert delta_norm(local, glob) == 5.0


def test_norm_outliers_against_median() -> None:
    # median(1, 2, 3, 100) = 2.5 -> threshold 25: only 100 is out
    assert norm_outliers([1.0, 2.0, 3.0, 100.0]) == [False, False, False, True]


def test_norm_threshold_is_strict() -> None:
    # median 1, factor 10: 10 is kept, 10.5 is rejected
    assert norm_outliers([1.0, 1.0, 10.0]) == [False, False, False]
    assert norm_outliers([1.0, 1.0, 10.5]) == [False, False, True]
    assert norm_outliers([1.0, 1.0, 2.5], factor=2.0) == [False, False, True]


def test_fewer_than_three_updates_skip_the_norm_test() -> None:
    assert norm_outliers([1.0, 1000.0]) == [False, False]
    assert norm_outliers([5.0]) == [False]
    assert norm_outliers([]) == []


def test_zero_median_and_non_finite_norms() -> None:
    assert norm_outliers([0.0, 0.0, 5.0]) == [False, False, False]
    assert norm_outliers([1.0, 1.0, 1.0, np.inf]) == [False, False, False, True]


def test_factor_must_exceed_one() -> None:
    with pytest.raises(ValueError, match="factor must be > 1"):
        norm_outliers([1.0, 2.0, 3.0], factor=1.0)


def test_screen_updates_combines_both_checks() -> None:
    # Prepare: norms sqrt(6) for devices 0..2 (scaled 1x, 1x, 100x) and a NaN device 3
    updates = {0: _good(), 1: _good(), 2: {k: v * 100 for k, v in _good().items()}}
    updates[3] = _good()
    updates[3]["b"][0] = np.nan
    # Execute
    accepted, rejected = screen_updates(updates, REF)
    # Assert: 100*sqrt(6) > 10 * median(sqrt(6), sqrt(6), 100 sqrt(6)) = 10 sqrt(6)
    assert accepted == [0, 1]
    assert [r.device for r in rejected] == [3, 2]
    assert rejected[0] == RejectedUpdate(3, "'b': 1 non-finite value(s) (NaN/Inf)")
    assert rejected[1].reason.startswith("delta norm 244.9 > 10 x round median 2.449")
