"""Device profiles: catalogue, user profiles from TOML tables, assignment, bit-widths."""

from __future__ import annotations

from collections import Counter

import pytest

from fleet.hardware.availability import AvailabilitySpec
from fleet.hardware.profiles import (
    PROFILES,
    DeviceProfile,
    assign_profiles,
    build_profile,
    nearest_bits,
    profile_from_dict,
)

REQUIRED = ["mcu", "rpi4", "rpi5", "jetson-nano", "jetson-orin-nano", "phone-low",
            "phone-mid", "phone-flagship"]
BOARD = {"gflops": 5.0, "memory_mb": 512, "uplink_mbps": 10, "downlink_mbps": 20,
         "latency_ms": 30, "bits": [8, 4, 32], "energy_j_per_gflop": 1.0,
         "radio_j_per_mb": 2.0}


def test_catalogue_has_the_required_classes_in_a_sane_order() -> None:
    assert set(REQUIRED) <= set(PROFILES)
    for name, profile in PROFILES.items():
        assert profile.name == name
        assert list(profile.bits) == sorted(profile.bits)
    speed = {n: PROFILES[n].gflops for n in REQUIRED}
    assert speed["mcu"] == min(speed.values())
    assert speed["phone-low"] < speed["phone-mid"] < speed["phone-flagship"]
    assert speed["rpi4"] < speed["rpi5"] and speed["jetson-nano"] < speed["jetson-orin-nano"]
    assert 32 not in PROFILES["mcu"].bits  # no float training in 0.5 MB


def test_build_profile_unknown_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid: .*rpi4"):
        build_profile("cray-1")


def test_profile_from_dict_full_table() -> None:
    # Execute
    p = profile_from_dict("myboard", BOARD, "devices.custom")
    # Assert
    assert p == DeviceProfile("myboard", 5.0, 512.0, 10.0, 20.0, 30.0, (4, 8, 32), 1.0, 2.0)


def test_profile_from_dict_base_and_availability() -> None:
    d = {"base": "rpi4", "gflops": 6, "availability": {"kind": "bernoulli", "p_online": 0.5}}
    p = profile_from_dict("fast-pi", d, "devices.custom")
    assert p.gflops == 6.0 and p.memory_mb == PROFILES["rpi4"].memory_mb
    assert p.availability == AvailabilitySpec("bernoulli", p_online=0.5)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"gflops": -1}, "devices.custom.myboard.gflops: must be > 0, got -1"),
        ({"memory_mb": 0}, "devices.custom.myboard.memory_mb: must be > 0, got 0"),
        ({"uplink_mbps": "fast"}, "devices.custom.myboard.uplink_mbps: must be a number, got str 'fast'"),
        ({"latency_ms": -5}, "devices.custom.myboard.latency_ms: must be >= 0, got -5"),
        ({"bits": []}, "devices.custom.myboard.bits: must be a non-empty list of ints"),
        ({"bits": [8, 64]}, "devices.custom.myboard.bits: bit-widths must be in 1..32, got 64"),
        ({"gflop": 3}, "devices.custom.myboard.gflop: unknown field; valid: gflops"),
        ({"base": "cray"}, "devices.custom.myboard.base: unknown profile 'cray'"),
        ({"availability": {"kind": "markov", "p_on_to_off": 2}},
         "devices.custom.myboard.availability.p_on_to_off: must be in [0, 1], got 2"),
        ({"availability": {"kind": "sometimes"}},
         "devices.custom.myboard.availability.kind: unknown kind 'sometimes'"),
    ],
)
def test_profile_from_dict_errors_name_the_full_key(patch: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        profile_from_dict("myboard", {**BOARD, **patch}, "devices.custom")
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_profile_from_dict_missing_field_and_prefix_with_name() -> None:
    d = dict(BOARD)
    del d["gflops"]
    with pytest.raises(ValueError, match=r"^devices\.custom\.myboard\.gflops: missing"):
        profile_from_dict("myboard", d, "devices.custom.myboard")  # prefix already has name


def test_assign_profiles_largest_remainder_exact_counts() -> None:
    # 10 devices: quotas 2.5 / 2.5 / 5 -> floors 2 / 2 / 5, one left over; the tied
    # fractions (.5, .5) go to the earlier entry -> rpi4 3, mcu 2, phone-mid 5.
    names = assign_profiles(10, {"rpi4": 0.25, "mcu": 0.25, "phone-mid": 0.5}, seed=1)
    assert Counter(names) == {"rpi4": 3, "mcu": 2, "phone-mid": 5}
    # 7 devices at thirds: quotas 2.33 each -> 2 / 2 / 2 + 1 to the first.
    names = assign_profiles(7, {"rpi5": 1 / 3, "mcu": 1 / 3, "rpi4": 1 / 3}, seed=1)
    assert Counter(names) == {"rpi5": 3, "mcu": 2, "rpi4": 2}
    # 0.7 / 0.3 of 10 is exact despite float rounding of 0.3 * 10.
    assert Counter(assign_profiles(10, {"rpi4": 0.7, "mcu": 0.3}, seed=0)) == {"rpi4": 7, "mcu": 3}


def test_assign_profiles_deterministic_and_shuffled() -> None:
    mix = {"rpi4": 0.5, "phone-low": 0.5}
    a = assign_profiles(40, mix, seed=3)
    assert a == assign_profiles(40, mix, seed=3)
    assert a != assign_profiles(40, mix, seed=4)
    assert a != sorted(a)  # not grouped by profile


def test_assign_profiles_errors() -> None:
    with pytest.raises(ValueError, match=r"devices\.profiles\.foo: unknown profile; valid: .*mcu"):
        assign_profiles(4, {"foo": 1.0}, seed=0)
    with pytest.raises(ValueError, match=r"devices\.profiles: weights must sum to 1"):
        assign_profiles(4, {"rpi4": 0.5, "mcu": 0.4}, seed=0)
    with pytest.raises(ValueError, match=r"devices\.profiles\.mcu: must be >= 0, got -0.5"):
        assign_profiles(4, {"rpi4": 1.5, "mcu": -0.5}, seed=0)
    # custom names are accepted when declared
    assert assign_profiles(2, {"myboard": 1.0}, seed=0, valid_names=["myboard"]) == ["myboard"] * 2


@pytest.mark.parametrize(
    ("requested", "supported", "expected"),
    [(4, (2, 4, 8), 4), (3, (2, 4, 8, 32), 4), (6, (4, 8), 8), (5, (4, 8), 4),
     (16, (8, 32), 8), (32, (4, 8), 8), (1, (2, 4), 2)],
)
def test_nearest_bits(requested: int, supported: tuple[int, ...], expected: int) -> None:
    assert nearest_bits(requested, supported) == expected


def test_nearest_bits_empty() -> None:
    with pytest.raises(ValueError):
        nearest_bits(8, ())
