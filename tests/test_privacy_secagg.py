"""Secure aggregation: integer vectors summed exactly by Flower's SecAgg+, and the privacy benchmark's smoke run."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fleet import protocol as P
from fleet.arrays import record_from_numpy
from fleet.client_app import _secagg_when_asked
from fleet.config.scenario import parse_config
from fleet.privacy import secagg
from fleet.quant.spec import QuantInfo, QuantSpec
from simulations.run.local_engine import LocalGrid
from strategies.secagg import SecureGrid, secure_mean

BASE = {"a.weight": np.zeros((3, 4), np.float32), "b.bias": np.zeros(5, np.float32)}


@pytest.fixture
def server_identity() -> Iterator[None]:
    """Messages take their sender from Flower's process identity, which its runtimes set."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _app(vectors: dict[int, list[np.ndarray]], statuses: dict[int, str]) -> ClientApp:
    """Devices that answer SecAgg+'s training stage with fixed integer vectors."""
    app = ClientApp(mods=[_secagg_when_asked])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        dev = int(context.node_config["partition-id"])
        rep = P.DeviceReport(device=dev, status=statuses.get(dev, "ok"))
        return Message(secagg.fitres_content(rep, vectors[dev]), reply_to=msg)

    return app


def _round(n: int, vectors: dict[int, list[np.ndarray]], statuses: dict[int, str]) -> list[Message]:
    cfg = parse_config({"federation.num-devices": n, "federation.devices-per-round": n,
                        "privacy.secure-aggregation": True, "strategy.guard": False})
    grid = SecureGrid(LocalGrid(_app(vectors, statuses), n), cfg)
    content = RecordDict({P.ARRAYS: record_from_numpy(BASE), P.CONFIG: ConfigRecord({"server-round": 1})})
    msgs = [Message(content, dst_node_id=i + 1, message_type=MessageType.TRAIN) for i in range(n)]
    return grid.send_and_receive(msgs)


def test_secagg_plus_sums_integer_codes_exactly(server_identity: None) -> None:
    rng = np.random.default_rng(0)
    n = 5
    vectors = {d: [rng.integers(-(2**20), 2**20, size=np.shape(BASE[k])) for k in sorted(BASE)] for d in range(n)}
    replies = _round(n, vectors, {})
    assert len(replies) == n and not any(r.has_error() for r in replies)
    found = secure_mean(replies[0].content)
    assert found is not None
    mean, count = found
    assert count == n
    for i, k in enumerate(sorted(BASE)):
        total = sum(vectors[d][i] for d in range(n))
        assert np.array_equal(np.rint(mean[k] * count).astype(np.int64), total)  # exact, not approximately
    # the server holds no single device's vector: only the first reply carries anything, and it is the mean
    assert all(secure_mean(r.content) is None for r in replies[1:])


def test_a_device_that_did_not_train_counts_for_nothing(server_identity: None) -> None:
    n = 4
    vectors = {d: [np.full(np.shape(BASE[k]), d + 1, np.int64) for k in sorted(BASE)] for d in range(n)}
    vectors[2] = [np.zeros(np.shape(BASE[k]), np.int64) for k in sorted(BASE)]  # what a straggler sends
    found = secure_mean(_round(n, vectors, {2: "straggler"})[0].content)
    assert found is not None
    mean, count = found
    assert count == 3
    assert np.allclose(mean["a.weight"], (1 + 2 + 4) / 3)


def test_integer_encoding_round_trips_codes_and_fixed_point() -> None:
    spec = QuantSpec(bits=2, signed=True, step_key="a.weight_quant.step")
    info = QuantInfo(weights={"a.weight": spec})
    base = {"a.weight": np.zeros((2, 2), np.float32), "a.weight_quant.step": np.full(1, 0.25, np.float32),
            "b.bias": np.zeros(3, np.float32)}
    codes = np.array([[-2, -1], [0, 1]])
    from fleet.quant.packing import pack_codes

    payload = {"a.weight::codes": pack_codes(codes, 2, signed=True), "a.weight_quant.step": base["a.weight_quant.step"],
               "b.bias": np.array([0.5, -0.25, 1.0], np.float32)}
    ints = secagg.to_integers(payload, base, info, np.random.default_rng(0))
    assert np.array_equal(ints[0], codes)  # sorted keys: a.weight, a.weight_quant.step, b.bias
    assert not ints[1].any()  # the step is the server's own: nothing sent
    out = secagg.from_integers([i.astype(np.float64) for i in ints], base, info)
    assert np.allclose(out["a.weight"], codes * 0.25)
    assert np.allclose(out["b.bias"], [0.5, -0.25, 1.0])
    assert out["a.weight_quant.step"][0] == np.float32(0.25)


def test_privacy_benchmark_quick(tmp_path) -> None:  # noqa: ANN001
    from simulations.benchmarks.privacy import main

    out = tmp_path / "privacy.json"
    assert main(["--quick", "--out", str(out)]) == 0
    cells = {c["name"]: c for c in json.loads(out.read_text())["cells"]}
    assert all(c["status"] == "complete" for c in cells.values()), cells
    low, high = cells["W2A2 dp sigma=0.3"], cells["W2A2 dp sigma=1"]
    assert low["epsilon_pld"] > high["epsilon_pld"] > 0 and low["epsilon_rdp"] > high["epsilon_rdp"]
    assert cells["W2A2 no-dp"]["epsilon_pld"] is None
    assert cells["W2A2 secagg"]["uplink_bytes_per_device_round"] > cells["W2A2 no-dp"]["uplink_bytes_per_device_round"]
    assert 0 <= cells["W4A4 no-dp"]["mia_loss_auc"] <= 1
