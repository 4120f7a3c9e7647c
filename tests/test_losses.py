"""KD loss, cascaded layer correction, feature taps and beta calibration."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fleet.model.architectures import block_names, build_model
from fleet.train.losses import FeatureTaps, auto_beta, clc_loss, kd_loss


def test_kd_loss_by_hand_and_teacher_detached() -> None:
    # Prepare: student p = (.75, .25), teacher p = (.5, .5)
    student = torch.log(torch.tensor([[0.75, 0.25]])).requires_grad_()
    teacher = torch.zeros(1, 2, requires_grad=True)
    # Execute
    loss = kd_loss(student, teacher)
    loss.backward()
    # Assert: -(0.5 ln .75 + 0.5 ln .25) = 0.143841 + 0.693147 = 0.836988
    assert loss.item() == pytest.approx(0.836988, abs=1e-6)
    assert teacher.grad is None and student.grad is not None


def test_clc_by_hand_for_both_mappings() -> None:
    # KL([.5, .5] || [.75, .25]) = 0.5 ln(.5/.75) + 0.5 ln(.5/.25) = 0.143841 per layer
    q_flat, f_flat = torch.zeros(1, 2), torch.log(torch.tensor([[3.0, 1.0]]))
    assert clc_loss([q_flat, q_flat], [f_flat, f_flat]).item() == pytest.approx(
        2 * 0.143841, abs=1e-6
    )
    # channel-softmax: (1, 2, 2, 2) maps whose channel means are the logits above
    q_map = torch.zeros(1, 2, 2, 2)
    f_map = f_flat[:, :, None, None] + torch.tensor(
        [[1.0, -1.0], [-1.0, 1.0]]
    )  # mean kept
    got = clc_loss([q_map], [f_map], mapping="channel-softmax").item()
    assert got == pytest.approx(0.143841, abs=1e-6)


def _cnn_pair() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    fp = build_model("cnn", (1, 8, 8), 10).eval()
    q = copy.deepcopy(fp)
    return q, fp, torch.randn(4, 1, 8, 8)


def test_feature_taps_capture_named_blocks() -> None:
    q, _, x = _cnn_pair()
    with FeatureTaps(q, block_names(q)) as taps:
        q(x)
    shapes = [tuple(t.shape) for t in taps.features]
    assert shapes == [(4, 16, 8, 8), (4, 32, 8, 8), (4, 64, 4, 4)]
    assert not q.block1._forward_hooks  # hooks removed on exit


def test_clc_zero_for_same_model_positive_otherwise() -> None:
    # Prepare
    q, fp, x = _cnn_pair()
    names = block_names(fp)
    # Execute
    with FeatureTaps(q, names) as tq, FeatureTaps(fp, names) as tf:
        q(x)
        fp(x)
        same = clc_loss(tq.features, tf.features)
        with torch.no_grad():
            q.conv2.weight.add_(0.3 * torch.randn_like(q.conv2.weight))
        q(x)
        fp(x)
        differ = clc_loss(tq.features, tf.features)
        differ_ch = clc_loss(tq.features, tf.features, mapping="channel-softmax")
    # Assert
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    assert differ.item() > 1e-6 and differ_ch.item() > 1e-6
    differ.backward()
    assert q.conv2.weight.grad is not None and fp.conv2.weight.grad is None


def test_beta_weighting_and_auto_beta() -> None:
    # beta * L_CLC == ratio * L_KD: 2.0 * 0.5 / 0.01 = 100
    beta = auto_beta(2.0, 0.01, 0.5)
    assert beta == pytest.approx(100.0)
    assert beta * 0.01 == pytest.approx(0.5 * 2.0)
    assert auto_beta(2.0, 0.0, 1.0) == 0.0
    assert auto_beta(2.0, 0.0, 1.0, fallback=1e5) == 1e5
    assert auto_beta(2.0, math.nan, 1.0) == 0.0
    with pytest.raises(ValueError):
        auto_beta(1.0, 1.0, -1.0)
    # The total loss is linear in beta.
    q_f, f_f = [torch.zeros(1, 2)], [torch.log(torch.tensor([[3.0, 1.0]]))]
    kd = kd_loss(torch.zeros(1, 2), torch.zeros(1, 2))
    total = kd + 1e3 * clc_loss(q_f, f_f)
    assert total.item() == pytest.approx(math.log(2) + 1e3 * 0.143841, rel=1e-5)


def test_unknown_layer_name_and_mapping_errors() -> None:
    q, _, _ = _cnn_pair()
    with pytest.raises(ValueError, match=r"block9.*block1"):
        FeatureTaps(q, ["block1", "block9"])
    with pytest.raises(ValueError, match="flat-softmax"):
        clc_loss([torch.zeros(1, 2)], [torch.zeros(1, 2)], mapping="spatial")
    with pytest.raises(ValueError):
        clc_loss([torch.zeros(1, 2)], [])


def test_taps_work_on_a_quantized_copy() -> None:
    convert = pytest.importorskip("fleet.quant.convert")
    _, fp, x = _cnn_pair()
    qm = convert.quantize_model(fp, weight_bits=4, act_bits=4)
    with FeatureTaps(qm, block_names(fp)) as taps:
        qm(x)
    assert len(taps.features) == 3
