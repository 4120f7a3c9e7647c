"""QGT reconstruction: penalties, regularizer over layers, lambda warm-up, report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fleet.train.qgt import bottleneck_report, qgt_lambda, qgt_penalty, qgt_regularizer

FORMS = ("sqdist", "sin2", "sqdist-clip")


class FakeWeightQuant(nn.Module):
    """Duck-typed stand-in for fleet.quant's LsqQuantizer (step, bits, qmin, qmax)."""

    def __init__(self, step: float, bits: int, initialized: bool = True) -> None:
        super().__init__()
        self.step = nn.Parameter(torch.tensor([step]))
        self.bits, self.qmin, self.qmax = bits, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.register_buffer(
            "initialized", torch.tensor(int(initialized), dtype=torch.uint8)
        )


class FakeQLinear(nn.Linear):
    def __init__(
        self, weight: torch.Tensor, step: float, bits: int, initialized: bool = True
    ) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.weight.copy_(weight)
        self.weight_quant = FakeWeightQuant(step, bits, initialized)


@pytest.mark.parametrize("form", FORMS)
def test_penalty_zero_on_grid_positive_off_it(form: str) -> None:
    on_grid = torch.tensor([-1.0, -0.5, 0.0, 0.5])  # 2-bit grid, step .5: codes -2..1
    assert qgt_penalty(on_grid, 0.5, bits=2, form=form).item() == pytest.approx(
        0.0, abs=1e-12
    )
    off_grid = torch.tensor([-0.8, 0.1, 0.3])
    assert qgt_penalty(off_grid, 0.5, bits=2, form=form).item() > 0


def test_penalty_values_by_hand() -> None:
    w = torch.tensor([0.1, 0.4, 0.9])  # step .5, 2 bits: q = 0, .5, .5 (clamped at Qp)
    # sqdist: (.01 + .01 + .16) / 3 = .06
    assert qgt_penalty(w, 0.5, 2, "sqdist").item() == pytest.approx(0.06)
    # clip adds relu(.9 - .5)^2 / 3 = .16 / 3
    assert qgt_penalty(w, 0.5, 2, "sqdist-clip").item() == pytest.approx(
        0.06 + 0.16 / 3
    )
    # sin2: sin^2(.2 pi), sin^2(.8 pi), sin^2(1.8 pi) = all sin^2(.2 pi) = .345492
    assert qgt_penalty(w, 0.5, 2, "sin2").item() == pytest.approx(0.345492, abs=1e-6)


def test_sqdist_gradient_pulls_toward_grid_without_ste() -> None:
    w = torch.tensor([0.1, 0.4], requires_grad=True)
    qgt_penalty(w, 0.5, 2, "sqdist").backward()
    # d/dw mean((w - q)^2) = (w - q) = (.1 - 0, .4 - .5) for N = 2 -> 2(w-q)/2
    assert w.grad is not None and w.grad.tolist() == pytest.approx([0.1, -0.1])


def test_unknown_form_raises() -> None:
    with pytest.raises(ValueError, match="sin2"):
        qgt_penalty(torch.zeros(2), 0.5, 2, "l1")


def test_regularizer_uses_lsq_step_for_quantized_and_maxabs_for_float() -> None:
    # Prepare: quantized layer on its .25 grid (3 bits: -4..3); float layer whose
    # grid is max|w| / Qp = .3 / 1 = .3 at 2 bits, with .1 off the grid.
    qlayer = FakeQLinear(torch.tensor([[0.25, -0.5, 0.75]]), step=0.25, bits=3)
    flayer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        flayer.weight.copy_(torch.tensor([[0.3, 0.1, -0.3]]))
    model = nn.Sequential(qlayer, flayer)
    # Execute
    total, per_layer = qgt_regularizer(model, bits=2, form="sqdist")
    total.backward()
    # Assert: float layer: q = (.3, 0, -.3) -> .1^2 / 3
    assert per_layer == pytest.approx({"0": 0.0, "1": 0.01 / 3})
    assert total.item() == pytest.approx(0.01 / 3)
    assert flayer.weight.grad is not None
    assert qlayer.weight_quant.step.grad is None  # the step is detached


def test_uninitialised_lsq_step_falls_back_to_lsq_init() -> None:
    # placeholder step 1.0 ignored; LSQ init 2 mean|w| / sqrt(1) = 2 * .25 = .5
    layer = FakeQLinear(torch.tensor([[0.5, 0.0]]), step=1.0, bits=2, initialized=False)
    _, per_layer = qgt_regularizer(nn.Sequential(layer), bits=2)
    assert per_layer["0"] == pytest.approx(0.0)


def test_lambda_warmup() -> None:
    assert qgt_lambda(0, 100, 2.0) == 0.0
    assert qgt_lambda(5, 100, 2.0) == pytest.approx(1.0)
    assert qgt_lambda(10, 100, 2.0) == pytest.approx(2.0)
    assert qgt_lambda(90, 100, 2.0) == pytest.approx(2.0)
    assert qgt_lambda(0, 100, 2.0, warmup_fraction=0.0) == 2.0


def test_bottleneck_report_ranks_off_grid_layer_first() -> None:
    on = FakeQLinear(torch.tensor([[0.5, -0.5]]), step=0.5, bits=2)
    off = FakeQLinear(torch.tensor([[0.2, -0.3]]), step=0.5, bits=2)
    rows = bottleneck_report(nn.Sequential(on, off), bits=2)
    assert [r["layer"] for r in rows] == ["1", "0"]
    assert [r["rank"] for r in rows] == [1, 2]
    # off: q = (0, -.5) -> (.04 + .04) / 2 = .04
    assert rows[0]["residual"] == pytest.approx(0.04)
    assert rows[0]["quant_mse"] == pytest.approx(0.04)
    assert rows[1]["residual"] == pytest.approx(0.0)


def test_regularizer_on_a_real_quantized_model() -> None:
    convert = pytest.importorskip("fleet.quant.convert")
    from fleet.model.architectures import build_model

    torch.manual_seed(0)
    qm = convert.quantize_model(
        build_model("cnn", (1, 8, 8), 10), weight_bits=2, act_bits=32
    )
    total, per_layer = qgt_regularizer(qm, bits=2)
    assert set(per_layer) == {"conv1", "conv2", "conv3", "classifier"}
    assert total.item() > 0
