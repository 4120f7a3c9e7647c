"""The architecture as rules: imports run one way, the numpy-only parts load no torch, modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("fleet", "strategies", "simulations")  # each may import only from itself and the ones before it


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_run_one_way(layer: str) -> None:
    # Arrange: the layers above this one
    above = set(LAYERS[LAYERS.index(layer) + 1:])

    # Act: every top-level package each module imports
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_packages(p) & above) for p in _modules(layer)}

    # Assert
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("module", ["strategies.wrapper", "strategies.loader", "strategies.guard",
                                    "fleet.quant.spec", "fleet.quant.codecs", "fleet.quant.packing",
                                    "fleet.config.scenario", "fleet.protocol", "fleet.model.roles"])
def test_numpy_only_parts_do_not_load_torch(module: str) -> None:
    # Act: a fresh interpreter, so nothing else has loaded torch already
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)

    # Assert
    assert out.stdout.strip() == "[]"


def test_no_module_over_about_400_lines() -> None:
    # Arrange: benchmarks may be longer (plain_loops.py is a self-contained torch script)
    paths = [p for layer in LAYERS for p in _modules(layer) if "benchmarks" not in p.parts]

    # Act
    long = {str(p.relative_to(ROOT)): n for p in paths if (n := len(p.read_text().splitlines())) > 420}

    # Assert
    assert long == {}
