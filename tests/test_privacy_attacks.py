"""Measured leakage: hand-checked metrics, membership inference on digits, label inference from an update."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor, nn

from fleet.model.architectures import build_model
from fleet.privacy.labels import classifier_keys, label_inference_auc, label_scores
from fleet.privacy.membership import (
    AttackResult,
    lira_offline_attack,
    loss_threshold_attack,
    membership_inference,
    per_sample_logit_confidence,
    per_sample_loss,
    roc_auc,
    tpr_at_fpr,
    train_shadows,
)

Pair = tuple[Tensor, Tensor]


# --------------------------------------------------------------------------- helpers


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _seeded(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def _fit(model: nn.Module, data: Pair, opt: torch.optim.Optimizer, epochs: int, batch_size: int,
         seed: int) -> nn.Module:
    """Plain cross-entropy epochs over ``data`` in a seeded order; the model returned in eval mode."""
    x, y = data
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _adam_model(data: Pair, epochs: int, lr: float, seed: int = 1) -> nn.Module:
    model = _seeded(_mlp, seed)
    return _fit(model, data, torch.optim.Adam(model.parameters(), lr=lr), epochs, 32, seed)


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def digits() -> Pair:
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)  # (1797, 1, 8, 8) in [0, 1]
    return x, torch.tensor(d.target, dtype=torch.int64)


@pytest.fixture(scope="module")
def split(digits: Pair) -> dict[str, Pair]:
    """Disjoint parts of digits by a seeded permutation (the unseen pairs reuse parts only other models saw)."""
    x, y = digits
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    parts = {"attacker": perm[:500], "members": perm[500:600], "pool": perm[600:900], "train": perm[900:1300],
             "unseen-a": perm[500:800], "unseen-b": perm[1300:1600]}
    return {k: (x[idx], y[idx]) for k, idx in parts.items()}


def _aucs(result: dict[str, dict]) -> dict[str, float]:
    return {name: r["auc"] for name, r in result.items()}


# --------------------------------------------------------------------------- metrics by hand


def test_roc_auc_hand_examples() -> None:
    # Prepare
    member = np.array([1, 1, 0, 0])

    # Execute / Assert: perfect, reversed, all tied
    assert roc_auc(np.array([4.0, 3.0, 2.0, 1.0]), member) == 1.0
    assert roc_auc(np.array([1.0, 2.0, 3.0, 4.0]), member) == 0.0
    assert roc_auc(np.zeros(4), member) == 0.5
    # members {3, 1}, non-members {2, 1}: pairs (3>2), (3>1), (1<2), (1=1 half) -> 2.5 / 4
    assert roc_auc(np.array([3.0, 1.0, 2.0, 1.0]), member) == pytest.approx(0.625)
    assert math.isnan(roc_auc(np.array([1.0, 2.0]), np.array([1, 1])))


def test_tpr_at_fpr_hand_example() -> None:
    # Prepare: members 0.9, 0.8, 0.7, 0.15; non-members 0.85, 0.7, 0.2, 0.1
    scores = np.array([0.9, 0.8, 0.7, 0.15, 0.85, 0.7, 0.2, 0.1])
    member = np.array([1, 1, 1, 1, 0, 0, 0, 0])

    # Execute / Assert: FPR 0 allows only the threshold 0.9 (TPR 1/4); FPR 1/4 allows 0.8 (2/4), not 0.7,
    # whose tie takes the non-member 0.7 along (FPR 2/4); FPR 1/2 allows 0.7 (3/4)
    assert tpr_at_fpr(scores, member, 0.0) == 0.25
    assert tpr_at_fpr(scores, member, 0.25) == 0.5
    assert tpr_at_fpr(scores, member, 0.49) == 0.5
    assert tpr_at_fpr(scores, member, 0.5) == 0.75
    assert tpr_at_fpr(np.array([0.5, 0.5]), np.array([1, 0]), 0.0) == 0.0  # the tie is not split


def test_attack_result_to_dict_is_plain() -> None:
    d = AttackResult("x", np.float64(0.5), np.float32(0.25), np.int64(3), 4).to_dict()  # type: ignore[arg-type]
    assert d == {"name": "x", "auc": 0.5, "tpr_at_1pct_fpr": 0.25, "members": 3, "non_members": 4}
    assert all(type(v) in (str, float, int) for v in d.values())


# --------------------------------------------------------------------------- per-sample statistics


def test_logit_confidence_is_log_odds_and_stays_finite() -> None:
    # Prepare: an identity "model" whose logits are its inputs
    model = nn.Flatten()
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [200.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, 0])

    # Execute
    phi = per_sample_logit_confidence(model, logits, y)
    loss = per_sample_loss(model, logits, y, batch_size=2)

    # Assert
    p = torch.softmax(logits.double(), 1)[torch.arange(3), y].numpy()
    assert np.allclose(phi[:2], np.log(p[:2]) - np.log1p(-p[:2]))
    assert phi[2] == pytest.approx(200.0 - math.log(2.0))  # p rounds to 1, phi does not overflow
    assert np.allclose(loss, -np.log(p))


def test_statistics_use_eval_mode_and_restore_the_flag(digits: Pair) -> None:
    # Prepare: dropout would make two evaluations differ in training mode
    model = _seeded(lambda: nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, 10)), 0).train()
    x, y = digits[0][:50], digits[1][:50]

    # Execute
    a, b = per_sample_loss(model, x, y), per_sample_loss(model, x, y)

    # Assert
    assert np.array_equal(a, b)
    assert model.training


def test_shadows_are_deterministic_and_leave_the_global_rng(split: dict[str, Pair]) -> None:
    # Prepare
    x, y = split["attacker"]
    before = torch.random.get_rng_state()

    # Execute
    a = train_shadows(_mlp, x, y, n_shadows=2, epochs=2, lr=1e-3, batch_size=64, seed=3)
    b = train_shadows(_mlp, x, y, n_shadows=2, epochs=2, lr=1e-3, batch_size=64, seed=3)
    c = train_shadows(_mlp, x, y, n_shadows=1, epochs=2, lr=1e-3, batch_size=64, seed=4)

    # Assert
    assert torch.equal(torch.random.get_rng_state(), before)
    for sa, sb in zip(a, b):
        assert all(torch.equal(p, q) for p, q in zip(sa.parameters(), sb.parameters()))
    assert not torch.equal(a[0][1].weight, a[1][1].weight)  # two shadows, two halves and inits
    assert not torch.equal(a[0][1].weight, c[0][1].weight)


# --------------------------------------------------------------------------- membership inference


def test_a_model_that_never_saw_the_targets_leaks_nothing(split: dict[str, Pair]) -> None:
    # Prepare: trained on a part disjoint from both target sets; 300 "members" and 300 non-members
    model = _adam_model(split["train"], epochs=30, lr=1e-3)

    # Execute
    result = membership_inference(model, _mlp, split["unseen-a"], split["unseen-b"], split["attacker"])

    # Assert
    print("unseen AUCs", _aucs(result))
    assert result["loss-threshold"]["members"] == result["loss-threshold"]["non_members"] == 300
    for name in ("loss-threshold", "lira-offline"):
        assert abs(result[name]["auc"] - 0.5) < 0.08, name


def test_a_model_that_memorised_its_members_leaks_them(split: dict[str, Pair]) -> None:
    # Prepare: 100 members fitted to about zero loss; 300 non-members from the same distribution
    model = _adam_model(split["members"], epochs=300, lr=1e-2)
    assert per_sample_loss(model, *split["members"]).mean() < 0.01

    # Execute
    result = membership_inference(model, _mlp, split["members"], split["pool"], split["attacker"])

    # Assert: digits generalise well from 100 samples, so the natural gap is moderate
    print("memorised AUCs", _aucs(result))
    assert result["lira-offline"]["non_members"] == 100  # balanced to the members
    for name in ("loss-threshold", "lira-offline"):
        assert result[name]["auc"] > 0.6, name


def test_memorised_mislabelled_canaries_are_found_at_low_fpr(split: dict[str, Pair]) -> None:
    # Prepare: members and non-members carry a wrong label (the mislabelled canaries of privacy audits), so
    # only a model that memorised a sample fits its label
    g = torch.Generator().manual_seed(7)
    members, non_members = ((x, (y + torch.randint(1, 10, y.shape, generator=g)) % 10)
                            for x, y in (split["members"], split["pool"]))
    model = _adam_model(members, epochs=300, lr=1e-2)
    shadows = train_shadows(_mlp, *split["attacker"], n_shadows=4, epochs=10, lr=1e-3, batch_size=64, seed=0)

    # Execute
    results = [loss_threshold_attack(model, members, non_members),
               lira_offline_attack(model, shadows, members, non_members)]

    # Assert
    print("canary", [r.to_dict() for r in results])
    for r in results:
        assert r.auc > 0.9, r.name
        assert r.tpr_at_1pct_fpr > 0.1, r.name


def test_lira_is_skipped_without_attacker_data(split: dict[str, Pair]) -> None:
    # Prepare
    model = _seeded(_mlp, 0).eval()
    nobody = (split["attacker"][0][:1], split["attacker"][1][:1])

    # Execute
    result = membership_inference(model, _mlp, split["members"], split["pool"], nobody, max_targets=40)

    # Assert
    assert result["lira-offline"] == {"skipped": "no attacker data"}
    assert result["loss-threshold"]["members"] == result["loss-threshold"]["non_members"] == 40


# --------------------------------------------------------------------------- label inference


def test_classifier_keys() -> None:
    state = _state(build_model("mlp", (1, 8, 8), 10))
    assert classifier_keys(state, 10) == ("classifier.weight", "classifier.bias")
    no_bias = {"a.weight": np.zeros((10, 4)), "head.weight": np.zeros((10, 4)),
               "head.weight_quant.step": np.ones((10, 1))}  # a quantizer step is skipped
    assert classifier_keys(no_bias, 10) == ("head.weight", None)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        classifier_keys({"w": np.zeros((3, 4))}, 10)


def _local_update(base: nn.Module, data: Pair, classes: list[int], seed: int) -> dict[str, np.ndarray]:
    """The state after 5 SGD steps on 64 samples of only ``classes``, starting from ``base``."""
    x, y = data
    idx = torch.nonzero(torch.isin(y, torch.tensor(classes))).squeeze(1)
    idx = idx[torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed))[:64]]
    model = build_model("mlp", (1, 8, 8), 10)
    model.load_state_dict(base.state_dict())
    _fit(model, (x[idx], y[idx]), torch.optim.SGD(model.parameters(), lr=0.05), epochs=5, batch_size=64, seed=seed)
    return _state(model)


def test_one_device_update_leaks_its_labels_and_an_average_much_less(digits: Pair) -> None:
    # Prepare: a global model after 50 full-batch SGD steps; device 0 holds classes {1, 4, 7}
    base_model = _seeded(lambda: build_model("mlp", (1, 8, 8), 10), 0)
    _fit(base_model, (digits[0][:500], digits[1][:500]), torch.optim.SGD(base_model.parameters(), lr=0.1),
         epochs=50, batch_size=500, seed=0)
    base = _state(base_model)
    present = np.isin(np.arange(10), [1, 4, 7])
    rng = np.random.default_rng(1)
    class_sets = [[1, 4, 7]] + [sorted(rng.choice(10, 3, replace=False).tolist()) for _ in range(9)]
    locals_ = [_local_update(base_model, digits, c, seed) for seed, c in enumerate(class_sets)]

    # Execute
    single = label_inference_auc(label_scores(locals_[0], base, 10), present)
    average = {k: np.mean([s[k] for s in locals_], axis=0) for k in base}
    averaged = label_inference_auc(label_scores(average, base, 10), present)

    # Assert
    print(f"label-inference AUC: one device {single:.3f}, average of 10 {averaged:.3f}")
    assert single > 0.9
    assert averaged < single
    assert math.isnan(label_inference_auc(np.arange(3.0), np.ones(3)))
