"""Coreset keys through the scenario path: load_config, preflight and the CLI (no Ray).

A fraction outside (0, 1], an unknown method and a CLC layer that is not in the
model must stop a run before Ray starts with one line naming the key, and make
``fleet run`` exit with code 2 without creating the run directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from whole_run import assert_one_line_error

from fleet.config.scenario import ConfigError
from simulations.cli import main
from simulations.run.scenario import load_config, preflight

SCENARIO = "quickstart"  # digits + mlp: no files needed
METHODS = "full, random, evs, ds, res, evs+res, ds+res, acs, quarc, forgetting, moderate, margin"

# (--set overrides, key the error must name, a fragment of the message)
BAD_PARSE: list[tuple[list[str], str, str]] = [
    (["coreset.fraction=0"], "coreset.fraction", "must be > 0, got 0"),
    (["coreset.fraction=-0.1"], "coreset.fraction", "must be > 0, got -0.1"),
    (["coreset.fraction=1.5"], "coreset.fraction", "must be <= 1, got 1.5"),
    (["coreset.method=quark"], "coreset.method", f"must be one of {METHODS}; got 'quark'"),
]
PARSE_IDS = ["fraction-0", "fraction-negative", "fraction-1.5", "unknown-method"]
BAD_LAYER = ["train.clc-beta=1.0", "train.clc-layers=nope"]


def _argv(out: Path, overrides: list[str]) -> list[str]:
    argv = ["run", SCENARIO, "--out", str(out), "--quiet", "--no-report"]
    for o in overrides:
        argv += ["--set", o]
    return argv


def test_quarc_with_clc_passes_preflight() -> None:
    # Prepare: the good neighbour of the bad cases (mlp blocks are act1, act2)
    cfg, _ = load_config(SCENARIO, {"coreset.method": "quarc", "coreset.fraction": 0.1,
                                    "train.clc-beta": 1.0, "train.clc-layers": "act2"})

    # Execute
    warnings = preflight(cfg)

    # Assert
    assert (cfg.coreset.method, cfg.coreset.fraction, cfg.train.clc_beta) == ("quarc", 0.1, 1.0)
    assert warnings == []


@pytest.mark.parametrize(("overrides", "key", "fragment"), BAD_PARSE, ids=PARSE_IDS)
def test_load_config_names_the_key(overrides: list[str], key: str, fragment: str) -> None:
    # Execute / Assert: one line, starting with the key
    assert_one_line_error(SCENARIO, overrides, key, fragment)


def test_preflight_names_clc_layers() -> None:
    # Prepare: parses fine; only preflight can see that no module is called 'nope'
    cfg, _ = load_config(SCENARIO, BAD_LAYER)

    # Execute
    with pytest.raises(ConfigError) as info:
        preflight(cfg)

    # Assert
    msg = str(info.value)
    assert info.value.key == "train.clc-layers"
    assert msg.startswith("train.clc-layers: ") and "'nope'" in msg and "\n" not in msg, msg


def test_clc_layers_unchecked_when_clc_off() -> None:
    # Prepare: beta = 0 means CLC is off, so the layer list is never used
    cfg, _ = load_config(SCENARIO, ["train.clc-layers=nope", "train.clc-beta=0"])

    # Execute / Assert: no error
    assert preflight(cfg) == []


@pytest.mark.parametrize(("overrides", "key", "fragment"),
                         [*BAD_PARSE, (BAD_LAYER, "train.clc-layers", "no module named 'nope'")],
                         ids=[*PARSE_IDS, "clc-layer-missing"])
def test_cli_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   overrides: list[str], key: str, fragment: str) -> None:
    # Prepare
    out = tmp_path / "run"

    # Execute
    code = main(_argv(out, overrides))

    # Assert: exit 2, exactly one line on stderr naming the key, no run directory
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"error: {key}: ") and fragment in err, err
    assert not out.exists()
