"""Shared steps of the scenario tests: run a small parsed scenario to completion, and check a config error."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fleet.config.scenario import ConfigError, parse_config
from simulations.run.scenario import load_config, preflight, run_config


def run_flat(flat: Mapping[str, Any], out: Path, name: str) -> tuple[dict, list[dict], list[dict]]:
    """Parse, preflight and run ``flat`` into the new folder ``out``; the summary, round lines, device lines."""
    cfg = parse_config(dict(flat), name=name)
    preflight(cfg)
    out.mkdir()
    summary = run_config(cfg, out)
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    devices = [json.loads(line) for line in (out / "devices.jsonl").read_text().splitlines()]
    return summary, rounds, devices


def assert_one_line_error(scenario: str, overrides: Sequence[str], key: str, fragment: str) -> None:
    """Loading ``scenario`` with ``overrides`` fails with one line that starts with ``key``."""
    with pytest.raises(ConfigError) as info:
        load_config(scenario, list(overrides))
    msg = str(info.value)
    assert info.value.key == key
    assert msg.startswith(f"{key}: ") and fragment in msg and "\n" not in msg, msg
