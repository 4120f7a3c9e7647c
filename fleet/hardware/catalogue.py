"""The scenario's hardware: which profile each device has, built-in or the user's own.

Joins the ``[devices]`` keys to the profile catalogue (:mod:`fleet.hardware.profiles`):
custom ``[devices.custom.<name>]`` tables, the mix, and the availability model.
"""

from __future__ import annotations

import functools

from fleet.config.scenario import ScenarioConfig
from fleet.config.schema import ConfigError
from fleet.hardware.availability import AvailabilityModel, AvailabilitySpec
from fleet.hardware.profiles import PROFILES, DeviceProfile, assign_profiles, profile_from_dict

__all__ = ["catalogue", "resolve_profile", "device_profiles", "availability_model"]


def _custom(cfg: ScenarioConfig) -> dict[str, DeviceProfile]:
    out = {}
    for name, table in cfg.devices.custom.items():
        if not isinstance(table, dict):
            raise ConfigError(f"devices.custom.{name}", "must be a table of profile fields")
        try:
            out[name] = profile_from_dict(name, table, f"devices.custom.{name}")
        except ValueError as exc:
            key, _, msg = str(exc).partition(": ")
            raise ConfigError(key, msg or str(exc)) from None
    return out


@functools.lru_cache(maxsize=8)
def _catalogue(cfg: ScenarioConfig) -> dict[str, DeviceProfile]:
    return {**PROFILES, **_custom(cfg)}


def catalogue(cfg: ScenarioConfig) -> dict[str, DeviceProfile]:
    """Built-in profiles plus the scenario's own (validated)."""
    return _catalogue(cfg)


def resolve_profile(cfg: ScenarioConfig, name: str) -> DeviceProfile:
    cat = catalogue(cfg)
    if name not in cat:
        raise ConfigError(f"devices.profiles.{name}", f"unknown profile; valid: {', '.join(sorted(cat))}")
    return cat[name]


@functools.lru_cache(maxsize=8)
def device_profiles(cfg: ScenarioConfig) -> tuple[str, ...]:
    """Profile name of every device, deterministic from the seed."""
    cat = catalogue(cfg)
    mix = dict(cfg.devices.profiles)
    for name in mix:
        if name not in cat:
            raise ConfigError(f"devices.profiles.{name}", f"unknown profile; valid: {', '.join(sorted(cat))}")
    try:
        names = assign_profiles(cfg.federation.num_devices, mix, cfg.federation.seed, valid_names=set(cat))
    except ValueError as exc:
        key, _, msg = str(exc).partition(": ")
        raise ConfigError(key if key.startswith("devices") else "devices.profiles", msg or str(exc)) from None
    return tuple(names)


def availability_model(cfg: ScenarioConfig) -> AvailabilityModel:
    """Who is online each round: everyone (``availability = "always"``) or per profile."""
    cat = catalogue(cfg)
    if cfg.devices.availability == "always":
        specs = [AvailabilitySpec(p_dropout=0.0) for _ in range(cfg.federation.num_devices)]
    else:
        specs = [cat[n].availability for n in device_profiles(cfg)]
    return AvailabilityModel(specs, cfg.federation.seed)
