"""The margin selector: hand-computed scores, the least certain samples kept, wired into a device round."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fleet.config.scenario import parse_config
from fleet.coreset.base import SelectionContext
from fleet.coreset.margin import MarginSelector, margin_scores
from fleet.coreset.selectors import build_selector, uses_float_model
from fleet.model.roles import needs_reference


def test_margin_scores_hand_computed() -> None:
    # Prepare: logits [1, 0] -> softmax [e/(e+1), 1/(e+1)]; equal logits -> margin 0
    logits = torch.tensor([[1.0, 0.0], [0.5, 0.5]])

    # Execute
    s = margin_scores(logits)

    # Assert
    p1 = math.e / (math.e + 1)
    assert np.allclose(s.numpy(), [-(2 * p1 - 1), 0.0])


def test_keeps_the_least_certain_samples() -> None:
    # Prepare: an identity "model" over 3 classes; rows 1 and 3 are the two least certain
    model = nn.Identity()
    model.weight = nn.Parameter(torch.zeros(1))  # a parameter, so the scorer finds the model's device
    x = torch.tensor([[9.0, 0.0, 0.0], [1.0, 0.9, 0.0], [0.0, 8.0, 0.0], [0.0, 0.1, 0.2]])
    y = torch.tensor([0, 1, 1, 2])
    ctx = SelectionContext(qmodel=model, fpmodel=None, epoch=0, total_epochs=1, rng=np.random.default_rng(0),
                           num_classes=3, balanced=False)

    # Execute
    res = build_selector("margin").select(x, y, 0.5, ctx, {})

    # Assert: one pass per sample, no float model needed, samples 1 and 3 kept
    assert sorted(res.indices.tolist()) == [1, 3] and res.scoring_passes == 4
    assert isinstance(build_selector("margin"), MarginSelector) and not uses_float_model("margin")


def test_scenario_accepts_it_and_sends_no_reference_for_it() -> None:
    # A float fleet with the margin selector: accepted by the config (from the registry), no reference needed
    cfg = parse_config({"coreset.method": "margin", "coreset.fraction": 0.5})
    assert cfg.coreset.method == "margin" and not needs_reference(cfg, 32, 32)
