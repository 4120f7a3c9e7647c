"""The float reference's cache: weights by recipe, and its test accuracy by (weights, test split) content."""

from __future__ import annotations

import pytest

from fleet.config.scenario import parse_config
from fleet.data.splits import fleet_data
from fleet.model import reference as ref

BASE = {"federation.num-devices": 4, "federation.devices-per-round": 2, "data.dataset": "digits",
        "model.arch": "mlp", "model.pretrain-epochs": 1}


def test_a_second_load_reads_the_weights_and_the_accuracy_without_training_or_evaluating(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path))
    cfg = parse_config(BASE)
    _, digest, acc = ref.reference_model(cfg, fleet_data(cfg))
    assert 0.0 < acc <= 1.0
    assert [p.name.split("-")[0] for p in (tmp_path / "refs" / "accuracy").iterdir()] == [digest]

    def forbidden(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a cached reference must not be trained or evaluated again")

    monkeypatch.setattr(ref, "pretrain", forbidden)
    monkeypatch.setattr(ref, "evaluate", forbidden)
    _, digest2, acc2 = ref.reference_model(cfg, fleet_data(cfg))
    assert (digest2, acc2) == (digest, acc)


def test_another_test_split_is_evaluated_again(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path))
    cfg = parse_config(BASE)
    fd = fleet_data(cfg)
    model, digest, acc = ref.reference_model(cfg, fd)
    ds = fd.dataset
    half = ref._test_accuracy(cfg, model, digest, ds.x_test[: len(ds.y_test) // 2], ds.y_test[: len(ds.y_test) // 2])
    assert len(list((tmp_path / "refs" / "accuracy").iterdir())) == 2
    (tmp_path / "refs" / "accuracy" / next(iter(sorted((tmp_path / "refs" / "accuracy").iterdir()))).name
     ).write_text("not json")  # an unreadable entry is measured again, not an error
    assert ref._test_accuracy(cfg, model, digest, ds.x_test, ds.y_test) == acc
    assert 0.0 < half <= 1.0
