"""The single-device benchmark: its plain loop's pieces against the project's, and its record.

The plain side must stay independent of the project and still compute what the project computes: its BatchNorm
re-estimation gives the project's statistics, its npz reader the project's standardised tensors.
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import numpy as np
import torch

from fleet.data.datasets import load_dataset
from fleet.model.bnstats import reestimate_bn
from simulations.benchmarks import plain_loops as plain
from simulations.benchmarks import single_device as sd
from simulations.benchmarks import vanilla_flower


def _student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    student = plain.quantize_plain(plain.PlainCNN(1, 10), 2, 2)
    plain._init_quantizers(student, torch.randn(64, 1, 12, 12), seed)
    return student


def test_the_plain_batchnorm_refresh_gives_the_projects_statistics() -> None:
    x = torch.randn(300, 1, 12, 12)
    ours, theirs = _student(), _student()
    sd.refresh_bn(ours, x, batch_size=128)
    reestimate_bn(theirs, x, batch_size=128)
    a, b = ours.state_dict(), theirs.state_dict()
    for k in a:
        if k.endswith(("running_mean", "running_var")):
            assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6), k


def _npz_folder(root: Path, n_train: int = 40, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        np.savez(root / f"toy_{split}.npz", images=rng.integers(0, 256, (n, 6, 6), dtype=np.uint8),
                 labels=rng.integers(0, 3, n))


def test_the_plain_npz_reader_standardises_as_the_project_does(tmp_path: Path) -> None:
    _npz_folder(tmp_path)
    x, y, x_test, y_test = sd.load_npz(str(tmp_path))
    ds = load_dataset("npz", str(tmp_path))
    assert torch.allclose(x, ds.x_train, atol=1e-5) and torch.allclose(x_test, ds.x_test, atol=1e-5)
    assert torch.equal(y, ds.y_train) and torch.equal(y_test, ds.y_test)
    vx, vy, vxt, _ = vanilla_flower.data_split(str(tmp_path))  # the scale benchmark's vanilla side, 10k devices
    assert vx.shape == (40, 1, 6, 6) and vxt.shape == (10, 1, 6, 6) and vy.dtype == np.int64
    assert float(vx.max()) <= 1.0


def test_the_plain_run_follows_the_recipe_and_evaluates_on_schedule(tmp_path: Path) -> None:
    ds = load_dataset("digits")
    fp = plain.PlainCNN(1, 10)
    ref = tmp_path / "ref.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in fp.state_dict().items()}, str(ref))
    recipe = {**sd.RECIPE, **sd.QUICK, "federation.rounds": 3, "federation.eval-every": 2}
    out = sd.plain_run((ds.x_train, ds.y_train, ds.x_test, ds.y_test), str(ref), 4, 4, 0, recipe)
    assert len(out["curve"]) == 3  # before training, after epoch 2, after the last epoch
    assert out["final_accuracy"] == out["curve"][-1] and 0.0 <= out["final_accuracy"] <= 1.0


def test_the_plain_side_imports_nothing_of_the_project_at_module_level() -> None:
    tree = ast.parse(Path(sd.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.split(".")[0] in ("fleet", "strategies", "simulations")]


def test_the_summary_pairs_repetitions_and_takes_medians() -> None:
    rows = [{"cell": "w4a4", "side": side, "seed": r, "wall_s": w, "peak_rss_mb": 100.0, "final_accuracy": a}
            for r, (side, w, a) in enumerate([("edgefleet", 30.0, 0.9), ("plain", 20.0, 0.8)])]
    rows += [{**copy.deepcopy(r), "wall_s": r["wall_s"] * 2} for r in rows]
    s = sd._summarise(rows)["w4a4"]
    assert s["wall_ratio_median_paired"] == 1.5 and s["edgefleet_wall_s"] == 45.0 and s["plain_wall_s"] == 30.0
    assert s["accuracy"] == {"edgefleet": [0.9, 0.9], "plain": [0.8, 0.8]}
