"""Cost model: FLOP counting, round cost arithmetic and deadline policies."""

from __future__ import annotations

import pytest
from torch import nn

from fleet.hardware.clock import RoundCost, apply_deadline, device_round_cost
from fleet.hardware.flops import model_flops
from fleet.hardware.profiles import DeviceProfile
from fleet.model.architectures import build_model


@pytest.fixture
def board() -> DeviceProfile:
    return DeviceProfile("board", gflops=2.0, memory_mb=64.0, uplink_mbps=8.0,
                         downlink_mbps=16.0, latency_ms=50.0, bits=(8, 32),
                         energy_j_per_gflop=0.5, radio_j_per_mb=2.0)


def test_model_flops_hand_counted() -> None:
    # Prepare: conv 1->2 (3x3, pad 1, no bias) on 4x4, ReLU, Linear 32->3 with bias.
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32, 3))
    # Execute
    flops = model_flops(model, (1, 4, 4))
    # Assert: conv out 2*4*4 = 32 elements x 9 MACs = 288 MACs -> 576 FLOP;
    # ReLU 32; Linear 32*3 = 96 MACs -> 192 + 3 bias adds = 195. 576 + 32 + 195 = 803.
    assert flops == 803


def test_model_flops_resnet20_matches_published_macs() -> None:
    # ResNet-20 on CIFAR is ~40.6M MACs = ~81 MFLOP of conv/linear; BN, ReLU and
    # pooling add about 1 MFLOP of elementwise work on top.
    model = build_model("resnet20", (3, 32, 32), 10)
    model.train()
    flops = model_flops(model, (3, 32, 32))
    assert 80e6 < flops < 86e6
    assert model.training and all(m.training for m in model.modules())  # modes restored


def test_device_round_cost_hand_computed(board: DeviceProfile) -> None:
    # Execute
    cost = device_round_cost(board, flops_per_sample=1_000_000, train_samples=100,
                             teacher_samples=50, scoring_samples=30,
                             uplink_bytes=1_000_000, downlink_bytes=2_000_000,
                             qat_overhead=1.5)
    # Assert: passes = 3*100*1.5 + 50 + 30 = 530 -> 530e6 FLOP = 0.53 GFLOP;
    # compute = 0.53 / 2 = 0.265 s.
    assert cost.gflop == pytest.approx(0.53)
    assert cost.compute_s == pytest.approx(0.265)
    # up: 1e6 B * 8 / 8e6 bit/s = 1 s; down: 2e6 * 8 / 16e6 = 1 s; + 2 * 0.05 s latency
    assert cost.comm_s == pytest.approx(2.1)
    assert cost.total_s == pytest.approx(2.365)
    # energy: 0.53 GFLOP * 0.5 J + 3 MB * 2 J = 0.265 + 6 = 6.265 J
    assert cost.energy_j == pytest.approx(6.265)


def test_device_round_cost_rejects_negative_work(board: DeviceProfile) -> None:
    with pytest.raises(ValueError, match="train_samples"):
        device_round_cost(board, 1000, -1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="qat_overhead"):
        device_round_cost(board, 1000, 1, 0, 0, 0, 0, qat_overhead=0.5)


COST = RoundCost(compute_s=4.0, comm_s=1.0, total_s=5.0, energy_j=10.0, gflop=8.0)


@pytest.mark.parametrize("policy", ["drop", "cut"])
def test_deadline_met_or_absent_is_ok(policy: str) -> None:
    assert apply_deadline(COST, 6.0, policy) == ("ok", 1.0)
    assert apply_deadline(COST, 5.0, policy) == ("ok", 1.0)  # exactly on time
    assert apply_deadline(COST, 0.0, policy) == ("ok", 1.0)  # no deadline
    assert apply_deadline(COST, -1.0, policy) == ("ok", 1.0)


def test_deadline_drop_makes_a_straggler() -> None:
    assert apply_deadline(COST, 3.0, "drop") == ("straggler", 0.0)


def test_deadline_cut_keeps_the_fraction_that_fits() -> None:
    # 3 s deadline - 1 s comm = 2 s of the 4 s compute -> half the work.
    assert apply_deadline(COST, 3.0, "cut") == ("ok", 0.5)
    # comm alone (1 s) does not fit a 0.5 s deadline, nor leaves time at exactly 1 s
    assert apply_deadline(COST, 0.5, "cut") == ("straggler", 0.0)
    assert apply_deadline(COST, 1.0, "cut") == ("straggler", 0.0)


def test_deadline_unknown_policy() -> None:
    with pytest.raises(ValueError, match="valid: drop, cut"):
        apply_deadline(COST, 3.0, "wait")


def test_matmul_only_counts_qcore_layers_like_the_float_ones() -> None:
    # Prepare: conv 1->2 (3x3, pad 1) on 4x4 and linear 32->3, float and as QCore's integer-code layers
    import torch

    from fleet.qcore.quant import to_qcore

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    qmodel = to_qcore(model, 4, torch.randn(8, 1, 4, 4))

    # Execute
    flops, qflops = model_flops(model, (1, 4, 4), matmul_only=True), model_flops(qmodel, (1, 4, 4), matmul_only=True)

    # Assert: 2 * (16 outputs * 2 channels * 9 + 32 * 3) MACs, no bias, no ReLU
    assert flops == qflops == 2 * (16 * 2 * 9 + 32 * 3)


def test_cut_does_not_count_compute_already_spent() -> None:
    # Prepare: 4 s compute of which 1 s scoring (done before training), 1 s comm, deadline 3 s
    # Execute / Assert: 3 - 1 comm - 1 scoring = 1 s left for 3 s of training -> a third of it
    assert apply_deadline(COST, 3.0, "cut", fixed_s=1.0) == ("ok", 1.0 / 3.0)
    assert apply_deadline(COST, 2.0, "cut", fixed_s=1.0) == ("straggler", 0.0)  # nothing left after scoring
