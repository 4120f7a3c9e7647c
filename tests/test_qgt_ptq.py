"""QGT's own mode (``train.qgt-mode = "ptq"``): float training with the grid regulariser, then round-to-nearest.

Tiny seeded MLPs quantized by surgery (``keep_fp=[]``: every layer quantized) and a handful of samples; one
device-round on the embedded digits data for the pipeline (codec, state keys, export). Expected grids are
written out here from the documented rules (``mse``: the least squared rounding error over the steps
``k/100 * max|w| / Qp``; ``lsq-init``: ``s = 2 mean|w| / sqrt(Qp)``), not taken from the library.
"""

from __future__ import annotations

import doctest
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fleet import protocol as P
from fleet.arrays import record_from_numpy
from fleet.config.scenario import parse_config
from fleet.config.schema import ConfigError, TrainConfig
from fleet.quant import ptq, quantizers
from fleet.quant.convert import QLinear, init_quantizers, quant_layers, quantize_model
from fleet.train.loop import train_local
from fleet.train.qgt import bottleneck_report, layer_grid

IN, HIDDEN, CLASSES, N = 8, 16, 3, 64
SGD = {"train.optimizer": "sgd", "train.momentum": 0.0, "train.lr": 0.1, "train.lr-schedule": "constant",
       "train.batch-size": 16, "train.weight-decay": 0.0, "train.qgt-warmup": 0.0, "quant.weight-bits": 2}


def _tc(mode: str = "ptq", lam: float = 0.0, epochs: int = 1, **over: object) -> TrainConfig:
    return parse_config({**SGD, "train.qgt-mode": mode, "train.qgt-lambda": lam, "train.local-epochs": epochs,
                         **over}).train


def _float(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CLASSES))


def _quantized(bits: int = 2, act_bits: int = 32, per_channel: bool = False, seed: int = 0) -> nn.Module:
    return quantize_model(_float(seed), bits, act_bits, keep_fp=[], per_channel=per_channel)


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


def _qlinear(model: nn.Module, name: str) -> tuple[QLinear, quantizers.LsqQuantizer]:
    """The quantized layer ``name`` and its LSQ weight quantizer."""
    layer = model.get_submodule(name)
    assert isinstance(layer, QLinear) and isinstance(layer.weight_quant, quantizers.LsqQuantizer)
    return layer, layer.weight_quant


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, IN, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def _train(model: nn.Module, tc: TrainConfig, bits: int = 2) -> None:
    x, y = _data()
    train_local(model, x, y, tc, gen=torch.Generator().manual_seed(1), qgt_bits=bits)


def _best_step(rows: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Per row of ``rows``: the step k/100 * max|row| / qmax (k = 1..100) with the least squared rounding error,
    the larger on a tie."""
    out = []
    for row in rows:
        candidates = [k / 100 * float(row.abs().max()) / qmax for k in range(100, 0, -1)]
        errors = [float((s * torch.clamp(torch.round(row / s), qmin, qmax) - row).pow(2).mean()) for s in candidates]
        out.append(candidates[errors.index(min(errors))])
    return torch.tensor(out)


def _rtn(w: torch.Tensor, bits: int, per_channel: bool = False,
         rule: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """(step, round-to-nearest of ``w``) by the documented rule, signed grid at ``bits``."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if rule == "lsq-init":
        mean_abs = w.abs().mean(dim=1, keepdim=True) if per_channel else w.abs().mean()
        s = 2 * mean_abs / math.sqrt(qmax)
    else:
        s = _best_step(w.flatten(1) if per_channel else w.reshape(1, -1), qmin, qmax)
        s = s.reshape(-1, 1) if per_channel else s.reshape(())
    return s, s * torch.clamp(torch.round(w / s), qmin, qmax)


# -- float training -------------------------------------------------------------------------------------------

def test_doctests() -> None:
    result = doctest.testmod(ptq)
    assert result.attempted > 0 and result.failed == 0


def test_float_training_is_the_float_forward_and_restores_fake_quant() -> None:
    fp, q = _float(), _quantized(bits=2, act_bits=4)
    init_quantizers(q, _data()[0])
    x = _data(seed=2)[0]
    with ptq.float_training(q):
        assert torch.equal(q(x), fp(x))
    assert not torch.allclose(q(x), fp(x))  # fake-quantized again after the block
    with pytest.raises(RuntimeError), ptq.float_training(q):
        raise RuntimeError("mid-training failure")
    assert all(m.fake_quant for m in q.modules() if isinstance(m, quantizers.LsqQuantizer))


@pytest.mark.parametrize(("mode", "expect_fake_quant"), [("ptq", False), ("qat", True)])
def test_no_fake_quant_forward_while_training_in_ptq(monkeypatch: pytest.MonkeyPatch, mode: str,
                                                     expect_fake_quant: bool) -> None:
    # Record every fake-quant call made with autograd on (training); the PTQ calibration runs under no_grad.
    calls: list[bool] = []
    real = quantizers.lsq_fake_quant

    def spy(*args: object) -> torch.Tensor:
        calls.append(torch.is_grad_enabled())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(quantizers, "lsq_fake_quant", spy)
    _train(_quantized(act_bits=4), _tc(mode, lam=1.0))
    assert any(calls) is expect_fake_quant


def test_ptq_step_is_plain_float_sgd_and_steps_get_no_gradient() -> None:
    # lambda = 0: the quantized model's weights follow the float model's SGD exactly; under QAT they do not.
    fp, q, qat = _float(), _quantized(), _quantized()
    _train(fp, _tc("ptq"))
    _train(q, _tc("ptq"))
    _train(qat, _tc("qat"))
    for name in ("0", "2"):
        layer, wq = _qlinear(q, name)
        assert torch.allclose(layer.weight, _linear(fp, name).weight, atol=1e-6)
        assert layer.weight.grad is not None and wq.step.grad is None
        assert not torch.allclose(_linear(qat, name).weight, _linear(fp, name).weight, atol=1e-3)


# -- round-to-nearest -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["mse", "lsq-init"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_final_model_is_round_to_nearest_of_the_trained_float_weights(per_channel: bool, rule: str) -> None:
    q = _quantized(bits=2, per_channel=per_channel)
    _train(q, _tc("ptq", lam=10.0, **{"train.ptq-step": rule}))
    q.eval()
    x = _data(seed=3)[0]
    h = x
    for name in ("0", "2"):
        layer, quant = _qlinear(q, name)
        s, wq = _rtn(layer.weight.detach(), 2, per_channel, rule)
        assert torch.allclose(quant.step.detach().reshape(s.shape), s, rtol=1e-5)
        assert quant.initialized.item() == 1
        h = F.linear(h, wq, layer.bias)
        h = F.relu(h) if name == "0" else h
    assert torch.allclose(q(x), h, atol=1e-6)


@pytest.mark.parametrize("rule", ["mse", "lsq-init"])
def test_activation_steps_are_calibrated_on_the_first_training_samples(rule: str) -> None:
    # First layer's input is the data itself: signed 4-bit (-8..7), over x[:256].
    q = _quantized(bits=2, act_bits=4)
    _train(q, _tc("ptq", **{"train.ptq-step": rule}))
    x, _ = _data()
    expected = 2 * x.abs().mean() / math.sqrt(7) if rule == "lsq-init" else _best_step(x.reshape(1, -1), -8, 7)[0]
    act = _qlinear(q, "0")[0].act_quant
    assert isinstance(act, quantizers.LsqQuantizer)
    assert act.step.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_later_activation_step_is_calibrated_on_its_quantized_input() -> None:
    # The second layer's input is the ReLU of the first layer's output with the first layer's weights and input
    # already rounded: unsigned 4-bit (0..15).
    q = _quantized(bits=2, act_bits=4)
    _train(q, _tc("ptq"))
    x, _ = _data()
    first, second = _qlinear(q, "0")[0], _qlinear(q, "2")[0]
    assert isinstance(first.act_quant, quantizers.LsqQuantizer) and isinstance(second.act_quant,
                                                                              quantizers.LsqQuantizer)
    q.eval()
    with torch.no_grad():
        h = F.relu(F.linear(first.act_quant(x), first.weight_quant(first.weight), first.bias))
    assert second.act_quant.step.item() == pytest.approx(_best_step(h.reshape(1, -1), 0, 15)[0].item(), rel=1e-5)


def test_the_regulariser_pulls_weights_toward_the_rounding_grid() -> None:
    def residuals(lam: float) -> list[float]:
        q = _quantized()
        init_quantizers(q, _data()[0])
        with torch.no_grad():  # steps as received from a global model: not the grid the weights will round on
            for name in ("0", "2"):
                _qlinear(q, name)[1].step.mul_(0.37)
        _train(q, _tc("ptq", lam=lam, epochs=10))
        return [float(r["norm_residual"]) for r in bottleneck_report(q, 2)]

    off, on = residuals(0.0), residuals(100.0)
    # lambda = 100 leaves the weights near the final grid (about 0.001), lambda = 0 does not (about 0.08); pulled
    # toward the stale received steps instead, they would end about 0.12.
    assert max(on) < 0.1 * min(off)


@pytest.mark.parametrize("rule", ["mse", "lsq-init"])
def test_ptq_grid_ignores_the_stale_lsq_step(rule: str) -> None:
    # The layer's LSQ step is a placeholder 123; in ptq mode the grid is the rule's step of its weights.
    for per_channel in (False, True):
        layer, wq = _qlinear(_quantized(bits=3, per_channel=per_channel), "0")
        with torch.no_grad():
            wq.step.fill_(123.0)
        wq.initialized.fill_(1)
        step, qmin, qmax = layer_grid(layer, 3, ptq_step=rule)
        s, _ = _rtn(layer.weight.detach(), 3, per_channel, rule)
        assert (qmin, qmax) == (-4, 3)
        assert torch.allclose(step.reshape(s.shape), s, rtol=1e-5)
        assert bool((layer_grid(layer, 3)[0] == 123.0).all())  # qat: the layer's own step


# -- bottleneck report ----------------------------------------------------------------------------------------

def test_bottleneck_report_and_qgt_json_after_ptq(tmp_path: Path) -> None:
    from simulations.store.deploy import write_qgt_report

    q = _quantized()
    _train(q, _tc("ptq", lam=1.0))
    rows = {r["layer"]: r for r in bottleneck_report(q, 2)}
    for name in ("0", "2"):
        w = _qlinear(q, name)[0].weight.detach()
        _, wq = _rtn(w, 2)
        assert rows[name]["quant_mse"] == pytest.approx(float((w - wq).pow(2).mean()), rel=1e-5)
    write_qgt_report(q, 2, tmp_path)
    written = json.loads((tmp_path / "qgt.json").read_text())
    assert written["bits"] == 2 and {r["layer"] for r in written["layers"]} == {"0", "2"}


# -- configuration --------------------------------------------------------------------------------------------

def test_default_mode_is_qat() -> None:
    assert parse_config({}).train.qgt_mode == "qat"


@pytest.mark.parametrize(("over", "message"), [
    ({"train.qgt-mode": "float"}, "train.qgt-mode: must be one of qat, ptq; got 'float'"),
    ({"train.qgt-mode": "ptq", "quant.weight-bits": 32},
     "train.qgt-mode: 'ptq' rounds the float-trained weights to quant.weight-bits after training: it needs "
     "quant.weight-bits < 32"),
    ({"train.qgt-mode": "ptq", "quant.weight-bits": 4, "privacy.dp": True},
     "train.qgt-mode: 'ptq' sets each device's own grid after training, but privacy.dp keeps the server's shared "
     "grid: use 'qat'"),
])
def test_invalid_combinations_fail_in_one_line(over: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(over)
    assert str(err.value) == message and "\n" not in str(err.value)


def test_ptq_without_the_regulariser_is_allowed() -> None:
    # The plain-PTQ control: float training, then round-to-nearest.
    tc = parse_config({"train.qgt-mode": "ptq", "train.qgt-lambda": 0.0, "quant.weight-bits": 4}).train
    assert (tc.qgt_mode, tc.qgt_lambda) == ("ptq", 0.0)


# -- one device-round through the pipeline ----------------------------------------------------------------------

DEVICE_BASE = {"federation.num-devices": 4, "federation.devices-per-round": 2, "federation.seed": 0,
               "data.dataset": "digits", "model.arch": "mlp", "model.pretrain-epochs": 1, "train.batch-size": 16,
               "quant.weight-bits": 4, "quant.act-bits": 32, "coreset.method": "full", "train.kd": False,
               "train.qgt-mode": "ptq", "train.qgt-lambda": 1.0}


@pytest.fixture(scope="module")
def device_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[nn.Module, str]]:
    from fleet.data.splits import fleet_data
    from fleet.model.reference import reference_model

    with pytest.MonkeyPatch.context() as mp:  # a private reference cache, never ~/.cache
        mp.setenv("EDGEFLEET_CACHE", str(tmp_path_factory.mktemp("cache")))
        cfg = parse_config(DEVICE_BASE)
        reference, ref_hash, _ = reference_model(cfg, fleet_data(cfg))
        yield reference, ref_hash


@pytest.mark.parametrize("codec", ["fp32", "qweights"])
def test_a_ptq_device_round_feeds_the_rest_of_the_pipeline(device_fleet: tuple[nn.Module, str], codec: str) -> None:
    from fleet.data.splits import fleet_data
    from fleet.device import run_device_round
    from fleet.hardware.memory import estimate_peak_memory
    from fleet.model.assembly import load_arrays, model_quant_info, state_arrays, trainable_model
    from fleet.quant.codecs import scenario_codec
    from fleet.quant.export import export_quantized, load_exported

    reference, ref_hash = device_fleet
    cfg = parse_config({**DEVICE_BASE, "quant.codec": codec})
    ds = fleet_data(cfg).dataset
    glob_model = trainable_model(cfg, reference, 4, 32)
    init_quantizers(glob_model, ds.x_train[fleet_data(cfg).public[:256]])  # as the server's initial model
    glob = state_arrays(glob_model)
    ins = P.DeviceInstruction(server_round=1, device=0, profile="rpi4", weight_bits=4, act_bits=32,
                              participation=0, ref_hash=ref_hash)
    out = run_device_round(cfg, ins, dict(glob), reference, {}, record_from_numpy(glob).count_bytes())
    assert out.report.status == "ok" and out.report.train_samples > 0

    # The upload decodes onto the global keys and loads; each step is the rule applied to the trained weights.
    qinfo = model_quant_info(glob_model)
    decoded = scenario_codec(cfg).decode(out.payload, glob, qinfo)
    assert set(decoded) == set(glob)
    final = trainable_model(cfg, reference, 4, 32)
    load_arrays(final, decoded)
    assert quant_layers(final)  # the MLP's hidden layer (its first and last stay float: quant.keep-fp)
    for name, layer in quant_layers(final).items():
        wq = layer.weight_quant
        assert isinstance(wq, quantizers.LsqQuantizer)
        step = wq.step.detach()
        assert not np.array_equal(decoded[f"{name}.weight_quant.step"], glob[f"{name}.weight_quant.step"])
        if codec == "fp32":  # latent float weights: the rule holds on them exactly
            assert torch.allclose(step, _rtn(layer.weight.detach(), 4)[0].reshape(step.shape), rtol=1e-5)
        else:  # codes on that grid: the weights are already round-to-nearest
            assert torch.allclose(wq(layer.weight.detach()), layer.weight.detach(), atol=1e-6)

    # Export: the integer checkpoint rebuilds a model that predicts as the fake-quantized one.
    x = ds.x_test[:200]
    deployed = load_exported(export_quantized(final), reference)
    assert torch.equal(deployed(x).argmax(1), final.eval()(x).argmax(1))

    # Float training: the memory estimate is the float model's, not QAT's.
    est = estimate_peak_memory(glob_model, ds.in_shape, 16, optimizer="adam", momentum=0.9, quantized=False)
    assert out.report.peak_mem_mb == pytest.approx(est.total_bytes / 2**20)
