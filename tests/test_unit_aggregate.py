"""FleetStrategy.aggregate_train on hand-built replies: statuses, decoding across widths, over-selection, guard.

No Ray and no simulation engine: the strategy learns its roster from a fake grid, emits its instructions
with ``configure_train``, and gets back replies built from those instructions as the ClientApp builds them.
Every expected aggregate is a weighted mean computed by hand (FedAvg inner strategy, weight = num-examples).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from flwr.app import ConfigRecord
from mock_replies import server_identity
from unit_builders import RosterGrid, arrays_of, by_device, device_reply, error_reply, instruction_of

from fleet.arrays import record_from_numpy
from fleet.config.scenario import parse_config
from fleet.quant.codecs import build_codec
from fleet.quant.spec import QuantInfo, QuantSpec
from strategies.registry import build_inner_strategy
from strategies.wrapper import FleetStrategy

FLOAT = {"data.dataset": "digits", "model.arch": "mlp", "quant.weight-bits": 32, "quant.act-bits": 32,
         "quant.codec": "fp32", "coreset.method": "full", "train.clc-beta": 0.0, "federation.seed": 0}
# A tiny global model: two tensors, all zeros (so a delta norm is the update's own norm).
GLOBAL = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


def _round(flat: dict, global_arrays: dict[str, np.ndarray], codec: str = "fp32", qinfo: QuantInfo | None = None,
           ) -> tuple[FleetStrategy, dict[int, object]]:
    """A strategy after roster discovery and ``configure_train`` of round 1: (strategy, instructions by device)."""
    cfg = parse_config(flat)
    strategy = FleetStrategy(build_inner_strategy("fedavg", {}), cfg, build_codec(codec), qinfo,
                             {"ref": np.zeros(1, np.float32)}, "ref-hash")
    grid = RosterGrid(cfg.federation.num_devices)
    strategy.discover(grid, timeout=5.0)
    msgs = strategy.configure_train(1, record_from_numpy(global_arrays), ConfigRecord(), grid)
    return strategy, by_device(msgs)


def _full(value: float) -> dict[str, np.ndarray]:
    """An update of GLOBAL's shapes with every entry equal to ``value``."""
    return {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}


def _statuses(strategy: FleetStrategy) -> dict[int, tuple[str, str]]:
    assert strategy.last is not None
    return {r.device: (r.status, r.error) for r in strategy.last.reports}


def test_statuses_are_counted_and_only_ok_updates_are_aggregated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 8 devices; 7 "steady" (never drop out) and 1 "flaky" (always drops out mid-round -> offline)
    server_identity(monkeypatch)
    flat = {**FLOAT, "federation.num-devices": 8, "federation.devices-per-round": 8,
            "devices.availability": "profile",
            "devices.custom.steady.base": "rpi4", "devices.custom.steady.availability.p_dropout": 0.0,
            "devices.custom.flaky.base": "rpi4", "devices.custom.flaky.availability.p_dropout": 1.0,
            "devices.profiles.steady": 0.875, "devices.profiles.flaky": 0.125}
    strategy, ins = _round(flat, GLOBAL)
    flaky = [d for d, p in enumerate(strategy.profiles) if p == "flaky"]
    assert len(flaky) == 1 and flaky[0] not in ins  # the offline device gets no message
    d = sorted(ins)  # the 7 steady devices
    crash = ("Traceback (most recent call last):\n  File \"device.py\", line 1\n"
             "InjectedCrash: injected crash (faults.crash)\n")
    replies = [
        device_reply(ins[d[0]], _full(1.0), weight=1.0, uplink_bytes=100),
        device_reply(ins[d[1]], _full(2.0), weight=1.0, uplink_bytes=200),
        device_reply(ins[d[2]], _full(4.0), weight=2.0, uplink_bytes=300),
        error_reply(ins[d[3]], crash),
        device_reply(ins[d[4]], None, status="straggler", weight=50.0),  # deadline drop: no payload
        device_reply(ins[d[5]], None, status="oom", error="needs 3.0 MB, budget 1 MB", weight=50.0),
        # d[6] never answers (hung past the round timeout)
    ]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: one report per sampled device, with its status
    st = _statuses(strategy)
    assert Counter(s for s, _ in st.values()) == {"ok": 3, "failed": 2, "straggler": 1, "oom": 1, "offline": 1}
    assert st[d[3]] == ("failed", "InjectedCrash: injected crash (faults.crash)")  # the traceback's last line
    assert st[d[6]] == ("failed", "no reply within federation.round-timeout-s")
    assert st[flaky[0]] == ("offline", "went offline during the round")
    assert strategy.last.sampled == 8
    assert strategy.last.uplink_bytes == 600  # only the ok uploads count
    # Only the three ok updates are averaged: (1*1 + 1*2 + 2*4) / 4 = 2.75 everywhere
    out = arrays_of(arrays)
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], np.full(GLOBAL[k].shape, 2.75), rtol=1e-6)


def test_weighted_mean_of_a_tiny_model_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: three devices with different tensors and weights 1, 2, 5
    server_identity(monkeypatch)
    strategy, ins = _round({**FLOAT, "federation.num-devices": 3, "federation.devices-per-round": 3}, GLOBAL)
    ups = {0: ({"w": [[1.0, 0.0], [2.0, -1.0]], "b": [0.5, 1.0]}, 1.0),
           1: ({"w": [[3.0, 4.0], [0.0, 1.0]], "b": [-0.5, 2.0]}, 2.0),
           2: ({"w": [[-1.0, 2.0], [1.0, 0.5]], "b": [1.5, 0.0]}, 5.0)}
    # Replies arrive in reverse order: the mean must not depend on it
    replies = [device_reply(ins[dev], up, weight=w) for dev, (up, w) in sorted(ups.items(), reverse=True)]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: sum(w_i * x_i) / 8, entry by entry
    out = arrays_of(arrays)
    np.testing.assert_allclose(out["w"], [[(1 + 6 - 5) / 8, (0 + 8 + 10) / 8],
                                          [(2 + 0 + 5) / 8, (-1 + 2 + 2.5) / 8]], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [(0.5 - 1.0 + 7.5) / 8, (1.0 + 4.0 + 0.0) / 8], rtol=1e-6)
    assert [s for s, _ in _statuses(strategy).values()] == ["ok"] * 3


def test_update_at_another_bit_width_is_decoded_at_its_own_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a 4-bit global model (qweights codec) on rpi4 (trains at 4 bits) and phone-low (8 bits only)
    server_identity(monkeypatch)
    flat = {**FLOAT, "federation.num-devices": 2, "federation.devices-per-round": 2, "quant.weight-bits": 4,
            "quant.act-bits": 4, "quant.codec": "qweights", "devices.profiles.rpi4": 0.5,
            "devices.profiles.phone-low": 0.5}
    step_key = "fc.weight_quant.step"
    glob = {"fc.weight": np.zeros((2, 2), np.float32), step_key: np.array([0.125], np.float32),
            "fc.bias": np.zeros(2, np.float32)}
    qinfo4 = QuantInfo({"fc.weight": QuantSpec(4, step_key, True)})
    strategy, ins = _round(flat, glob, codec="qweights", qinfo=qinfo4)
    widths = {dev: int(m.content["config"]["weight-bits"]) for dev, m in ins.items()}
    own = next(d for d, b in widths.items() if b == 4)
    other = next(d for d, b in widths.items() if b == 8)
    codec, rng = build_codec("qweights"), np.random.default_rng(0)
    # The 4-bit device: codes [2, -2, 4, 6] (all inside 4-bit [-8, 7]) at its own step 0.25
    local4 = {"fc.weight": np.array([[0.5, -0.5], [1.0, 1.5]], np.float32), step_key: np.array([0.25], np.float32),
              "fc.bias": np.array([1.0, 2.0], np.float32)}
    # The 8-bit device: codes [20, -6, 1, 5] at step 0.5 (20 does not fit 4 bits: decoding at 4 bits would garble it)
    local8 = {"fc.weight": np.array([[10.0, -3.0], [0.5, 2.5]], np.float32), step_key: np.array([0.5], np.float32),
              "fc.bias": np.array([3.0, 4.0], np.float32)}
    pay4 = codec.encode(local4, glob, rng, qinfo4)
    pay8 = codec.encode(local8, glob, rng, QuantInfo({"fc.weight": QuantSpec(8, step_key, True)}))
    assert "fc.weight::codes" in pay8 and "fc.weight" not in pay8  # really sent as packed 8-bit codes
    replies = [device_reply(ins[own], pay4, weight=1.0), device_reply(ins[other], pay8, weight=3.0)]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: weights decoded exactly at each width, then (1 * 4-bit + 3 * 8-bit) / 4;
    # the 8-bit device's step is not comparable, so the global step (0.125) stands in for it
    assert [s for s, _ in _statuses(strategy).values()] == ["ok", "ok"]
    out = arrays_of(arrays)
    np.testing.assert_allclose(out["fc.weight"], [[(0.5 + 30.0) / 4, (-0.5 - 9.0) / 4],
                                                  [(1.0 + 1.5) / 4, (1.5 + 7.5) / 4]], rtol=1e-6)
    np.testing.assert_allclose(out[step_key], [(0.25 + 3 * 0.125) / 4], rtol=1e-6)
    np.testing.assert_allclose(out["fc.bias"], [(1.0 + 9.0) / 4, (2.0 + 12.0) / 4], rtol=1e-6)


def test_over_selection_keeps_the_first_finishers_by_simulated_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: 2 per round, over-selected x2 -> 4 sampled; simulated finish times 4.0, 2.0, 1.0, 2.0 s
    server_identity(monkeypatch)
    flat = {**FLOAT, "federation.num-devices": 4, "federation.devices-per-round": 2, "devices.over-selection": 2.0}
    strategy, ins = _round(flat, GLOBAL)
    assert sorted(ins) == [0, 1, 2, 3]
    times = {0: 4.0, 1: 2.0, 2: 1.0, 3: 2.0}
    values = {0: 10.0, 1: 1.0, 2: 3.0, 3: 20.0}
    # Arrival order differs from finish order: the device that arrives first (3) finishes late
    replies = [device_reply(ins[d], _full(values[d]), weight=1.0, sim_time_s=times[d]) for d in (3, 0, 2, 1)]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: device 2 (1.0 s) and device 1 (2.0 s, wins the tie with device 3 by lower index) are kept
    st = _statuses(strategy)
    assert {d for d, (s, _) in st.items() if s == "ok"} == {1, 2}
    assert st[0][0] == st[3][0] == "straggler" and "over-selected" in st[3][1]
    assert strategy.last.sim_time_s == 2.0  # the round lasts until the K-th finisher
    out = arrays_of(arrays)
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], np.full(GLOBAL[k].shape, (1.0 + 3.0) / 2), rtol=1e-6)


def test_without_over_selection_every_ok_reply_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the same finish times, but over-selection 1.0: all 4 sampled devices are wanted
    server_identity(monkeypatch)
    strategy, ins = _round({**FLOAT, "federation.num-devices": 4, "federation.devices-per-round": 4}, GLOBAL)
    times = {0: 4.0, 1: 2.0, 2: 1.0, 3: 2.0}
    replies = [device_reply(ins[d], _full(float(d)), weight=1.0, sim_time_s=times[d]) for d in range(4)]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: nobody is a straggler; the round lasts as long as the slowest (4.0 s); mean (0+1+2+3)/4
    assert [s for s, _ in _statuses(strategy).values()] == ["ok"] * 4
    assert strategy.last.sim_time_s == 4.0
    np.testing.assert_allclose(arrays_of(arrays)["w"], np.full((2, 2), 1.5), rtol=1e-6)


BAD_UPDATES = [
    # (the bad device's update, start of its rejection reason)
    (lambda: {"w": np.array([[1.0, np.nan], [1.0, 1.0]], np.float32), "b": np.ones(2, np.float32)},
     "'w': 1 non-finite value(s) (NaN/Inf)"),
    (lambda: {"w": np.ones((2, 2), np.float32), "b": np.ones(3, np.float32)},
     "undecodable update: 'b': payload shape (3,) != base (2,)"),
    # norm 1000*sqrt(6) > 10 x median(sqrt6, 2 sqrt6, 3 sqrt6, 1000 sqrt6) = 25 sqrt(6)
    (lambda: _full(1000.0), "delta norm 2449 > 10 x round median"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_UPDATES, ids=["nan", "wrong-shape", "huge-norm"])
def test_guard_keeps_a_bad_update_out_of_the_mean(monkeypatch: pytest.MonkeyPatch, bad, reason: str) -> None:
    # Prepare: three honest devices (all-1, all-2, all-3; weights 1, 1, 2) and a heavy bad device 3
    server_identity(monkeypatch)
    strategy, ins = _round({**FLOAT, "federation.num-devices": 4, "federation.devices-per-round": 4}, GLOBAL)
    replies = [device_reply(ins[0], _full(1.0), weight=1.0), device_reply(ins[1], _full(2.0), weight=1.0),
               device_reply(ins[2], _full(3.0), weight=2.0), device_reply(ins[3], bad(), weight=4.0)]

    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)

    # Assert: device 3 is rejected with the reason; the mean is the honest (1 + 2 + 2*3) / 4 = 2.25
    st = _statuses(strategy)
    assert st[3][0] == "rejected" and st[3][1].startswith(reason), st[3]
    assert [st[d][0] for d in (0, 1, 2)] == ["ok"] * 3
    out = arrays_of(arrays)
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], np.full(GLOBAL[k].shape, 2.25), rtol=1e-6)


def test_a_round_with_no_usable_update_aggregates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: one crash, one NaN update
    server_identity(monkeypatch)
    strategy, ins = _round({**FLOAT, "federation.num-devices": 2, "federation.devices-per-round": 2}, GLOBAL)
    nan = _full(1.0)
    nan["b"][0] = np.nan
    replies = [error_reply(ins[0], "RuntimeError: boom"), device_reply(ins[1], nan, weight=1.0)]

    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert: nothing to aggregate, both devices recorded
    assert arrays is None and metrics is None
    assert _statuses(strategy) == {0: ("failed", "RuntimeError: boom"),
                                   1: ("rejected", "'b': 1 non-finite value(s) (NaN/Inf)")}
    assert strategy.last.sim_time_s == 0.0


class _TunedFedAvg:
    """A user's inner strategy from docs/strategies.md's contract: it sets entries in its round config."""

    def __new__(cls):  # noqa: ANN204 - builds a FedAvg whose configure_train adds three entries
        inner = build_inner_strategy("fedavg", {})
        plain = inner.configure_train

        def configure_train(server_round, arrays, config, grid):  # noqa: ANN001, ANN202
            config["lr"], config["proximal-mu"], config["clip"] = 0.005, 0.1, 3.0
            return plain(server_round, arrays, config, grid)

        inner.configure_train = configure_train
        return inner


def test_exactly_the_documented_entries_reach_a_device(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: docs/strategies.md says `proximal-mu` and `lr` are forwarded, other entries are not
    server_identity(monkeypatch)
    cfg = parse_config({**FLOAT, "federation.num-devices": 2, "federation.devices-per-round": 2})
    strategy = FleetStrategy(_TunedFedAvg(), cfg, build_codec("fp32"), None, {"ref": np.zeros(1, np.float32)}, "h")
    grid = RosterGrid(2)
    strategy.discover(grid, timeout=5.0)

    # Execute
    msgs = by_device(strategy.configure_train(1, record_from_numpy(GLOBAL), ConfigRecord(), grid))

    # Assert: both devices got the inner strategy's rate and mu; "clip" is in no instruction
    assert len(msgs) == 2
    for msg in msgs.values():
        ins = instruction_of(msg)
        assert (ins.lr, ins.proximal_mu) == (0.005, 0.1)
        assert "clip" not in msg.content["config"]
