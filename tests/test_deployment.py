"""Flower's deployment engine on loopback: TLS, authenticated SuperNodes, the same results as the simulation.

The slow tests start real processes (``flower-superlink``, ``flower-supernode``, ``flwr run``) on 127.0.0.1 with
ports the OS picked, and check afterwards that none of them (nor anything they spawned) is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from whole_run import run_flat

from fleet.config.scenario import ConfigError
from simulations.deployment.command import run_config_for_flwr
from simulations.deployment.credentials import make_certificates, make_node_key
from simulations.deployment.federation import LocalFederation
from simulations.run.scenario import load_config
from simulations.server_app import APP_ROOT

PYPROJECT = APP_ROOT / "pyproject.toml"
#: Two rounds of the quickstart on two devices, under both engines.
SETS = ["federation.rounds=2", "federation.num-devices=2", "federation.devices-per-round=2"]
WALL = ("wall_time_s", "finished_at", "startup_s", "wall_s")
HOSTED = ("hosted",)  # the deployed run says it ran under Flower's runtime (fleet resume refuses it)


def _same(a: dict, b: dict) -> dict:
    """The keys on which two summaries differ, wall-clock ones aside."""
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if k not in WALL + HOSTED and a.get(k) != b.get(k)}


def test_the_certificate_names_loopback_and_is_signed_by_the_ca(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    cert = x509.load_pem_x509_certificate(certs.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.key.stat().st_mode & 0o077 == 0  # the private key is the owner's only


def test_a_node_key_is_ecdsa_p384_in_the_form_flower_reads(tmp_path: Path) -> None:
    key = make_node_key(tmp_path, "supernode-0")
    public = serialization.load_ssh_public_key(key.public.read_bytes())
    private = serialization.load_ssh_private_key(key.private.read_bytes(), password=None)
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == public.public_numbers()
    assert key.private.stat().st_mode & 0o077 == 0


def test_the_run_config_carries_every_key_flower_accepts(tmp_path: Path) -> None:
    cfg, _ = load_config("quickstart", [*SETS, "strategy.name=fedprox", "strategy.options.proximal-mu=0.1",
                                        "devices.profiles.phone-mid=1.0"])
    nested = run_config_for_flwr(cfg, tmp_path / "run", PYPROJECT)
    assert nested["strategy"]["options"] == "proximal-mu=0.1"
    assert nested["devices"]["profiles"]["phone-mid"] == 1.0 and nested["devices"]["profiles"]["rpi4"] == 0.0
    assert nested["output"] == {**nested["output"], "dir": str((tmp_path / "run").resolve()), "name": "quickstart"}
    # What Flower does with the file: flatten, fuse into pyproject's config (unknown keys refused), and it parses
    # back to the same scenario.
    from flwr.common.config import flatten_dict, fuse_dicts

    from fleet.config.scenario import parse_config

    app = flatten_dict(tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"])
    fused = fuse_dicts(app, flatten_dict(tomllib.loads(tomli_w.dumps(nested))))
    again = {k: v for k, v in parse_config(fused, name="flwr").to_flat().items()
             if not (k.startswith("devices.profiles.") and v == 0.0)}  # the declared profiles, at weight 0
    assert again == {**cfg.to_flat(), "output.dir": str((tmp_path / "run").resolve())}


def test_a_key_flower_cannot_carry_is_refused_by_name(tmp_path: Path) -> None:
    cfg, _ = load_config("quickstart", ["devices.custom.tiny.gflops=1.0", "devices.custom.tiny.memory-mb=64",
                                        "devices.custom.tiny.uplink-mbps=1.0", "devices.custom.tiny.downlink-mbps=1.0",
                                        "devices.profiles.tiny=1.0"])
    with pytest.raises(ConfigError, match=r"^devices\.(custom|profiles)\.tiny[a-z.-]*: Flower.s run config carries"):
        run_config_for_flwr(cfg, tmp_path, PYPROJECT)


def test_bad_device_count_is_one_line_exit_2() -> None:
    res = subprocess.run([sys.executable, "-m", "simulations.cli", "deploy", "quickstart", "--devices", "0"],
                         capture_output=True, text=True, cwd=APP_ROOT, timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == "error: --devices: must be >= 1, got 0"


def _processes_naming(text: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if text in " ".join(p.info["cmdline"] or ()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


@pytest.mark.slow
def test_tls_and_authenticated_supernodes_run_the_quickstart_as_the_simulation_does(tmp_path: Path) -> None:
    # Prepare: a SuperLink with TLS and SuperNode authentication, two registered SuperNodes, and an intruder whose
    # key was never registered.
    cfg, _ = load_config("quickstart", SETS)
    run_dir = (tmp_path / "deployed").resolve()
    rc = tmp_path / "run-config.toml"
    rc.write_text(tomli_w.dumps(run_config_for_flwr(cfg, run_dir, PYPROJECT)))
    fed = LocalFederation(tmp_path / "work", 2, cwd=APP_ROOT)
    with fed:
        intruder = fed.add_node("intruder", make_node_key(tmp_path / "work" / "keys", "intruder"), 0, max_retries=1)
        intruder.proc.wait(timeout=120)
        # Act: flwr run through the federation.
        run = fed.run(APP_ROOT, rc)
        online = fed.online()
        pids = [p.pid for p in fed.group.descendants()]
    # Assert: the intruder was refused, the others ran both rounds, the run directory is complete, nothing is left.
    assert intruder.proc.returncode != 0
    assert "Failed to activate SuperNode" in intruder.log.read_text()
    assert online == 2, online
    assert run.proc.returncode == 0, run.log.read_text()[-2000:]
    for name in ("config.toml", "rounds.jsonl", "devices.jsonl", "summary.json", "report.md", "model.onnx",
                 "model-int.safetensors"):
        assert (run_dir / name).is_file(), name
    deployed = json.loads((run_dir / "summary.json").read_text())
    assert deployed["status"] == "complete" and deployed["scenario"] == "quickstart"
    assert deployed["hosted"] == "flower-runtime"
    assert not (run_dir / "device-state").exists()  # devices kept their state in Flower's context.state
    assert [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
    assert _processes_naming(str(tmp_path / "work")) == []
    # ... and the deployment's metrics are the simulation's, round by round.
    simulated, sim_rounds, _ = run_flat(cfg.to_flat(), tmp_path / "simulated", "quickstart")
    rounds = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert [r["accuracy"] for r in rounds] == [r["accuracy"] for r in sim_rounds]
    assert _same(deployed, simulated) == {}


def test_an_option_that_cannot_travel_is_refused_by_name_and_paths_become_absolute(tmp_path: Path) -> None:
    cfg, _ = load_config("quickstart", ["strategy.name=fedprox", 'strategy.options.tag="a,b"'])
    with pytest.raises(ConfigError, match=r"^strategy\.options\.tag: 'a,b' cannot travel"):
        run_config_for_flwr(cfg, tmp_path, PYPROJECT)
    cfg, _ = load_config("quickstart", ["data.root=some/folder", "strategy.path=examples/custom_strategy"])
    nested = run_config_for_flwr(cfg, tmp_path, PYPROJECT)
    assert nested["data"]["root"] == str(Path("some/folder").resolve())
    assert nested["strategy"]["path"] == str(Path("examples/custom_strategy").resolve())


def test_fleet_resume_refuses_a_run_made_under_flowers_runtime(tmp_path: Path) -> None:
    from simulations.run.resume import check_resumable

    (tmp_path / "config.toml").write_text("[federation]\nrounds = 2\n")
    (tmp_path / "summary.json").write_text(json.dumps({"status": "interrupted", "hosted": "flower-runtime"}))
    with pytest.raises(ConfigError, match="ran under Flower's runtime"):
        check_resumable(tmp_path)


@pytest.mark.slow
def test_sigterm_stops_every_process_and_marks_the_run(tmp_path: Path) -> None:
    # Prepare: fleet deploy --insecure of a run long enough to be stopped in its rounds.
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", "deploy", "quickstart", "--devices", "2",
                             "--insecure", "--quiet", "--out", str(out), "--set", "federation.rounds=50"],
                            cwd=APP_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / "rounds.jsonl").is_file():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.5)
    before = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    # Act: kill (SIGTERM; Ctrl-C takes the same path, as a KeyboardInterrupt).
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    # Assert: exit 130, the warning about --insecure, the run marked, logs and exit codes kept, no process left.
    assert proc.returncode == 130, stderr
    assert "warning: --insecure: plain HTTP and no SuperNode authentication" in stderr
    assert "interrupted (SIGTERM): every process of the deployment is stopped" in stderr
    codes = {p["name"]: p["returncode"] for p in json.loads((out / "deployment" / "processes.json").read_text())
             ["processes"]}
    assert codes["superlink"] is not None and codes["superlink"] != 0, codes  # stopped by a signal, not exit 0
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "deployment" / "superlink.log").is_file() and (out / "deployment" / "processes.json").is_file()
    assert before and [p for p in before if psutil.pid_exists(p)
                       and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []
