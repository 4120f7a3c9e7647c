"""The float reference goes only to devices that use it, once; a device that does not runs without it."""

import numpy as np
import pytest
from flwr.app import ConfigRecord
from mock_replies import FakeGrid, arrays_record, server_identity

from fleet import protocol as P
from fleet.config.scenario import parse_config
from fleet.data.splits import fleet_data
from fleet.device import run_device_round
from fleet.model.architectures import build_model
from fleet.model.assembly import state_arrays, trainable_model
from fleet.model.roles import needs_reference
from fleet.quant.codecs import build_codec
from strategies.registry import build_inner_strategy
from strategies.wrapper import FleetStrategy

BASE = {"federation.num-devices": 4, "federation.devices-per-round": 4, "data.dataset": "digits",
        "model.arch": "mlp", "model.pretrain-epochs": 1}
FP32 = {"quant.weight-bits": 32, "quant.act-bits": 32, "quant.codec": "fp32", "coreset.method": "full",
        "train.clc-beta": 0.0}


@pytest.mark.parametrize(("over", "expected"), [
    ({}, False),  # float, full data, no CLC: plain FedAvg needs no teacher
    ({"coreset.method": "random", "coreset.fraction": 0.5}, False),
    ({"coreset.method": "evs", "coreset.fraction": 0.5}, False),  # EVS runs the quantized model only
    ({"coreset.method": "quarc", "coreset.fraction": 0.5}, True),  # scores against the FP model
    ({"coreset.method": "moderate", "coreset.fraction": 0.5}, True),
    ({"train.clc-beta": 1.0}, True),  # CLC compares with the reference's features
    ({"quant.weight-bits": 4, "quant.act-bits": 4, "quant.codec": "qweights"}, True),  # KD at low bits
    ({"quant.weight-bits": 4, "quant.act-bits": 4, "quant.codec": "qweights", "train.kd": False}, False),
])
def test_needs_reference(over: dict, expected: bool) -> None:
    cfg = parse_config({**BASE, **FP32, **over})
    assert needs_reference(cfg, cfg.quant.weight_bits, cfg.quant.act_bits) is expected


def _strategy(flat: dict) -> tuple[FleetStrategy, dict[str, np.ndarray]]:
    cfg = parse_config(flat)
    ds = fleet_data(cfg).dataset
    ref = build_model(cfg.model.arch, ds.in_shape, ds.num_classes)
    ref_state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    model = trainable_model(cfg, ref, cfg.quant.weight_bits, cfg.quant.act_bits)
    strategy = FleetStrategy(build_inner_strategy("fedavg", {}), cfg, build_codec("fp32"), None, ref_state, "h")
    strategy.nodes = {d: d + 1 for d in range(4)}
    strategy.roster = {d + 1: d for d in range(4)}
    return strategy, state_arrays(model)


def _round(strategy: FleetStrategy, arrays: dict[str, np.ndarray], rnd: int) -> list[bool]:
    msgs = list(strategy.configure_train(rnd, arrays_record(arrays), ConfigRecord(), FakeGrid([1, 2, 3, 4])))
    assert len(msgs) == 4
    return [P.REFERENCE in m.content for m in msgs]


def test_float_fedavg_never_ships_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    server_identity(monkeypatch)
    strategy, arrays = _strategy({**BASE, **FP32})
    # Execute
    sent = _round(strategy, arrays, 1)
    # Assert: the downlink is the model alone
    assert sent == [False] * 4
    assert strategy.last.downlink_bytes == 4 * arrays_record(arrays).count_bytes()


def test_quarc_ships_the_reference_once_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    server_identity(monkeypatch)
    strategy, arrays = _strategy({**BASE, **FP32, "coreset.method": "quarc", "coreset.fraction": 0.5})
    model_bytes = arrays_record(arrays).count_bytes()
    # Execute
    first, second = _round(strategy, arrays, 1), _round(strategy, arrays, 2)
    # Assert
    assert first == [True] * 4 and second == [False] * 4
    assert strategy.last.downlink_bytes == 4 * model_bytes  # round 2: the devices kept their copy


def test_a_device_without_the_reference_trains() -> None:
    # Prepare: float FedAvg; the template comes from the architecture, the weights from the global model
    cfg = parse_config({**BASE, **FP32})
    ds = fleet_data(cfg).dataset
    glob = state_arrays(build_model("mlp", ds.in_shape, ds.num_classes))
    ins = P.DeviceInstruction(server_round=1, device=0, profile="rpi4", weight_bits=32, act_bits=32,
                              participation=0, ref_hash="never-sent")
    # Execute
    out = run_device_round(cfg, ins, glob, None, {}, downlink_bytes=0)
    # Assert: a trained update on the global keys, different from what came in
    assert out.report.status == "ok" and out.report.train_samples > 0
    assert set(out.payload) == set(glob)
    assert any(not np.array_equal(out.payload[k], glob[k]) for k in glob)
