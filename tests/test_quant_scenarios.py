"""Quantization keys through the scenario path: load_config, preflight and the CLI (no Ray).

Bad bit-widths, an unknown codec and a checkpoint that is missing or of the wrong
architecture must stop a run before Ray starts, with one line naming the key, and
make ``fleet run`` exit with code 2 without creating the run directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import save_file
from whole_run import assert_one_line_error

from fleet.config.scenario import ConfigError
from fleet.model.architectures import build_model
from simulations.cli import main
from simulations.run.scenario import load_config, preflight

SCENARIO = "w2a2-digits"
BITS_HINT = "2, 3, 4, 5, 6, 7, 8, 32"

# (--set overrides, key the error must name, a fragment of the message)
BAD_PARSE: list[tuple[list[str], str, str]] = [
    (["quant.weight-bits=0"], "quant.weight-bits", f"must be one of {BITS_HINT}; got 0"),
    (["quant.weight-bits=1"], "quant.weight-bits", f"must be one of {BITS_HINT}; got 1"),
    (["quant.weight-bits=33"], "quant.weight-bits", f"must be one of {BITS_HINT}; got 33"),
    (["quant.weight-bits=2.5"], "quant.weight-bits", "must be an integer, got 2.5"),
    (["quant.act-bits=1"], "quant.act-bits", f"must be one of {BITS_HINT}; got 1"),
    (["quant.codec=int3-magic"], "quant.codec", "must be one of fp32, fp16, delta-int8, delta-int4, qweights"),
]
PARSE_IDS = ["wbits-0", "wbits-1", "wbits-33", "wbits-2.5", "abits-1", "unknown-codec"]


@pytest.fixture
def mlp_checkpoint(tmp_path: Path) -> Path:
    """A valid safetensors file holding an ``mlp`` state (digits-shaped)."""
    path = tmp_path / "mlp.safetensors"
    model = build_model("mlp", (1, 8, 8), 10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _one_error_line(err: str) -> str:
    """The single ``error:`` line on stderr (the CLI's contract)."""
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_scenario_parses_and_passes_preflight() -> None:
    # Execute
    cfg, flat = load_config(SCENARIO)
    warnings = preflight(cfg)

    # Assert: the 2-bit settings the scenario promises
    assert (cfg.quant.weight_bits, cfg.quant.act_bits, cfg.quant.codec) == (2, 2, "qweights")
    assert cfg.model.arch == "cnn" and cfg.data.dataset == "digits"
    assert flat["devices.profiles.rpi4"] == 1.0
    assert warnings == []


@pytest.mark.parametrize(("overrides", "key", "fragment"), BAD_PARSE, ids=PARSE_IDS)
def test_load_config_names_the_key(overrides: list[str], key: str, fragment: str) -> None:
    # Execute / Assert: one line, starting with the key
    assert_one_line_error(SCENARIO, overrides, key, fragment)


@pytest.mark.parametrize(("overrides", "key", "fragment"), BAD_PARSE, ids=PARSE_IDS)
def test_cli_bad_quant_value_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     overrides: list[str], key: str, fragment: str) -> None:
    # Prepare
    out = tmp_path / "run"
    argv = ["run", SCENARIO, "--out", str(out), "--quiet", "--no-report"]
    for o in overrides:
        argv += ["--set", o]

    # Execute
    code = main(argv)

    # Assert: exit 2, exactly one line on stderr, naming the key; nothing written
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    line = _one_error_line(err)
    assert line.startswith(f"error: {key}: ") and fragment in line, line
    assert not out.exists()


def test_preflight_rejects_checkpoint_of_wrong_arch(mlp_checkpoint: Path) -> None:
    # Prepare: the config parses; only preflight can see the file does not fit a cnn
    cfg, _ = load_config(SCENARIO, {"model.arch": "cnn", "model.checkpoint": str(mlp_checkpoint)})

    # Execute
    with pytest.raises(ConfigError) as info:
        preflight(cfg)

    # Assert
    msg = str(info.value)
    assert info.value.key == "model.checkpoint"
    assert msg.startswith("model.checkpoint: ") and "does not fit model.arch" in msg and "\n" not in msg, msg


def test_preflight_rejects_missing_checkpoint(tmp_path: Path) -> None:
    # Prepare
    missing = tmp_path / "nope.safetensors"
    cfg, _ = load_config(SCENARIO, {"model.checkpoint": str(missing)})

    # Execute
    with pytest.raises(ConfigError) as info:
        preflight(cfg)

    # Assert
    assert info.value.key == "model.checkpoint"
    assert str(info.value) == f"model.checkpoint: checkpoint '{missing}' not found"


@pytest.mark.parametrize("case", ["wrong-arch", "missing"])
def test_cli_bad_checkpoint_exits_2(case: str, mlp_checkpoint: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    path = mlp_checkpoint if case == "wrong-arch" else tmp_path / "nope.safetensors"
    out = tmp_path / "run"
    argv = ["run", SCENARIO, "--out", str(out), "--quiet", "--no-report",
            "--set", "model.arch=cnn", "--set", f"model.checkpoint={path}"]

    # Execute
    code = main(argv)

    # Assert: one error line naming model.checkpoint (Flower may log its own warnings), nothing written
    err = capsys.readouterr().err
    assert code == 2
    line = _one_error_line(err)
    assert line.startswith("error: model.checkpoint: "), line
    assert ("does not fit model.arch" if case == "wrong-arch" else "not found") in line, line
    assert not out.exists()


def test_w8_layers_give_one_layer_8_bit_weights_and_keep_its_input_width() -> None:
    # Prepare
    from fleet.model.assembly import trainable_model
    from fleet.quant.convert import quant_layers

    reference = build_model("cnn", (1, 8, 8), 10)
    for keep, first_input in (("none", 1), ("int8", 127)):  # conv1's signed input: 2 bits, or 8 under "int8"
        cfg, _ = load_config(SCENARIO, {"quant.keep-fp": keep, "quant.w8-layers": "conv1,conv2"})
        # Execute
        layers = quant_layers(trainable_model(cfg, reference, 2, 2))
        # Assert: the named layers' weights on the 8-bit grid, their inputs at the widths they had
        assert (layers["conv1"].weight_quant.qmax, layers["conv1"].act_quant.qmax) == (127, first_input)
        assert (layers["conv2"].weight_quant.qmax, layers["conv2"].act_quant.qmax) == (127, 3)
        assert layers["conv3"].weight_quant.qmax == 1
        assert preflight(cfg) == []


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"quant.w8-layers": "conv1", "quant.keep-fp": "default"},
     "'conv1' is not a quantized layer of cnn; quantized: conv2, conv3"),
    ({"quant.w8-layers": "conv2", "quant.weight-bits": 32, "quant.act-bits": 32, "quant.codec": "fp32"},
     "needs quantized weights"),
])
def test_preflight_rejects_w8_layers_it_cannot_widen(overrides: dict, fragment: str) -> None:
    cfg, _ = load_config(SCENARIO, overrides)
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    assert info.value.key == "quant.w8-layers" and fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("keep", ["none", "int8"])
def test_the_server_decodes_a_narrower_device_at_the_widths_its_model_has(keep: str) -> None:
    # A device whose hardware trains at 4 bits in a W2A2 run: its 8-bit layers (w8, keep-fp "int8") stay 8-bit, and
    # the server's view of its widths (the global one moved to 4 bits) must be the device model's own.
    from fleet.model.assembly import model_quant_info, trainable_model

    cfg, _ = load_config(SCENARIO, {"quant.keep-fp": keep, "quant.w8-layers": "conv2"})
    reference = build_model("cnn", (1, 8, 8), 10)
    global_info = model_quant_info(trainable_model(cfg, reference, 2, 2))
    device_info = model_quant_info(trainable_model(cfg, reference, 4, 4))
    assert global_info.at_bits(4, 2).weights == device_info.weights
    assert device_info.weights["conv2.weight"].bits == 8 and device_info.weights["conv3.weight"].bits == 4
