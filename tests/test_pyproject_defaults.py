"""``[tool.flwr.app.config]`` in pyproject.toml mirrors the schema defaults key for key."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from fleet.config.scenario import defaults, flatten, parse_config
from fleet.hardware.profiles import PROFILES

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PROFILE_PREFIX = "devices.profiles."


def _pyproject_flat() -> dict[str, Any]:
    with PYPROJECT.open("rb") as fh:
        return flatten(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])


def _comparable(flat: dict[str, Any]) -> dict[str, Any]:
    """Drop the documented differences: the empty options placeholder and zero-weight profiles."""
    return {k: v for k, v in flat.items()
            if k != "strategy.options" and not (k.startswith(PROFILE_PREFIX) and v == 0)}


def test_pyproject_equals_schema_defaults_for_every_key() -> None:
    # Prepare
    py = _pyproject_flat()
    want = defaults().to_flat()
    # Execute
    got = _comparable(py)
    # Assert
    assert sorted(set(got) ^ set(want)) == []
    mismatched = {k: (got[k], want[k]) for k in want if got[k] != want[k] or type(got[k]) is not type(want[k])}
    assert mismatched == {}


def test_pyproject_documented_differences() -> None:
    py = _pyproject_flat()
    assert py["strategy.options"] == ""
    listed = {k[len(PROFILE_PREFIX):] for k in py if k.startswith(PROFILE_PREFIX)}
    assert listed == set(PROFILES)  # every built-in profile is listed, ready to be weighted
    assert sum(v for k, v in py.items() if k.startswith(PROFILE_PREFIX)) == 1.0


def test_pyproject_parses_apart_from_the_options_placeholder() -> None:
    # Prepare
    py = {k: v for k, v in _pyproject_flat().items() if k != "strategy.options"}
    # Execute
    cfg = parse_config(py)
    # Assert: zero-weight profiles stay in the mix; every other section equals the defaults
    d = defaults()
    assert dict(cfg.devices.profiles) == {name: (1.0 if name == "rpi4" else 0.0) for name in PROFILES}
    for section in (f.name for f in dataclasses.fields(d) if f.name not in ("devices", "name")):
        assert getattr(cfg, section) == getattr(d, section), section


def test_pyproject_table_parses_as_is() -> None:
    cfg = parse_config(_pyproject_flat())
    assert cfg.strategy.options == ()
