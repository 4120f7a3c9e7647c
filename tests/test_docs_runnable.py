"""The README's and docs/'s commands and snippets run as written, or are at least valid.

Convention for doc writers
--------------------------
Every fenced shell block (info string ``bash``, ``sh``, ``shell`` or ``console``) carries, on the line right
above its opening fence, one of two HTML comments (invisible once rendered)::

    <!-- runnable -->
    <!-- not-runnable: why (needs internet, a cluster, a GPU, a flwr deployment, an existing run, ...) -->

A ``text`` block marked ``<!-- runnable -->`` is a transcript: ``$ command`` lines, each followed by the exact
output (stdout then stderr) the command prints.

A ``toml`` block whose first line is ``# NAME.toml`` defines a scenario file: a command in any doc naming
``NAME.toml`` gets the block's text, written to a temporary folder.

What is checked
---------------
* every shell block is classified (the files in ``UNMARKED`` excepted, with the reason given there);
* every command of every shell block, runnable or not, and every inline ```fleet ...``` span: the program is
  known; ``fleet <sub> --help`` exits 0 (in process here; as subprocesses in the slow
  ``test_documented_subcommands_help``); options exist; scenarios (built-in names or the docs' files) load with
  their ``--set`` / ``--grid`` values through ``fleet.config.scenario.parse_config`` and pass ``fleet run``'s
  preflight (data, model, strategy); ``flwr run`` configs hold only keys of ``[tool.flwr.app.config]`` and
  validate; ``make`` targets exist; installed paths are packages. A synopsis (``SCENARIO``, ``KEY=VALUE``,
  ``...``) is checked for its subcommand, options and keys only;
* every ``toml`` block whose tables are scenario sections parses and validates (strategies load with their
  options); every ``python`` block compiles and its first-party imports resolve; every ``section.key`` written in
  the docs is a key ``fleet keys`` lists; every relative link and ``#anchor`` resolves;
* runnable blocks run (slow): each command in a subprocess, cwd = the repository root, ``fleet`` the one beside
  ``sys.executable``, the float-reference cache in a temporary folder (``EDGEFLEET_CACHE``).

How ``fleet run`` is shrunk
---------------------------
After the command's own arguments the test appends ``--set`` overrides, which win over the command's own (so
scaling.md's 1000 devices become 50): ``federation.rounds=1``, ``federation.num-devices`` at most 50,
``federation.devices-per-round`` at most 2, ``model.pretrain-epochs`` at most 1, ``data.test-limit`` at most 500,
``data.train-limit`` at most 3000 (MNIST's 60,000 would take minutes to pretrain on; digits has 1797),
``federation.device-eval-limit`` at most 200, the reference pretrained on the public split, ``ray.num-cpus=1``
(without ``ray.address``), and for a ``[stream]`` phase 2 tasks, 1 record epoch, 1 device.
It also appends ``--out <tmp>/...``, so nothing is written into the repository; a command that appears in
several blocks runs once. Transcripts run unshrunk (with ``--out`` only): they document errors that stop a run
before it starts. A command that needs ``../shared/`` data is skipped when that folder is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.config.scenario import TABLE_KEYS, ConfigError, defaults, flatten, parse_config
from fleet.config.schema import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")
UNMARKED: dict[str, str] = {}  # docs whose shell blocks are not classified yet, and why (none now)
MARK = re.compile(r"^\s*<!--\s*(runnable|not-runnable)\s*(?::\s*(.*?))?\s*-->\s*$")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*(=[A-Z0-9_,.]+)?|\.\.\.|.*path/to/.*")
FILE_SUFFIXES = ("safetensors", "jsonl", "json", "toml", "md", "py", "png", "csv", "npz", "log", "onnx")


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    marker: str | None  # "runnable", "not-runnable" or None
    reason: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    lines, out, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not re.match(rf"^\s*{m.group(1)}\s*$", lines[j]):
            j += 1
        mark = MARK.match(lines[i - 1]) if i else None
        out.append(Block(str(path.relative_to(ROOT)), i + 1, m.group(2).lower(), textwrap.dedent("\n".join(
            lines[i + 1:j])), mark.group(1) if mark else None, (mark.group(2) or "") if mark else ""))
        i = j + 1
    return out


BLOCKS = [b for doc in DOCS for b in _blocks(doc)]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL and b.doc not in UNMARKED]
RUNNABLE = [b for b in BLOCKS if b.marker == "runnable"]


def _prose(path: Path) -> str:
    """A doc's text without its python blocks (code there uses attributes that look like keys)."""
    return re.sub(r"^\s*```python\n.*?^\s*```\s*$", "", path.read_text(), flags=re.M | re.S)


def _commands(body: str) -> list[list[str]]:
    """Shell lines as argv lists: continuations joined, comments and a leading ``$ `` dropped."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        argv = shlex.split(line.removeprefix("$ "), comments=True)
        if argv:
            out.append(argv)
    return out


def _doc_tomls(folder: Path) -> dict[str, Path]:
    """The docs' ``# NAME.toml`` blocks, written to ``folder``: name -> path (one name, one text)."""
    files: dict[str, Path] = {}
    for b in BLOCKS:
        m = re.match(r"#\s*([\w.-]+\.toml)\s*\n", b.body)
        if b.lang == "toml" and m:
            path = files[m.group(1)] = folder / m.group(1)
            assert not path.exists() or path.read_text() == b.body, f"{b}: another block defines {path.name}"
            path.write_text(b.body)
    return files


@functools.cache
def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from simulations.cli import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


#: Flower's commands run offline and leave ~/.flwr alone (no update check, a throwaway FLWR_HOME).
FLOWER_ENV = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1",
              "FLWR_HOME": str(Path(tempfile.gettempdir()) / "docs-flwr")}


@functools.cache
def _help_exits_0(exe: str, *sub: str) -> bool:
    return subprocess.run([exe, *sub, "--help"], capture_output=True, cwd=ROOT, timeout=120,
                          env=FLOWER_ENV).returncode == 0


@functools.cache
def _fleet_help_exits_0(sub: str) -> bool:
    """``fleet SUB --help`` in this process (the subprocess form runs in ``test_documented_subcommands_help``)."""
    from simulations.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([sub, "--help"])
        except SystemExit as exc:
            return exc.code in (0, None)
    return False


def _inline_fleet_commands() -> list[list[str]]:
    return [shlex.split(span) for doc in DOCS for span in re.findall(r"`((?:\.venv/bin/)?fleet [^`\n]+)`", _prose(doc))]


def _documented_fleet_subcommands() -> set[str]:
    argvs = [a for b in SHELL_BLOCKS for a in _commands(b.body)] + _inline_fleet_commands()
    return {a[1] for a in argvs if Path(a[0]).name == "fleet" and len(a) > 1}


def _exe(name: str) -> str:
    path = BIN / name
    assert path.is_file(), f"no '{name}' beside {sys.executable}"
    return str(path)


def _placeholder(token: str) -> bool:
    return bool(PLACEHOLDER.fullmatch(token.strip("[]")))


def _option_values(args: list[str], option: str) -> list[str]:
    vals = [args[i + 1] for i, a in enumerate(args[:-1]) if a.strip("[") == option]
    return vals + [a.split("=", 1)[1] for a in args if a.startswith(option + "=")]


def _known_key(key: str) -> bool:
    return key in _keys() or key in TABLE_KEYS or any(key.startswith(t + ".") for t in TABLE_KEYS)


@functools.cache
def _keys() -> frozenset[str]:
    return frozenset(defaults().to_flat())


def _check_fleet(args: list[str], files: dict[str, Path]) -> None:
    from simulations.run.scenario import load_config, preflight

    assert args and args[0] in _subparsers(), f"fleet has no subcommand {args[:1]}; it has {sorted(_subparsers())}"
    sub, parser = args[0], _subparsers()[args[0]]
    assert _fleet_help_exits_0(sub), f"`fleet {sub} --help` did not exit 0"
    options = {o for a in parser._actions for o in a.option_strings}
    for tok in args[1:]:
        if tok.strip("[").startswith("-"):
            assert tok.strip("[]").split("=")[0] in options, f"fleet {sub} has no option {tok}; it has {options}"
    sets = [v for v in _option_values(args, "--set") if not _placeholder(v)]
    grids = [v for v in _option_values(args, "--grid") if not _placeholder(v)]
    for item in sets + grids:
        assert _known_key(item.partition("=")[0]), f"unknown scenario key in {item} (see `fleet keys`)"
    if len(args) == 1 or any(_placeholder(t) for t in args[1:]):
        return  # a mention (`fleet run`) or a synopsis: subcommand, options and keys checked
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            ns = parser.parse_args(args[1:])
        except SystemExit:
            pytest.fail(f"`fleet {' '.join(args)}` does not parse: {err.getvalue().strip()}")
    if sub in ("run", "sweep", "deploy"):  # the scenario with all its --set values, and with each --grid value
        scenario = str(files.get(ns.scenario, ns.scenario))
        _skip_without_shared_data([scenario, *sets])
        preflight(load_config(scenario, sets)[0])  # what `fleet run` checks before Ray starts: data, model, names
        for key, _, values in (g.partition("=") for g in grids):
            for value in values.split(","):
                load_config(scenario, [*sets, f"{key}={value}"])


def _check_flwr(args: list[str]) -> None:
    from flwr.common.config import parse_config_args

    if args[:2] == ["supernode", "register"]:
        assert len(args) == 4 and args[2].endswith(".pub"), f"flwr supernode register KEY.pub CONNECTION: {args}"
        assert _help_exits_0(_exe("flwr"), "supernode", "register"), "`flwr supernode register --help` failed"
        return
    assert args[:2] == ["run", "."], f"unexpected flwr command {args}"
    assert _help_exits_0(_exe("flwr"), "run"), "`flwr run --help` did not exit 0"
    app = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    for text in _option_values(args, "--run-config"):
        given = parse_config_args([str(ROOT / text) if text.endswith(".toml") else text])
        assert set(given) <= set(flatten(app)), f"flwr run only takes [tool.flwr.app.config] keys: {set(given)}"
        parse_config({**flatten(app), **given})
    for text in _option_values(args, "--federation-config"):
        parse_config_args([text])


@functools.cache
def _flower_help(prog: str) -> str:
    res = subprocess.run([_exe(prog), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120, env=FLOWER_ENV)
    assert res.returncode == 0, f"`{prog} --help` did not exit 0"
    return res.stdout


def _check_flower_options(prog: str, args: list[str]) -> None:
    """Every option a doc gives Flower's server or node exists in its ``--help``."""
    options = set(re.findall(r"--[a-z][a-z-]*", _flower_help(prog)))
    for tok in args:
        if tok.startswith("--"):
            assert tok.split("=")[0] in options, f"{prog} has no option {tok}"


def check_command(argv: list[str], files: dict[str, Path]) -> None:
    """Static checks of one documented command (see the module docstring)."""
    prog, args = Path(argv[0]).name, argv[1:]
    if prog == "fleet":
        _check_fleet(args, files)
    elif prog == "flwr":
        _check_flwr(args)
    elif prog == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert set(args) <= set(targets), f"Makefile has no target {set(args) - set(targets)}"
    elif prog == "pip":
        assert args[:2] == ["install", "-e"] and (ROOT / args[2] / "pyproject.toml").is_file(), argv
    elif prog == "ray":
        assert args[0] in ("start", "stop"), argv
    elif prog in ("flower-superlink", "flower-supernode"):
        _check_flower_options(prog, args)
    elif prog == "export":
        assert args and all(re.fullmatch(r"[A-Z_]+=\S+", a) for a in args), argv
    elif prog == "pkill":
        assert args[:1] == ["-f"] and len(args) == 2, argv
    elif prog == "ssh-keygen":
        assert args[:4] == ["-t", "ecdsa", "-b", "384"], f"Flower's SuperNode keys are ECDSA P-384: {argv}"
    elif prog.startswith("python") and args[:1] == ["-m"]:
        import importlib.util

        assert importlib.util.find_spec(args[1]) is not None, f"no module {args[1]}"
    elif prog != "source":
        pytest.fail(f"no check for command '{prog}': teach tests/test_docs_runnable.py (check_command)")


def test_every_shell_block_is_classified() -> None:
    unmarked = [str(b) for b in SHELL_BLOCKS if b.marker is None]
    no_reason = [str(b) for b in SHELL_BLOCKS if b.marker == "not-runnable" and not b.reason]
    assert unmarked == [] and no_reason == [], ("mark each shell block with <!-- runnable --> or "
                                                f"<!-- not-runnable: why -->: {unmarked}; reason missing: {no_reason}")
    assert all(b.lang in (*SHELL, "text") for b in RUNNABLE), [str(b) for b in RUNNABLE if b.lang not in SHELL]


@pytest.mark.slow
def test_documented_subcommands_help() -> None:
    subs = sorted(_documented_fleet_subcommands())
    assert set(subs) <= set(_subparsers()), f"docs name fleet subcommands {set(subs) - set(_subparsers())}"
    procs = {sub: subprocess.Popen([_exe("fleet"), sub, "--help"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE) for sub in subs}  # at once: each imports torch
    failed = {sub: p.communicate(timeout=300)[1].decode()[-300:] for sub, p in procs.items() if p.wait(300) != 0}
    assert failed == {}


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=str)
def test_shell_block_commands_are_valid(block: Block, tmp_path: Path) -> None:
    files = _doc_tomls(tmp_path)
    for argv in _commands(block.body):
        check_command(argv, files)


def test_inline_fleet_commands_are_valid(tmp_path: Path) -> None:
    files = _doc_tomls(tmp_path)
    for argv in _inline_fleet_commands():
        check_command(argv, files)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "toml"], ids=str)
def test_toml_scenario_snippet_is_valid(block: Block, monkeypatch: pytest.MonkeyPatch) -> None:
    from strategies.loader import load_strategy

    nested = tomllib.loads(block.body)
    if not set(nested) <= set(SECTIONS):
        return  # not a scenario snippet: parsing as TOML is the whole check
    cfg = parse_config(flatten(nested))
    for example in (ROOT / "examples").iterdir():  # the docs' worked examples, as if installed
        monkeypatch.syspath_prepend(str(example))
    load_strategy(cfg.strategy.name, dict(cfg.strategy.options), cfg.strategy.path)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=str)
def test_python_block_compiles_and_imports(block: Block) -> None:
    compile(block.body, str(block), "exec")
    for line in block.body.splitlines():
        if re.match(r"(from|import) (fleet|strategies|simulations)\b", line):
            exec(line, {})  # noqa: S102 - the doc's own import line


def test_every_scenario_key_written_in_the_docs_exists() -> None:
    word = r"(?<![\w./-])((?:" + "|".join(SECTIONS) + r")\.[a-z0-9][a-z0-9-]*(?:\.[\w<>-]+)*)"
    unknown = {(str(doc.relative_to(ROOT)), key) for doc in DOCS for key in re.findall(word, _prose(doc))
               if not _known_key(key) and not key.endswith(FILE_SUFFIXES)}
    assert unknown == set()


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    text = re.sub(r"^\s*```.*?^\s*```\s*$", "", path.read_text(), flags=re.M | re.S)  # no code-block lines
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_relative_links_and_anchors_resolve() -> None:
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(doc)):
            if re.match(r"\w+:", target):
                continue  # a URL
            file, _, anchor = target.partition("#")
            path = (doc.parent / file).resolve() if file else doc
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert broken == []


# The errors README's scenario example ran into before it read the shared MNIST folder as npz.
def _npz_folder(folder: Path, *names: str) -> Path:
    for name in names:
        np.savez(folder / name, images=np.zeros((2, 3, 3), dtype=np.uint8), labels=np.arange(2))
    return folder


@pytest.mark.parametrize(("dataset", "cls_name"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST"),
                                                   ("cifar10", "CIFAR10")])
def test_torchvision_dataset_on_an_npz_folder_suggests_npz(tmp_path: Path, dataset: str, cls_name: str) -> None:
    from fleet.data.datasets import load_dataset

    root = _npz_folder(tmp_path, "mnist_train.npz", "mnist_test.npz")
    with pytest.raises(ConfigError) as info:
        load_dataset(dataset, root=str(root))
    assert str(info.value) == (f"data.dataset: {cls_name} not found under '{root}', which holds npz files "
                               '(mnist_test.npz, mnist_train.npz): set data.dataset = "npz" to read them')


def test_npz_folder_without_train_file_names_data_root(tmp_path: Path) -> None:
    from fleet.data.datasets import load_dataset

    with pytest.raises(ConfigError) as info:
        load_dataset("npz", root=str(_npz_folder(tmp_path, "only_test.npz")))
    assert str(info.value) == (f"data.root: '{tmp_path}' holds no *_train.npz file "
                               "(a folder of <name>_train.npz / <name>_test.npz)")


# --- running the runnable blocks -----------------------------------------------------------------------------

def _shrink(scenario: str, overrides: list[str]) -> list[str]:
    from simulations.run.scenario import load_config

    cfg, _ = load_config(scenario, overrides)
    fed, n = cfg.federation, min(cfg.federation.num_devices, 50)
    small: dict[str, Any] = {
        "federation.rounds": 1, "federation.num-devices": n,
        "federation.devices-per-round": min(fed.devices_per_round, 2, n),
        "model.pretrain-epochs": min(cfg.model.pretrain_epochs, 1),
        "data.test-limit": min(cfg.data.test_limit or 500, 500),
        "data.train-limit": min(cfg.data.train_limit or 3000, 3000),
        "federation.device-eval-limit": min(fed.device_eval_limit or 200, 200),
    }
    if cfg.data.public_fraction > 0:
        small["model.pretrain-data"] = "public"  # not the whole training set (the single-device protocol's)
    if not cfg.ray.address:
        small["ray.num-cpus"] = 1
    if cfg.stream.enabled:
        small.update({"stream.tasks": 2, "stream.record-epochs": 1, "stream.devices": 1})
    return [a for k, v in small.items() for a in ("--set", f"{k}={v}")]


def _skip_without_shared_data(argv: list[str]) -> None:
    """Skip when the command, or a scenario file it names, reads ``../shared/`` data that is absent."""
    texts = [*argv, *(Path(t).read_text() for t in argv if t.endswith(".toml") and Path(t).is_file())]
    for rel in {m for t in texts for m in re.findall(r"\.\./shared/[\w./-]+", t)}:
        if not (ROOT / rel).exists():
            pytest.skip(f"{rel} is absent")


def _run(argv: list[str], out: Path, env: dict[str, str], shrink: bool) -> subprocess.CompletedProcess[str]:
    _skip_without_shared_data(argv)
    exe, args = _exe(Path(argv[0]).name), argv[1:]
    if Path(argv[0]).name == "fleet" and args[:1] == ["run"]:
        ns = _subparsers()["run"].parse_args(args[1:])
        args = [*args, *(_shrink(ns.scenario, ns.overrides) if shrink else []), "--out", str(out)]
    elif not (Path(argv[0]).name == "fleet" and args[:1] == ["keys"]):
        pytest.fail(f"no runner for `{' '.join(argv)}`: teach tests/test_docs_runnable.py (_run)")
    return subprocess.run([exe, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


_ALREADY_RUN: set[str] = set()


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=str)
def test_runnable_block(block: Block, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    files = _doc_tomls(tmp_path)
    env = {**os.environ, "EDGEFLEET_CACHE": str(tmp_path_factory.getbasetemp() / "reference-cache")}
    if block.lang == "text":  # a transcript: "$ command" then its output
        for cmd, expected in re.findall(r"^\$ (.+)\n((?:(?!\$ ).*\n?)*)", block.body, flags=re.M):
            argv = shlex.split(cmd)
            res = _run(argv, tmp_path / "out", env, shrink=False)
            assert (res.stdout + res.stderr).strip() == expected.strip(), f"{block}: `{cmd}`"
            assert res.returncode == (2 if expected.startswith("error:") else 0)
        return
    for i, argv in enumerate(_commands(block.body)):
        argv = [str(files.get(t, t)) for t in argv]
        key = " ".join([Path(argv[0]).name, *argv[1:]])
        if key in _ALREADY_RUN:
            continue  # the same command in another block: it ran there
        _ALREADY_RUN.add(key)
        out = tmp_path / f"run{i}"
        res = _run(argv, out, env, shrink=True)
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-15:])
        assert res.returncode == 0, f"{block}: `{' '.join(argv)}` exited {res.returncode}:\n{tail}"
        if argv[1:2] == ["run"]:
            assert f"run directory: {out}" in res.stdout, tail
            assert json.loads((out / "summary.json").read_text())["status"] == "complete", tail
