"""``[privacy]`` end to end, in process (the project's ServerApp and ClientApp code on ``LocalGrid``, no Ray):
epsilon per round, the budget that ends a run cleanly, the audit that fails a run, and the config refusals."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message

from fleet import protocol as P
from fleet.arrays import record_to_numpy, to_array
from fleet.client_app import make_client_app
from fleet.config.scenario import ConfigError, parse_config
from fleet.data.splits import device_data
from fleet.errors import one_line
from fleet.privacy.accountant import Accountant
from fleet.privacy.audit import AuditError
from fleet.privacy.dp import device_noise_std, private_keys
from simulations.run.local_engine import LocalGrid, server_identity
from simulations.server_app import run_fleet
from strategies.sampling import sample_devices

DEVICES, PER_ROUND, ROUNDS = 6, 3, 3
SIGMA, CLIP, DELTA = 1.0, 0.5, 1e-5
LEAKER = 2  # the device whose reply carries its data; node LEAKER + 1 on LocalGrid


def _flat(cache: Path, **overrides: Any) -> dict[str, Any]:
    flat: dict[str, Any] = {
        "data.dataset": "digits", "model.arch": "mlp", "federation.num-devices": DEVICES,
        "federation.devices-per-round": PER_ROUND, "federation.rounds": ROUNDS, "model.pretrain-epochs": 2,
        "data.test-limit": 200, "quant.weight-bits": 4, "quant.act-bits": 4, "quant.codec": "qweights",
        "model.cache-dir": str(cache), "privacy.dp": True, "privacy.noise-multiplier": SIGMA,
        "privacy.clip-norm": CLIP, "privacy.delta": DELTA,
    }
    flat.update(overrides)
    return flat


def _run(flat: Mapping[str, Any], out: Path, grid_type: type[LocalGrid] = LocalGrid) -> dict[str, Any]:
    cfg = parse_config(dict(flat))
    out.mkdir(parents=True)
    with server_identity():
        return run_fleet(grid_type(make_client_app(cfg.to_flat()), cfg.federation.num_devices), cfg, out)


def _rounds(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def _epsilons(rounds: int) -> list[float]:
    """The worst epsilon after each of ``rounds`` rounds of 3 of 6 online devices, by the accountant."""
    acc = Accountant(SIGMA, DELTA)
    return [acc.step(PER_ROUND, DEVICES).worst for _ in range(rounds)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reference-cache")


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    out = tmp_path_factory.mktemp("dp") / "run"
    _run(_flat(cache), out)
    return out


# --------------------------------------------------------------------------- epsilon per round


def test_dp_run_reports_growing_epsilon_each_round(dp_run: Path) -> None:
    rows = _rounds(dp_run)
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    trained = rows[1:]
    assert all(r["devices_completed"] == PER_ROUND for r in trained)
    rdp = [r["epsilon_rdp"] for r in trained]
    pld = [r["epsilon_pld"] for r in trained]
    assert all(isinstance(v, float) and v > 0 for v in rdp + pld)
    assert rdp == sorted(set(rdp)) and pld == sorted(set(pld))  # strictly increasing
    # ...and they are the accountant's for 3 of 6 devices per round
    acc = Accountant(SIGMA, DELTA)
    for r in trained:
        eps = acc.step(PER_ROUND, DEVICES)
        assert r["epsilon_rdp"] == pytest.approx(eps.rdp, rel=1e-9)
        assert r["epsilon_pld"] == pytest.approx(eps.pld, rel=1e-9)


def test_dp_run_summary_has_final_epsilon_and_membership_attacks(dp_run: Path) -> None:
    summary = _summary(dp_run)
    last = _rounds(dp_run)[-1]
    assert summary["status"] == "complete" and summary["rounds_completed"] == ROUNDS
    pv = summary["privacy"]
    assert pv["dp"] is True and pv["rounds_charged"] == ROUNDS
    assert pv["noise_multiplier"] == SIGMA and pv["clip_norm"] == CLIP and pv["delta"] == DELTA
    assert pv["epsilon_rdp"] == last["epsilon_rdp"] and pv["epsilon_pld"] == last["epsilon_pld"]
    membership = pv["membership"]
    for attack in ("loss-threshold", "lira-offline"):
        assert 0.0 <= membership[attack]["auc"] <= 1.0, membership[attack]
        assert membership[attack]["members"] > 0 and membership[attack]["non_members"] > 0


def test_dp_devices_upload_on_the_servers_grid(dp_run: Path) -> None:
    # qweights under DP: codes at 4 bits plus the float32 tensors; every device-round uploaded the same size
    devices = [json.loads(line) for line in (dp_run / "devices.jsonl").read_text().splitlines()]
    ok = [d for d in devices if d["status"] == "ok"]
    assert len(ok) == ROUNDS * PER_ROUND
    assert len({d["uplink_bytes"] for d in ok}) == 1 and ok[0]["uplink_bytes"] > 0


# --------------------------------------------------------------------------- the budget


def test_budget_between_rounds_one_and_two_ends_the_run_after_round_one(tmp_path: Path, cache: Path) -> None:
    # Prepare: a budget between the epsilon after round 1 and after round 2
    e1, e2 = _epsilons(2)
    budget = (e1 + e2) / 2
    out = tmp_path / "run"
    # Execute
    summary = _run(_flat(cache, **{"privacy.max-epsilon": budget}), out)
    # Assert: a clean end with round 1 only
    assert summary == _summary(out)
    assert summary["status"] == "complete"
    assert summary["rounds_completed"] == 1
    assert "privacy.max-epsilon" in summary["stopped"] and "round 2" in summary["stopped"]
    assert [r["round"] for r in _rounds(out)] == [0, 1]
    assert summary["privacy"]["rounds_charged"] == 1
    assert max(summary["privacy"]["epsilon_rdp"], summary["privacy"]["epsilon_pld"]) == pytest.approx(e1)
    assert (out / "model.safetensors").exists()


def test_budget_below_round_one_trains_nothing(tmp_path: Path, cache: Path) -> None:
    e1 = _epsilons(1)[0]
    out = tmp_path / "run"
    summary = _run(_flat(cache, **{"privacy.max-epsilon": e1 / 2}), out)
    assert summary["status"] == "complete" and summary["rounds_completed"] == 0
    assert "round 1" in summary["stopped"]
    assert [r["round"] for r in _rounds(out)] == [0]
    assert summary["privacy"]["rounds_charged"] == 0
    assert "skipped" in summary["privacy"]["membership"]  # no device took part


# --------------------------------------------------------------------------- the audit


class _LeakyGrid(LocalGrid):
    """LocalGrid on which device LEAKER's train replies also carry its raw training images under 'x'."""

    data: np.ndarray

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            if (reply.metadata.src_node_id == LEAKER + 1 and not reply.has_error()
                    and P.ARRAYS in reply.content):
                rec = reply.content[P.ARRAYS]
                assert isinstance(rec, ArrayRecord)
                rec["x"] = to_array(self.data)
        return replies


def test_audit_fails_the_run_when_a_device_sends_its_data(tmp_path: Path, cache: Path) -> None:
    # Prepare: device 2 is sampled in round 1 (3 of 6, seed 0), and its reply gains its own images
    flat = _flat(cache)
    cfg = parse_config(flat)
    assert LEAKER in sample_devices(np.ones(DEVICES, bool), PER_ROUND, cfg.federation.seed, 1)
    _LeakyGrid.data = device_data(cfg, LEAKER).x.numpy().astype(np.float32)
    out = tmp_path / "run"
    # Execute
    with pytest.raises(AuditError) as info:
        _run(flat, out, _LeakyGrid)
    # Assert: the error names the device and the key; the summary says failed, in that one line
    msg = str(info.value)
    assert f"device {LEAKER} sent array 'x'" in msg and "\n" not in msg
    summary = _summary(out)
    assert summary["status"] == "failed"
    assert summary["error"] == one_line(info.value)
    assert f"device {LEAKER}" in summary["error"] and "'x'" in summary["error"]
    assert summary["rounds_completed"] == 0


def test_audit_off_lets_the_same_reply_through(tmp_path: Path, cache: Path) -> None:
    # The control: the same leaky grid without the audit completes round 1 (the key is then never checked)
    flat = _flat(cache, **{"privacy.audit": False, "federation.rounds": 1, "privacy.membership-inference": False})
    cfg = parse_config(flat)
    _LeakyGrid.data = device_data(cfg, LEAKER).x.numpy().astype(np.float32)
    summary = _run(flat, tmp_path / "run", _LeakyGrid)
    assert summary["status"] == "complete" and summary["rounds_completed"] == 1


class _SpyGrid(LocalGrid):
    """LocalGrid that keeps, per train reply, (global arrays sent, instruction, payload received)."""

    seen: list[tuple[dict[str, np.ndarray], P.DeviceInstruction, dict[str, np.ndarray]]]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        sent = {m.metadata.dst_node_id: (record_to_numpy(m.content[P.ARRAYS]),
                                         P.DeviceInstruction.from_record(m.content[P.CONFIG]))
                for m in messages if m.metadata.message_type == "train"}
        replies = super().send_and_receive(messages, timeout=timeout)
        for r in replies:
            if r.metadata.src_node_id in sent and not r.has_error():
                self.seen.append((*sent[r.metadata.src_node_id], record_to_numpy(r.content[P.ARRAYS])))
        return replies


def test_server_cannot_strip_a_devices_noise_from_the_config(tmp_path: Path, cache: Path) -> None:
    # Prepare: local noise (each update private by itself), fp32 so the server sees the noised update exactly
    flat = _flat(cache, **{"quant.codec": "fp32", "privacy.noise": "local", "federation.rounds": 1,
                           "privacy.membership-inference": False})
    cfg = parse_config(flat)
    _SpyGrid.seen = []
    _run(flat, tmp_path / "run", _SpyGrid)
    assert len(_SpyGrid.seen) == PER_ROUND
    std = device_noise_std(SIGMA, CLIP, "local", PER_ROUND)
    # Execute: the curious server tries generators derived from what it knows (seed, device, round, purpose)
    for base, ins, payload in _SpyGrid.seen:
        keys = private_keys(base)
        received = math.sqrt(sum(float(np.sum((np.float64(payload[k]) - base[k]) ** 2)) for k in keys))
        assert received > 10 * CLIP  # the noise is there, as sent
        for purpose in range(16):
            rng = np.random.default_rng([cfg.federation.seed, ins.device, ins.server_round, purpose])
            stripped = math.sqrt(sum(float(np.sum((np.float64(payload[k]) - rng.normal(0.0, std, base[k].shape)
                                                   - base[k]) ** 2)) for k in keys))
            # Assert: no such generator takes the update back to within the clipping norm
            assert stripped > 2 * CLIP, (ins.device, purpose, stripped)


# --------------------------------------------------------------------------- config refusals


@pytest.mark.parametrize("overrides,key", [
    ({"privacy.dp": True, "data.public-fraction": 0.0}, "data.public-fraction"),
    ({"privacy.secure-aggregation": True, "data.public-fraction": 0.0, "strategy.guard": False},
     "data.public-fraction"),
    ({"privacy.secure-aggregation": True}, "strategy.guard"),
    ({"privacy.secure-aggregation": True, "strategy.guard": False, "quant.codec": "delta-int8"}, "quant.codec"),
    ({"privacy.secure-aggregation": True, "strategy.guard": False, "quant.codec": "fp32",
      "devices.over-selection": 1.5}, "devices.over-selection"),
    ({"privacy.dp": True, "strategy.bn-stats": "average"}, "strategy.bn-stats"),
])
def test_config_refusals_name_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(overrides)
    assert info.value.key == key
    msg = str(info.value)
    assert msg.startswith(f"{key}: ") and "\n" not in msg, msg


@pytest.mark.parametrize("overrides", [
    {"privacy.dp": True},
    {"privacy.secure-aggregation": True, "strategy.guard": False, "quant.codec": "fp32"},
    {"privacy.secure-aggregation": True, "strategy.guard": False, "quant.codec": "qweights",
     "quant.weight-bits": 4, "quant.act-bits": 4},
    {"privacy.dp": False, "data.public-fraction": 0.0, "strategy.bn-stats": "average"},
])
def test_config_accepted_when_the_requirements_hold(overrides: dict[str, Any]) -> None:
    cfg = parse_config(overrides)  # no ConfigError: the refusals above are about the keys they name
    assert cfg.privacy.dp == overrides.get("privacy.dp", False)
