"""Continual calibration: config validation and a tiny end-to-end device stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fleet.model.architectures import build_model
from fleet.qcore.continual import ContinualConfig, deploy, run_device_stream
from fleet.qcore.quant import qcore_layers, to_qcore


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 6}, "stream.bits: 6"),
        ({"core_bits": (2, 7)}, r"stream.core-bits: \[7\]"),
        ({"calibration": "magic"}, "stream.calibration: 'magic'"),
        ({"drift": "snow"}, "stream.drift: 'snow'"),
        ({"holdout": 1.0}, "stream.holdout"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContinualConfig(**kwargs)


def test_core_larger_than_local_data_raises() -> None:
    with pytest.raises(ValueError, match=r"stream.core-size: 20 > local data \(15 samples\)"):
        ContinualConfig().check_local_data(15)


def _setup() -> tuple:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(260, 1, 8, 8, generator=g), torch.randint(0, 4, (260,), generator=g)
    float_model = build_model("mlp", (1, 8, 8), 4)
    qmodel = to_qcore(float_model, 4, x[:64])
    return qmodel, (x[:10], y[:10]), (x[10:210], y[10:210]), (x[210:], y[210:])


def test_bfn_needs_trained_bfns() -> None:
    qmodel, core, (x, y), (xt, yt) = _setup()
    cfg = ContinualConfig(tasks=4, core_size=10, calibration="bfn")
    with pytest.raises(ValueError, match="needs trained BFNs"):
        run_device_stream(qmodel, x, y, xt, yt, cfg, np.random.default_rng(0), core=core)


@pytest.mark.parametrize("calibration", ["none", "bfn", "backprop-qcore", "backprop-random"])
def test_device_stream_reports_every_task(calibration: str) -> None:
    # Prepare
    qmodel, core, (x, y), (xt, yt) = _setup()
    cfg = ContinualConfig(tasks=4, core_size=10, epochs=2, recordings=2,
                          calibration=calibration, drift="both")
    dep = deploy(qmodel, core, cfg, [core], torch.Generator().manual_seed(0), init_epochs=2,
                 bfn_steps=5)
    codes0 = {n: m.codes.clone() for n, m in qcore_layers(dep.model).items()}
    # Execute
    res = run_device_stream(dep.model, x, y, xt, yt, cfg, np.random.default_rng(0),
                            core=dep.core, bfns=dep.bfns)
    # Assert
    assert [r.task for r in res] == [0, 1, 2, 3]
    assert all(0.0 <= r.accuracy_task <= 1.0 and 0.0 <= r.accuracy_original <= 1.0 for r in res)
    assert all(r.flops == r.flops_core + r.flops_calibration for r in res)
    if calibration == "none":
        assert all(r.flops == 0 for r in res)
    else:
        assert all(r.flops_calibration > 0 for r in res)
    # the deployed model is not modified by the device
    assert all(torch.equal(m.codes, codes0[n]) for n, m in qcore_layers(dep.model).items())
