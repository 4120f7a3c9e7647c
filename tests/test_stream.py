"""The continual phase (QCore) wired into the fleet: bad input, and one short run through Flower and Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleet.config.scenario import ConfigError, parse_config
from simulations.cli import main as cli_main
from simulations.run.scenario import load_config, preflight, run_config


@pytest.mark.parametrize(("sets", "key"), [
    (["stream.enabled=true", "stream.core-size=500"], "stream.core-size"),
    (["stream.enabled=true", 'stream.drift="sideways"'], "stream.drift"),
    (["stream.enabled=true", "stream.bits=6"], "stream.bits"),
    (["stream.enabled=true", "stream.bits=1"], "stream.bits"),
])
def test_bad_stream_input_is_one_line_naming_the_key(sets: list[str], key: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # Execute: through the config + preflight, and through the CLI
    with pytest.raises(ConfigError) as err:
        cfg, _ = load_config("quickstart", sets)
        preflight(cfg)
    args = ["run", "quickstart", "--quiet", "--no-report"] + [a for s in sets for a in ("--set", s)]
    code = cli_main(args)

    # Assert
    assert str(err.value).startswith(key) and "\n" not in str(err.value)
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {key}")


@pytest.mark.slow
def test_continual_phase_runs_after_the_federated_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))
    cfg = parse_config({"federation.num-devices": 4, "federation.devices-per-round": 2, "federation.rounds": 1,
                        "data.alpha": 5.0, "model.arch": "cnn", "model.pretrain-epochs": 2,
                        "quant.weight-bits": 4, "quant.act-bits": 4, "stream.enabled": True, "stream.tasks": 3,
                        "stream.core-size": 8, "stream.record-epochs": 2, "stream.calibration-epochs": 2,
                        "ray.num-cpus": 2}, name="stream")
    preflight(cfg)

    # Execute
    summary = run_config(cfg, tmp_path / "run")

    # Assert: every device reported every task, with its compute charged
    rows = [json.loads(x) for x in (tmp_path / "run" / "continual.jsonl").read_text().splitlines()]
    assert sorted({(r["device"], r["task"]) for r in rows}) == [(d, t) for d in range(4) for t in range(3)]
    assert all(r["flops"] > 0 and r["sim_time_s"] > 0 and r["calibration"] == "bfn" for r in rows)
    assert summary["continual"]["devices"] == 4 and len(summary["continual"]["per_task"]) == 3
