"""Differential privacy on the device and its accounting: clipping, noise scale, codecs, epsilon, the server's top-up.

Every expected number is computed here by hand (closed forms, numpy, scipy), not by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from fleet.config.scenario import ScenarioConfig, parse_config
from fleet.model.architectures import build_model
from fleet.privacy.accountant import RDP_ORDERS, Accountant
from fleet.privacy.dp import clip_update, device_noise_std, is_public_key, privatize, update_norm
from fleet.quant.codecs import build_codec
from fleet.quant.convert import init_quantizers, quant_info, quantize_model
from fleet.quant.spec import QuantInfo, qrange, split_state
from strategies.privacy import BudgetExhausted, PrivacyMonitor

State = dict[str, np.ndarray]

PRIVATE = ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight")
PUBLIC = ("conv.weight_quant.step", "conv.act_quant.step", "bn.running_mean", "bn.running_var")


# --------------------------------------------------------------------------- helpers


def _hand_norm(a: State, b: State, keys: tuple[str, ...] | list[str]) -> float:
    """L2 norm of ``a - b`` over ``keys``, in float64 (independent of ``update_norm``)."""
    return math.sqrt(sum(float(np.sum((np.float64(a[k]) - np.float64(b[k])) ** 2)) for k in keys))


def _toy_states(seed: int = 0, scale: float = 1.0) -> tuple[State, State]:
    """(local, base): private tensors and public ones (quantizer steps, BatchNorm statistics), all moved."""
    rng = np.random.default_rng(seed)
    shapes = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "bn.weight": (8,), "bn.bias": (8,),
              "fc.weight": (10, 72), "conv.weight_quant.step": (8, 1, 1, 1), "conv.act_quant.step": (1,),
              "bn.running_mean": (8,), "bn.running_var": (8,)}
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    local = {k: (v + scale * rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()}
    return local, base


@pytest.fixture(scope="module")
def quantized_states() -> tuple[State, State, QuantInfo]:
    """(local, base, qinfo) of a real 4-bit per-channel CNN (steps initialised on data), with a large update."""
    torch.manual_seed(0)
    q = quantize_model(build_model("cnn", (1, 8, 8), 10), 4, 4, per_channel=True)
    init_quantizers(q, torch.randn(16, 1, 8, 8))
    base, _ = split_state({k: v.numpy().astype(np.float32).copy() for k, v in q.state_dict().items()
                           if v.is_floating_point()})
    rng = np.random.default_rng(5)
    local = {k: (v + 0.05 * rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()}
    return local, base, quant_info(q)


def _cfg(**overrides: object) -> ScenarioConfig:
    flat: dict[str, object] = {"federation.num-devices": 20, "federation.devices-per-round": 10,
                               "privacy.dp": True, "privacy.noise-multiplier": 1.3, "privacy.clip-norm": 0.7}
    flat.update(overrides)
    return parse_config(flat)


# --------------------------------------------------------------------------- clipping


def test_public_keys_are_quantizer_state_and_bn_statistics() -> None:
    assert all(is_public_key(k) for k in PUBLIC)
    assert is_public_key("layer1.0.conv2.weight_quant.initialized")
    assert not any(is_public_key(k) for k in PRIVATE)
    assert not is_public_key("weight_quantizer")  # the infix is "_quant.", not a prefix match


def test_clip_large_update_to_norm_and_keep_direction() -> None:
    # Prepare: an update of norm ~ 30, far over C
    local, base = _toy_states(0, scale=1.0)
    c = 0.7
    before = _hand_norm(local, base, PRIVATE)
    assert before > 10 * c
    # Execute
    out = clip_update(local, base, c)
    # Assert: the clipped update's norm is C (to float32 rounding), in the update's direction
    after = _hand_norm(out, base, PRIVATE)
    assert after <= c * (1 + 1e-6) + 1e-7
    assert after >= c * (1 - 1e-4)
    for k in PRIVATE:
        expected = np.float64(base[k]) + (np.float64(local[k]) - np.float64(base[k])) * (c / before)
        np.testing.assert_allclose(out[k], expected, rtol=0, atol=1e-6)
        assert out[k].dtype == np.float32 and out[k].shape == base[k].shape
    assert update_norm(local, base) == pytest.approx(before, rel=1e-12)


def test_small_update_is_unchanged() -> None:
    local, base = _toy_states(1, scale=1e-3)
    c = 10.0
    assert _hand_norm(local, base, PRIVATE) < c
    out = clip_update(local, base, c)
    for k in PRIVATE:
        assert np.array_equal(out[k], local[k]), k


def test_public_tensors_come_back_as_the_servers() -> None:
    # Every public tensor moved on the device (by ~1), small update or large one
    for scale, c in ((1.0, 0.5), (1e-3, 10.0)):
        local, base = _toy_states(2, scale=scale)
        out = clip_update(local, base, c)
        for k in PUBLIC:
            assert not np.array_equal(local[k], base[k])
            assert np.array_equal(out[k], base[k]), k
        # ...and the public tensors' change does not count towards the norm that is clipped
        assert update_norm(local, base) == pytest.approx(_hand_norm(local, base, PRIVATE), rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_refused(bad: float) -> None:
    local, base = _toy_states(3)
    local["fc.weight"][3, 7] = bad
    with pytest.raises(ValueError, match="not finite"):
        clip_update(local, base, 1.0)
    with pytest.raises(ValueError, match="not finite"):
        privatize(local, base, clip_norm=1.0, noise_std=0.1, rng=np.random.default_rng(0))


def test_privatize_without_noise_is_the_clipped_update() -> None:
    local, base = _toy_states(4)
    out = privatize(local, base, clip_norm=0.3, noise_std=0.0, rng=np.random.default_rng(0))
    clipped = clip_update(local, base, 0.3)
    assert out.keys() == base.keys()
    assert all(np.array_equal(out[k], clipped[k]) for k in base)


# --------------------------------------------------------------------------- the norm after encoding


def _dp_state(local: State, base: State, c: float) -> State:
    return privatize(local, base, clip_norm=c, noise_std=0.0, rng=np.random.default_rng(0))


def _private(state: State) -> list[str]:
    return [k for k in state if not is_public_key(k)]


def _assert_norm_within(decoded: State, base: State, c: float, bound: float) -> float:
    keys = _private(base)
    got = _hand_norm(decoded, base, keys)
    assert got <= (c + bound) * (1 + 1e-6) + 1e-6, (got, c, bound)
    return got


def test_norm_after_fp32_is_exact() -> None:
    local, base = _toy_states(10)
    c = 0.5
    priv = _dp_state(local, base, c)
    codec = build_codec("fp32")
    dec = codec.decode(codec.encode(priv, base, np.random.default_rng(0), None), base, None)
    assert all(np.array_equal(dec[k], priv[k]) for k in base)
    _assert_norm_within(dec, base, c, 0.0)


def test_norm_after_fp16_within_half_precision_rounding() -> None:
    local, base = _toy_states(11)
    c = 0.5
    priv = _dp_state(local, base, c)
    codec = build_codec("fp16")
    dec = codec.decode(codec.encode(priv, base, np.random.default_rng(0), None), base, None)
    # fp16 round-to-nearest: relative error 2^-11 per coordinate (plus 2^-25 absolute in the subnormal range)
    per_coord = {k: 2.0**-11 * np.abs(np.float64(priv[k])) + 2.0**-25 for k in _private(base)}
    for k, b in per_coord.items():
        assert np.all(np.abs(np.float64(dec[k]) - np.float64(priv[k])) <= b), k
    bound = math.sqrt(sum(float(np.sum(b**2)) for b in per_coord.values()))
    got = _assert_norm_within(dec, base, c, bound)
    assert bound < c  # the bound is meaningful here, not vacuous
    assert got > c - bound  # the codec does not, e.g., drop the update


@pytest.mark.parametrize("per_channel", [False, True])
def test_norm_after_delta_int8_within_one_scale_step(per_channel: bool) -> None:
    local, base = _toy_states(12)
    c = 0.5
    priv = _dp_state(local, base, c)
    codec = build_codec("delta-int8", min_numel=1, per_channel=per_channel)
    payload = codec.encode(priv, base, np.random.default_rng(3), None)
    dec = codec.decode(payload, base, None)
    # Hand scale: max|d| / 127 per tensor (per dim-0 row for ndim >= 2 when per-channel); error < 1 step
    total = 0.0
    for k in _private(base):
        d = np.float64(priv[k]) - np.float64(base[k])
        if per_channel and d.ndim >= 2:
            scale = np.abs(d.reshape(d.shape[0], -1)).max(axis=1) / 127.0  # (C,)
            step = np.broadcast_to(scale.reshape((-1,) + (1,) * (d.ndim - 1)), d.shape)
        else:
            step = np.full(d.shape, np.abs(d).max() / 127.0)
        err = np.abs(np.float64(dec[k]) - np.float64(priv[k]))
        assert np.all(err <= step * (1 + 1e-5) + 1e-7), k
        total += float(np.sum(step**2))
    _assert_norm_within(dec, base, c, math.sqrt(total))
    for k in PUBLIC:  # public tensors: no delta, decoded exactly as the server's
        assert np.array_equal(dec[k], base[k]), k


def test_norm_after_qweights_within_the_grid_distance(quantized_states: tuple[State, State, QuantInfo]) -> None:
    local, base, info = quantized_states
    c = 0.5
    priv = _dp_state(local, base, c)
    codec = build_codec("qweights")
    dec = codec.decode(codec.encode(priv, base, np.random.default_rng(0), info), base, info)
    # Hand bound per quantized coordinate: half a step inside the grid, the distance to its end outside it
    total = 0.0
    for k in _private(base):
        err = np.abs(np.float64(dec[k]) - np.float64(priv[k]))
        if k in info:
            spec = info[k]
            qmin, qmax = qrange(spec.bits, spec.signed)
            s = np.broadcast_to(np.float64(base[spec.step_key]), priv[k].shape)
            w = np.float64(priv[k])
            outside = np.maximum(np.maximum(w - qmax * s, qmin * s - w), 0.0)
            bound = np.maximum(s / 2, outside)
            assert np.all(err <= bound * (1 + 1e-5) + 1e-7), k
            total += float(np.sum(bound**2))
        else:
            assert np.all(err == 0), k  # sent as float32
    assert len(info) >= 2
    _assert_norm_within(dec, base, c, math.sqrt(total))


@pytest.mark.parametrize("name", ["fp32", "fp16", "qweights"])
def test_deterministic_payload_is_a_function_of_the_privatized_state(
        name: str, quantized_states: tuple[State, State, QuantInfo]) -> None:
    # Prepare: two different local models, updates d and 2d (both over C) from a base whose private tensors are
    # zero, so 2d is exact in float32 and both clip to bitwise the same state
    local, model_base, info = quantized_states
    base = {k: (v if is_public_key(k) else np.zeros_like(v)) for k, v in model_base.items()}
    local = {k: (base[k] if is_public_key(k) else v) for k, v in local.items()}
    twice = {k: (v if is_public_key(k) else 2 * v) for k, v in local.items()}
    c = 0.5
    p1, p2 = _dp_state(local, base, c), _dp_state(twice, base, c)
    assert any(not np.array_equal(local[k], twice[k]) for k in base)
    assert all(np.array_equal(p1[k], p2[k]) for k in base)
    codec = build_codec(name)
    qinfo = info if name == "qweights" else None
    # Execute: the same privatized state with different codec generators, and the other model's state
    a = codec.encode(p1, base, np.random.default_rng(1), qinfo)
    b = codec.encode(p1, base, np.random.default_rng(2), qinfo)
    other = codec.encode(p2, base, np.random.default_rng(3), qinfo)
    # Assert: the payload depends on nothing but the privatized state (post-processing)
    assert a.keys() == b.keys() == other.keys()
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert all(np.array_equal(a[k], other[k]) for k in a)


def test_delta_int8_payload_depends_only_on_the_state_and_its_own_generator() -> None:
    local, base = _toy_states(13)
    priv = _dp_state(local, base, 0.5)
    codec = build_codec("delta-int8", min_numel=1)
    a = codec.encode(priv, base, np.random.default_rng(9), None)
    b = codec.encode({k: v.copy() for k, v in priv.items()}, base, np.random.default_rng(9), None)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- noise scale


@pytest.mark.parametrize("placement,expected", [("distributed", 1.3 * 0.7 / math.sqrt(10)), ("local", 1.3 * 0.7)])
def test_noise_std_against_hand_computation(placement: str, expected: float) -> None:
    # Prepare: a zero update (local == base) of 200k private coordinates, plus public tensors
    base = {"fc.weight": np.zeros((400, 500), np.float32), "fc.weight_quant.step": np.full(1, 0.1, np.float32),
            "bn.running_mean": np.zeros(8, np.float32), "bn.running_var": np.ones(8, np.float32)}
    local = {k: v.copy() for k, v in base.items()}
    std = device_noise_std(1.3, 0.7, placement, 10)
    assert std == pytest.approx(expected, rel=1e-12)
    # Execute
    out = privatize(local, base, clip_norm=0.7, noise_std=std, rng=np.random.default_rng(42))
    # Assert: empirical std within 1% (the sample std's own error is ~0.16% at n = 200k); public untouched
    noise = np.float64(out["fc.weight"]).ravel()
    assert noise.size == 200_000
    assert abs(noise.std() / expected - 1) < 0.01, noise.std()
    assert abs(noise.mean()) < 5 * expected / math.sqrt(noise.size)
    for k in ("fc.weight_quant.step", "bn.running_mean", "bn.running_var"):
        assert np.array_equal(out[k], base[k]), k


def test_unknown_noise_placement_is_refused() -> None:
    with pytest.raises(ValueError, match="distributed, local"):
        device_noise_std(1.0, 1.0, "central", 10)


# --------------------------------------------------------------------------- accountant


DELTA = 1e-5
CASES = [(1.0, 3), (2.0, 10), (4.0, 1), (0.7, 2), (10.0, 50)]


def _rdp_to_epsilon(orders: tuple[float, ...], rdp: list[float], delta: float) -> float:
    """dp-accounting's conversion (Canonne-Kamath-Steinke 2020, Prop. 12; Balle et al. 2020), written out."""
    best = math.inf
    for a, r in zip(orders, rdp, strict=True):
        if r < 0:
            eps = 0.0
        elif delta**2 + math.expm1(-r) > 0:  # the KL bound already gives delta
            eps = 0.0
        elif a > 1.01:
            eps = r + math.log1p(-1 / a) - math.log(delta * a) / (a - 1)
        else:
            eps = math.inf
        best = min(best, eps)
    return max(0.0, best)


def _exact_gaussian_epsilon(sigma: float, rounds: int, delta: float) -> float:
    """Balle & Wang 2018: T Gaussians of noise multiplier sigma compose to one of sigma / sqrt(T); bisection on
    delta(eps) = Phi(-eps s + 1/(2s)) - e^eps Phi(-eps s - 1/(2s))."""
    s = sigma / math.sqrt(rounds)

    def excess(eps: float) -> float:
        return norm.cdf(-eps * s + 1 / (2 * s)) - math.exp(eps) * norm.cdf(-eps * s - 1 / (2 * s)) - delta

    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return hi


@pytest.mark.parametrize("sigma,rounds", CASES)
def test_rdp_epsilon_full_participation_is_the_gaussian_closed_form(sigma: float, rounds: int) -> None:
    acc = Accountant(sigma, DELTA)
    for _ in range(rounds):
        acc.step(sampled=7, population=7)  # q = 1
    # Replace-one: sensitivity 2C, i.e. noise multiplier sigma / 2; RDP(alpha) = T alpha / (2 (sigma/2)^2)
    rdp = [rounds * a / (2 * (sigma / 2) ** 2) for a in RDP_ORDERS]
    expected = _rdp_to_epsilon(RDP_ORDERS, rdp, DELTA)
    got = acc.epsilon().rdp
    assert got == pytest.approx(expected, rel=1e-6)
    # The conversion used is the tighter one: below the classic rdp + log(1/delta)/(alpha - 1)
    classic = min(r + math.log(1 / DELTA) / (a - 1) for a, r in zip(RDP_ORDERS, rdp, strict=True))
    assert got < classic


@pytest.mark.parametrize("sigma,rounds", CASES)
def test_pld_epsilon_full_participation_bounds_the_exact_gaussian(sigma: float, rounds: int) -> None:
    acc = Accountant(sigma, DELTA)
    for _ in range(rounds):
        acc.step(sampled=7, population=7)
    exact = _exact_gaussian_epsilon(sigma, rounds, DELTA)
    got = acc.epsilon().pld
    assert got >= exact * (1 - 1e-9)  # PLD is pessimistic
    assert got <= exact * 1.01


def test_epsilon_grows_with_rounds_and_shrinks_with_sigma() -> None:
    accs = {s: Accountant(s, DELTA) for s in (0.8, 1.0, 2.0)}
    history: dict[float, list] = {s: [] for s in accs}
    for _ in range(4):
        for s, acc in accs.items():
            history[s].append(acc.step(sampled=3, population=6))
    for s, eps in history.items():
        assert all(b.rdp > a.rdp and b.pld > a.pld for a, b in zip(eps, eps[1:], strict=False)), s
    final = [accs[s].epsilon() for s in (0.8, 1.0, 2.0)]
    assert final[0].rdp > final[1].rdp > final[2].rdp
    assert final[0].pld > final[1].pld > final[2].pld
    # Sampling amplifies: 3 of 6 costs less than everyone
    full = Accountant(1.0, DELTA)
    for _ in range(4):
        full.step(6, 6)
    assert full.epsilon().rdp > final[1].rdp and full.epsilon().pld > final[1].pld


def test_peek_does_not_charge_and_equals_the_next_step() -> None:
    acc = Accountant(1.0, DELTA)
    acc.step(3, 6)
    before = acc.epsilon()
    peeked = acc.peek(3, 6)
    assert acc.rounds == [(3, 6)] and acc.epsilon() == before
    assert peeked.rdp > before.rdp and peeked.pld > before.pld
    assert acc.step(3, 6) == peeked


def test_state_dict_round_trip() -> None:
    acc = Accountant(1.0, DELTA)
    for k, n in ((3, 6), (2, 6), (3, 5)):
        acc.step(k, n)
    fresh = Accountant(1.0, DELTA)
    fresh.load_state_dict(acc.state_dict())
    assert fresh.rounds == acc.rounds
    assert fresh.epsilon() == acc.epsilon()
    empty = Accountant(1.0, DELTA)
    empty.load_state_dict(Accountant(1.0, DELTA).state_dict())
    assert empty.rounds == [] and empty.epsilon().rdp == 0.0


def test_no_noise_is_infinite_epsilon_and_no_rounds_is_zero() -> None:
    assert Accountant(1.0, DELTA).epsilon().worst == 0.0
    acc = Accountant(0.0, DELTA)
    eps = acc.step(3, 6)
    assert math.isinf(eps.rdp) and math.isinf(eps.pld)
    assert eps.as_row() == {"epsilon_rdp": None, "epsilon_pld": None}  # JSON cannot hold inf


@pytest.mark.parametrize("sampled,population", [(0, 6), (7, 6), (-1, 6)])
def test_step_refuses_impossible_rounds(sampled: int, population: int) -> None:
    with pytest.raises(ValueError):
        Accountant(1.0, DELTA).step(sampled, population)


# --------------------------------------------------------------------------- the server's top-up and budget


def _updates(k: int, n: int, seed: int = 0) -> tuple[dict[int, State], State]:
    rng = np.random.default_rng(seed)
    base = {"fc.weight": np.zeros((n,), np.float32), "fc.weight_quant.step": np.full(1, 0.1, np.float32),
            "bn.running_var": np.ones(4, np.float32)}
    updates = {dev: {"fc.weight": rng.normal(0, 0.01, n).astype(np.float32),
                     "fc.weight_quant.step": base["fc.weight_quant.step"].copy(),
                     "bn.running_var": base["bn.running_var"].copy()} for dev in range(k)}
    return updates, base


def test_top_up_completes_the_planned_noise_of_the_sum() -> None:
    # Prepare: m = 10 planned, 4 arrived
    cfg = _cfg()
    sigma, c, m, k = 1.3, 0.7, 10, 4
    updates, base = _updates(k, 200_000)
    originals = {d: {key: v.copy() for key, v in u.items()} for d, u in updates.items()}
    # Execute
    out = PrivacyMonitor(cfg).top_up(updates, base, np.random.default_rng(7))
    # Assert: the noise on the sum has std sigma C sqrt((m - k) / m), within 2%
    assert sorted(out) == sorted(updates)
    added = sum(np.float64(out[d]["fc.weight"]) - np.float64(originals[d]["fc.weight"]) for d in out)
    expected = sigma * c * math.sqrt((m - k) / m)
    assert abs(added.std() / expected - 1) < 0.02, (added.std(), expected)
    for d in out:  # public tensors untouched; the inputs are not modified in place
        assert np.array_equal(out[d]["fc.weight_quant.step"], base["fc.weight_quant.step"])
        assert np.array_equal(out[d]["bn.running_var"], base["bn.running_var"])
        assert np.array_equal(updates[d]["fc.weight"], originals[d]["fc.weight"])


def test_top_up_of_a_secure_mean_completes_the_noise_of_the_sum() -> None:
    # Under secure aggregation the server holds one mean of k = 4 updates (keyed -1): the noise the sum lacks,
    # sigma C sqrt((m - k) / m), divided by k on the mean
    sigma, c, m, k = 1.3, 0.7, 10, 4
    updates, base = _updates(1, 200_000)
    mean = updates[0]
    out = PrivacyMonitor(_cfg()).top_up({-1: mean}, base, np.random.default_rng(8), count=k)
    added = np.float64(out[-1]["fc.weight"]) - np.float64(mean["fc.weight"])
    expected = sigma * c * math.sqrt((m - k) / m) / k
    assert abs(added.std() / expected - 1) < 0.02, (added.std(), expected)
    same = PrivacyMonitor(_cfg()).top_up({-1: mean}, base, np.random.default_rng(8), count=m)
    assert np.array_equal(same[-1]["fc.weight"], mean["fc.weight"])


@pytest.mark.parametrize("k,overrides", [(10, {}), (12, {}), (4, {"privacy.noise": "local"}),
                                         (4, {"privacy.noise-multiplier": 0.0}), (4, {"privacy.dp": False})])
def test_top_up_adds_nothing(k: int, overrides: dict) -> None:
    cfg = _cfg(**overrides)
    updates, base = _updates(k, 1000)
    out = PrivacyMonitor(cfg).top_up(updates, base, np.random.default_rng(7))
    assert sorted(out) == sorted(updates)
    assert all(np.array_equal(out[d][key], updates[d][key]) for d in out for key in updates[d])


def test_check_budget_raises_exactly_past_the_budget() -> None:
    # Prepare: what the second round of 3 of 6 would cost
    acc = Accountant(1.3, 1e-5)
    acc.step(3, 6)
    nxt = acc.peek(3, 6).worst
    assert nxt == max(acc.peek(3, 6).rdp, acc.peek(3, 6).pld)

    def monitor(budget: float) -> PrivacyMonitor:
        mon = PrivacyMonitor(_cfg(**{"privacy.max-epsilon": budget}))
        mon.charge(3, 6)
        return mon

    # Execute / Assert: at or over the next epsilon the round goes ahead; under it the round is refused
    monitor(nxt).check_budget(2, 3, 6)
    monitor(nxt * 1.001).check_budget(2, 3, 6)
    with pytest.raises(BudgetExhausted, match="privacy.max-epsilon") as info:
        monitor(nxt * 0.999).check_budget(2, 3, 6)
    assert info.value.server_round == 2 and info.value.epsilon.worst == pytest.approx(nxt)
    # No budget, no DP, or nobody sampled: never refused
    PrivacyMonitor(_cfg(**{"privacy.max-epsilon": 0.0})).check_budget(1, 3, 6)
    PrivacyMonitor(_cfg(**{"privacy.dp": False, "privacy.max-epsilon": 1e-9})).check_budget(1, 3, 6)
    monitor(nxt * 0.999).check_budget(2, 0, 6)


def test_charge_puts_the_accountants_epsilon_in_the_round_line() -> None:
    mon = PrivacyMonitor(_cfg())
    mon.charge(3, 6)
    row = mon.take_row()
    acc = Accountant(1.3, 1e-5)
    eps = acc.step(3, 6)
    assert row == {"epsilon_rdp": eps.rdp, "epsilon_pld": eps.pld}
    assert mon.take_row() == {}
    summary = mon.summary()
    assert summary["rounds_charged"] == 1 and summary["epsilon_rdp"] == eps.rdp
