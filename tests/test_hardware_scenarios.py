"""Hardware keys of a scenario: one-line errors naming the key, the hopeless-deadline warning, determinism.

Fast: everything fails (or warns) in ``load_config`` / ``preflight`` or in the CLI
before Ray starts.
"""

from __future__ import annotations

from collections import Counter

import pytest

from fleet.config.scenario import ConfigError
from fleet.hardware.catalogue import device_profiles
from simulations.cli import main
from simulations.run.scenario import load_config, preflight

BOARD = ['devices.custom.myboard.base="rpi4"', "devices.profiles.myboard=1.0"]

BAD = [
    pytest.param(["devices.profiles.toaster=1.0"], "devices.profiles.toaster", "unknown profile", id="unknown-profile"),
    pytest.param(["devices.profiles.rpi4=0.5", "devices.profiles.mcu=0.3"], "devices.profiles", "sum to 1",
                 id="weights-sum-0.8"),
    pytest.param(["devices.profiles.rpi4=0.7", "devices.profiles.mcu=0.7"], "devices.profiles", "sum to 1",
                 id="weights-sum-1.4"),
    pytest.param([*BOARD, "devices.custom.myboard.gflops=-1"], "devices.custom.myboard.gflops", "must be > 0",
                 id="negative-gflops"),
    pytest.param([*BOARD, "devices.custom.myboard.memory_mb=0"], "devices.custom.myboard.memory_mb", "must be > 0",
                 id="zero-memory"),
    pytest.param([*BOARD, "devices.custom.myboard.uplink_mbps=-2.5"], "devices.custom.myboard.uplink_mbps",
                 "must be > 0", id="negative-uplink"),
    pytest.param([*BOARD, "devices.custom.myboard.energy_j_per_gflop=-1"],
                 "devices.custom.myboard.energy_j_per_gflop", "must be >= 0", id="negative-energy"),
]


def _check(overrides: list[str]) -> list[str]:
    cfg, _ = load_config("quickstart", overrides)
    return preflight(cfg)


@pytest.mark.parametrize(("overrides", "key", "phrase"), BAD)
def test_load_config_and_preflight_name_the_key(overrides: list[str], key: str, phrase: str) -> None:
    # Prepare: the built-in quickstart with one bad hardware key

    # Execute
    with pytest.raises(ConfigError) as info:
        _check(overrides)

    # Assert: one line that starts with the offending key
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{key}: "), text
    assert phrase in text


@pytest.mark.parametrize(("overrides", "key", "phrase"), BAD)
def test_cli_exits_2_with_one_line(overrides: list[str], key: str, phrase: str, tmp_path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    argv = ["run", "quickstart", "--out", str(tmp_path / "run"), "--quiet", "--no-report"]
    for o in overrides:
        argv += ["--set", o]

    # Execute
    code = main(argv)

    # Assert: exit code 2, one error line naming the key, and no run directory started
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {key}: ") and phrase in err[0], err
    assert not (tmp_path / "run").exists()


def test_hopeless_deadline_is_a_warning_not_an_error() -> None:
    # Prepare: a deadline of one nanosecond; the fastest device needs about
    # 3 * 34442 FLOP/sample * n samples / 3.8e9 FLOP/s >= 2.7e-5 s for a single sample

    # Execute
    warnings = _check(["devices.deadline-s=1e-9"])

    # Assert
    assert len(warnings) == 1
    assert warnings[0].startswith("devices.deadline-s: ") and "every device will be a straggler" in warnings[0]


def test_reachable_deadline_gives_no_warning() -> None:
    # Execute / Assert: a generous deadline, and no deadline at all, are silent
    assert _check(["devices.deadline-s=60"]) == []
    assert _check([]) == []


def test_profile_assignment_is_deterministic_and_exact() -> None:
    # Prepare: a 100-device mix of five profiles, parsed twice
    mix = ["devices.profiles.mcu=0.1", "devices.profiles.rpi4=0.3", "devices.profiles.phone-low=0.25",
           "devices.profiles.phone-mid=0.25", "devices.profiles.jetson-orin-nano=0.1"]

    # Execute
    first = device_profiles(load_config("quickstart", mix)[0])
    second = device_profiles(load_config("quickstart", mix)[0])
    other_seed = device_profiles(load_config("quickstart", [*mix, "federation.seed=1"])[0])

    # Assert: same list both times; counts are weight * 100 exactly; another seed shuffles differently
    assert first == second
    assert Counter(first) == {"mcu": 10, "rpi4": 30, "phone-low": 25, "phone-mid": 25, "jetson-orin-nano": 10}
    assert Counter(other_seed) == Counter(first) and other_seed != first


def test_a_width_no_profile_has_is_warned_before_the_run() -> None:
    # Prepare: quickstart's rpi4 fleet has 2/4/8-bit kernels, not 3; a lab profile with 3-bit kernels.
    w3 = ["quant.weight-bits=3", "quant.act-bits=3"]
    lab = ["devices.custom.lab.base=rpi4", "devices.custom.lab.bits=[2, 3, 4, 8, 32]", "devices.profiles.lab=1.0"]
    # Execute + Assert: warned on rpi4 alone, not with the lab profile, nor at a width rpi4 has.
    assert any(w.startswith("quant.weight-bits: no device profile in the mix has 3-bit kernels (they train at 4 "
                            "bits)") for w in preflight(load_config("quickstart", w3)[0]))
    assert not any("kernels" in w for w in preflight(load_config("quickstart", [*w3, *lab])[0]))
    assert not any("kernels" in w for w in preflight(load_config("quickstart")[0]))


def test_a_custom_profile_with_a_bits_list_reaches_the_devices() -> None:
    # A run config carries a custom profile's `bits` as a list; the ClientApp caches parsed configs by value.
    from fleet.client_app import config_from_run_config

    flat = {"devices.custom.lab.base": "rpi4", "devices.custom.lab.bits": [2, 3, 4, 8, 32], "devices.profiles.lab": 1.0,
            "quant.weight-bits": 3, "quant.act-bits": 3}
    cfg = config_from_run_config(flat)
    assert cfg.devices.custom["lab"]["bits"] == [2, 3, 4, 8, 32]
    assert config_from_run_config(dict(flat)) is cfg  # parsed once per process
