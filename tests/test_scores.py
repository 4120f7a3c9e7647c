"""Scores (EVS, DS, RES), the scoring pass and the EVS weight schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fleet.coreset.schedules import SCHEDULES
from fleet.coreset.scores import ds, evs, res, res_from_logits, score_pass

P_Q = torch.tensor([[0.6, 0.3, 0.1]])
P_F = torch.tensor([[0.2, 0.5, 0.3]])


def test_evs_by_hand() -> None:
    # p_q - onehot(0) = (-0.4, 0.3, 0.1) -> sqrt(0.16 + 0.09 + 0.01) = sqrt(0.26)
    assert evs(P_Q, torch.tensor([0])).item() == pytest.approx(math.sqrt(0.26))
    # label 2: (0.6, 0.3, -0.9) -> sqrt(0.36 + 0.09 + 0.81) = sqrt(1.26)
    assert evs(P_Q, torch.tensor([2])).item() == pytest.approx(math.sqrt(1.26))


def test_ds_by_hand() -> None:
    # (0.4, -0.2, -0.2) -> sqrt(0.16 + 0.04 + 0.04) = sqrt(0.24)
    assert ds(P_Q, P_F).item() == pytest.approx(math.sqrt(0.24))


def test_res_by_hand_and_argument_order() -> None:
    # KL(p_q || p_f) = 0.6 ln 3 + 0.3 ln 0.6 + 0.1 ln(1/3)
    #               = 0.659167 - 0.153248 - 0.109861 = 0.396058
    # KL(p_f || p_q) = 0.2 ln(1/3) + 0.5 ln(5/3) + 0.3 ln 3
    #               = -0.219722 + 0.255413 + 0.329584 = 0.365274
    forward = res(P_Q, P_F).item()
    backward = res(P_F, P_Q).item()
    assert forward == pytest.approx(0.396058, abs=1e-5)
    assert backward == pytest.approx(0.365274, abs=1e-5)
    assert forward != pytest.approx(backward)


def test_res_from_logits_matches_probabilities_and_is_finite() -> None:
    z_q, z_f = P_Q.log() + 1.7, P_F.log() - 0.3  # shifts do not change softmax
    assert res_from_logits(z_q, z_f).item() == pytest.approx(0.396058, abs=1e-5)
    extreme = res_from_logits(
        torch.tensor([[0.0, 0.0]]), torch.tensor([[200.0, -200.0]])
    )
    assert torch.isfinite(extreme).all()  # p_f underflows to 0, log-softmax does not


def test_schedules_end_points_and_middle() -> None:
    middle = {
        "paper": math.cos(math.pi / 4),
        "code": 0.5,
        "linear": 0.5,
        "quadratic": 0.75,
        "sqrt": 1 - math.sqrt(0.5),
        "evs-only": 1.0,
        "ds-only": 0.0,
    }
    for name, expected in middle.items():
        assert SCHEDULES[name](5, 10) == pytest.approx(expected), name
    for name in ("paper", "code", "linear", "quadratic", "sqrt"):
        assert SCHEDULES[name](0, 10) == pytest.approx(1.0)
        assert SCHEDULES[name](10, 10) == pytest.approx(0.0, abs=1e-12)
        assert SCHEDULES[name](15, 10) == pytest.approx(
            0.0, abs=1e-12
        )  # clipped past T


def test_unknown_schedule_is_refused_listing_the_registry() -> None:
    from fleet.config.scenario import parse_config
    from fleet.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"^coreset.schedule: must be one of paper, code"):
        parse_config({"coreset.schedule": "cosine"})


class Identity3(nn.Module):
    """Logits = input; a last Linear (identity) for the feature hook."""

    def __init__(self, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.copy_(bias if bias is not None else torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def test_score_pass_outputs_passes_and_restores_modes() -> None:
    # Prepare: Q outputs log p_q, F shifts the logits to log p_f.
    q, f = Identity3(), Identity3(bias=(P_F.log() - P_Q.log())[0])
    q.train()
    f.eval()
    x = P_Q.log().repeat(5, 1)  # (5, 3)
    y = torch.zeros(5, dtype=torch.long)
    # Execute
    out = score_pass(q, f, x, y, batch_size=2, features=True)
    # Assert
    assert out["passes"] == 10
    assert out["evs"] == pytest.approx(torch.full((5,), math.sqrt(0.26)))
    assert out["ds"] == pytest.approx(torch.full((5,), math.sqrt(0.24)))
    assert out["res"] == pytest.approx(torch.full((5,), 0.396058), abs=1e-5)
    assert torch.equal(out["features_f"], x)  # input of the last Linear
    assert q.training and not f.training


def test_score_pass_q_only_spends_one_pass_per_sample() -> None:
    out = score_pass(
        Identity3(), None, torch.randn(7, 3), torch.zeros(7, dtype=torch.long)
    )
    assert out["passes"] == 7
    assert "ds" not in out and "res" not in out


def test_the_frozen_references_outputs_are_computed_once_per_key_and_are_the_same(monkeypatch) -> None:
    from fleet.coreset import scores

    torch.manual_seed(0)
    q, f = nn.Sequential(nn.Linear(4, 3)), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    calls = []
    f.register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(scores, "_FP_MEMO", type(scores._FP_MEMO)())
    monkeypatch.setattr(scores, "_MEMO_BYTES", [0])
    fresh = score_pass(q, f, x, y, batch_size=16)
    first = score_pass(q, f, x, y, batch_size=16, fp_key=("ref", 0))
    with torch.no_grad():
        q[0].weight.mul_(2)  # the quantized model changes between rounds; F's outputs do not
    second = score_pass(q, f, x, y, batch_size=16, fp_key=("ref", 0))
    assert len(calls) == 3 + 3  # three batches without the key, three the first time with it, none after
    for key in ("logits_f", "ds", "res", "evs"):
        assert torch.equal(fresh[key], first[key])
    assert torch.equal(first["logits_f"], second["logits_f"]) and second["passes"] == first["passes"] == 80
    assert not torch.equal(first["res"], second["res"])  # the live Q model is scored again
    score_pass(q, f, x, y, batch_size=16, fp_key=("ref", 1))  # another device: computed
    assert len(calls) == 9


def test_the_memo_drops_the_least_recently_used_outputs_beyond_its_byte_budget(monkeypatch) -> None:
    from fleet.coreset import scores

    monkeypatch.setattr(scores, "_FP_MEMO", type(scores._FP_MEMO)())
    monkeypatch.setattr(scores, "_MEMO_BYTES", [0])
    monkeypatch.setattr(scores, "FP_MEMO_BYTES", 2 * 40 * 3 * 4)  # two devices' logits
    f = nn.Linear(4, 3)
    x = torch.randn(40, 4)
    for dev in range(3):
        score_pass(None, f, x, torch.zeros(40, dtype=torch.long), fp_key=dev)
    assert [k[0] for k in scores._FP_MEMO] == [1, 2]
