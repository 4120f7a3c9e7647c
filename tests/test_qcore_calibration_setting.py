"""The calibration setting knobs of QCore's back-propagation (codes only, code optimiser, batch, code learning
rate), the codes-moved metric, and the ``[stream]`` keys that carry them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fleet.config.scenario import parse_config
from fleet.hardware.flops import model_flops
from fleet.model.architectures import build_model
from fleet.qcore.calibrate import CalibrationContext, backprop_calibrate, code_snapshot, codes_changed
from fleet.qcore.continual import ContinualConfig, deploy, run_device_stream
from fleet.qcore.device import continual_config
from fleet.qcore.quant import qcore_layers, to_qcore


def _model() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("cnn", (1, 8, 8), 4)
    return to_qcore(model, 4, x[:32]), x, y


def _ctx(model: torch.nn.Module, **kw: object) -> CalibrationContext:
    return CalibrationContext(model_flops(model, (1, 8, 8), matmul_only=True), **kw)  # type: ignore[arg-type]


def test_codes_only_leaves_biases_and_norms_as_deployed() -> None:
    # Prepare
    model, x, y = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    codes = code_snapshot(model)
    # Execute: a code step size large enough to round codes over
    backprop_calibrate(model, x, y, _ctx(model, epochs=5, code_lr=0.5, batch_size=16, codes_only=True))
    # Assert
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert codes_changed(model, codes) > 0.0


def test_without_codes_only_biases_move_too() -> None:
    model, x, y = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    backprop_calibrate(model, x, y, _ctx(model, epochs=2, code_lr=0.01, batch_size=16))
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_sgd_moves_codes_by_their_gradient_and_adam_moves_them_all() -> None:
    # Adam's first steps move every code by ~lr whatever its gradient; SGD in proportion to the gradient.
    model, x, y = _model()
    adam, sgd = copy.deepcopy(model), copy.deepcopy(model)
    codes = code_snapshot(model)
    backprop_calibrate(adam, x, y, _ctx(model, epochs=8, code_lr=0.1, batch_size=64, codes_only=True))
    backprop_calibrate(sgd, x, y, _ctx(model, epochs=8, code_lr=0.1, batch_size=64, codes_only=True,
                                       code_optimizer="sgd"))
    assert codes_changed(adam, codes) > 0.5 > codes_changed(sgd, codes)


def test_unknown_code_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="code optimizer 'lbfgs'"):
        CalibrationContext(1, code_optimizer="lbfgs")


def test_codes_changed_counts_exactly_the_moved_codes() -> None:
    model, _, _ = _model()
    before = code_snapshot(model)
    layer = next(iter(qcore_layers(model).values()))
    delta = torch.zeros_like(layer.codes)
    delta.view(-1)[:3] = torch.where(layer.codes.view(-1)[:3] < 7, 1, -1).to(torch.int8)
    layer.step_codes(delta)
    total = sum(c.numel() for c in before.values())
    assert codes_changed(model, before) == pytest.approx(3 / total)


def test_stream_keys_reach_the_device_config() -> None:
    cfg = parse_config({"stream.enabled": True, "stream.code-lr": 0.03, "stream.calibration-batch": 32,
                        "stream.codes-only": True, "stream.calibration-epochs": 30})
    ccfg = continual_config(cfg)
    assert (ccfg.code_lr, ccfg.batch_size, ccfg.codes_only, ccfg.epochs) == (0.03, 32, True, 30)
    with pytest.raises(ValueError, match="calibration-batch"):
        ContinualConfig(batch_size=0)


def test_device_stream_reports_codes_moved_per_task() -> None:
    # Prepare
    model, x, y = _model()
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.rand(200, 1, 8, 8, generator=g), torch.randint(0, 4, (200,), generator=g)
    core = (x[:20], y[:20])
    dep = deploy(model, core, ContinualConfig(core_size=20), [], torch.Generator().manual_seed(0), init_epochs=1,
                 with_bfns=False)
    # Execute
    rows = {cal: run_device_stream(dep.model, xs, ys, x, y, ContinualConfig(
        tasks=3, core_size=20, calibration=cal, epochs=4, code_lr=0.5, batch_size=10, recordings=2),
        np.random.default_rng(0), core=core) for cal in ("none", "backprop-qcore")}
    # Assert
    assert [r.codes_changed for r in rows["none"]] == [0.0, 0.0, 0.0]
    assert all(r.codes_changed > 0.0 for r in rows["backprop-qcore"])


def test_the_code_optimizer_key_reaches_the_device_and_bad_ones_are_named() -> None:
    cfg = parse_config({"stream.enabled": True, "stream.code-optimizer": "sgd"})
    assert continual_config(cfg).code_optimizer == "sgd"
    with pytest.raises(ValueError, match="stream.code-optimizer: 'rmsprop'"):
        ContinualConfig(code_optimizer="rmsprop")
