"""Run-report figures that tell the truth: the data each figure draws, not only that a PNG exists.

Each test captures the matplotlib figure a ``plot_*`` function saves (``save`` patched in the
module that calls it) and reads back the plotted lines, bars and labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from rundir_factory import base_config, capture_saves, write_run

from simulations.analysis import report
from simulations.analysis.devices import device_accuracy, round_spread
from simulations.analysis.plots import data as data_plots
from simulations.analysis.plots import run as run_plots
from simulations.analysis.report import write_report
from simulations.store.rundir import load_run


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure the run and data plots save, in order (the PNG is still written)."""
    return capture_saves(monkeypatch, run_plots, data_plots)


def _line(fig: Figure, label_start: str, ax: int = 0) -> Any:
    lines = [ln for ln in fig.axes[ax].get_lines() if ln.get_label().startswith(label_start)]
    assert len(lines) == 1, [ln.get_label() for ln in fig.axes[ax].get_lines()]
    return lines[0]


def _edit_devices(run_dir: Path, change: Any) -> None:
    """Rewrite devices.jsonl with ``change(row)`` applied to every row."""
    path = run_dir / "devices.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(change(r)) + "\n" for r in rows))


# -- item 1: round 0 ---------------------------------------------------------------------------


def test_round0_is_the_first_point_of_accuracy_per_round(tmp_path: Path,
                                                         figures: list[Figure]) -> None:
    run = load_run(write_run(tmp_path / "run", rounds=4, qgt=False, continual=False))
    run_plots.plot_accuracy_rounds(run, tmp_path / "a.png")
    line = _line(figures[0], "global model")
    assert list(line.get_xdata()) == [0, 1, 2, 3, 4]
    assert line.get_ydata()[0] == pytest.approx(20.0)  # the factory's starting model: 20%
    assert "round 0" in line.get_label()


def test_round0_is_in_every_other_per_round_series(tmp_path: Path, figures: list[Figure]) -> None:
    # Prepare: round 2 not evaluated (federation.eval-every), which must not break the curve.
    run_dir = write_run(tmp_path / "run", rounds=4, qgt=False, continual=False)
    lines = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text().splitlines()]
    lines[2]["accuracy"] = None
    (run_dir / "rounds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    run = load_run(run_dir)
    # Execute
    run_plots.plot_accuracy_uplink(run, tmp_path / "u.png")
    run_plots.plot_time_status(run, tmp_path / "t.png")
    # Assert: accuracy against uplink starts at round 0 with 0 bytes, and skips round 2.
    up = _line(figures[0], "global model")
    assert up.get_xdata()[0] == 0 and up.get_ydata()[0] == pytest.approx(20.0)
    assert len(up.get_xdata()) == 4 and not np.isnan(up.get_ydata()).any()
    # Assert: round time has a bar and a wall-time point at round 0.
    time_fig = figures[1]
    bars = [p.get_x() + p.get_width() / 2 for p in time_fig.axes[0].patches]
    assert bars[0] == pytest.approx(0.0)
    wall = next(ln for ax in time_fig.axes for ln in ax.get_lines() if ln.get_label() == "wall")
    assert wall.get_xdata()[0] == 0 and wall.get_ydata()[0] == pytest.approx(0.01)


def test_report_states_round0_against_the_last_round(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", rounds=3, qgt=False, continual=False)
    text = write_report(run_dir).read_text()
    last = json.loads((run_dir / "rounds.jsonl").read_text().splitlines()[-1])["accuracy"]
    row = next(x for x in text.splitlines() if "round 0 (starting model)" in x)
    assert "20.00% ->" in row and f"{100 * last:.2f}%" in row
    assert f"{100 * (last - 0.2):+.2f} points" in row


# -- item 2: the 10th percentile over devices with enough held-out samples ----------------------


def _mixed_sizes_run(root: Path) -> Path:
    """30 devices all sampled each round: 10 with 3 held-out samples (accuracy 0), 20 with 40."""
    run_dir = write_run(root / "run", num_devices=30, per_round=30, rounds=3,
                        val_sizes=[3] * 10 + [40] * 20, qgt=False, continual=False)
    _edit_devices(run_dir, lambda r: {**r, "accuracy": 0.0} if r["device"] < 10 and
                  r["accuracy"] is not None else r)
    return run_dir


def test_p10_is_over_qualifying_devices_only_with_their_count(tmp_path: Path,
                                                              figures: list[Figure]) -> None:
    run = load_run(_mixed_sizes_run(tmp_path))
    spread = round_spread(run)  # defaults: >= 20 samples, >= 10 devices
    rows = [r for r in run.devices if r["status"] == "ok"]
    for s in spread[1:]:
        ok = [r for r in rows if r["round"] == s.round]
        big = [r["accuracy"] for r in ok if r["device"] >= 10]
        assert s.n == len(ok) and s.n_qualified == len(big)
        assert s.p10 == pytest.approx(float(np.percentile(big, 10)))
        assert s.p10 > float(np.percentile([r["accuracy"] for r in ok], 10))  # tiny sets left out
    assert spread[0].round == 0 and spread[0].n == 0 and spread[0].p10 is None
    # The figure draws those values and says on how many devices each rests.
    run_plots.plot_accuracy_rounds(run, tmp_path / "a.png")
    line = _line(figures[0], "on-device, 10th percentile")
    assert ">= 20 held-out samples" in line.get_label()
    assert list(line.get_ydata()) == pytest.approx([100 * s.p10 for s in spread[1:]])
    counts = [t.get_text() for t in figures[0].axes[0].texts]
    assert counts == [f"n={s.n_qualified}" for s in spread[1:]]


def test_p10_is_not_drawn_when_too_few_devices_qualify(tmp_path: Path,
                                                       figures: list[Figure]) -> None:
    run_dir = write_run(tmp_path / "run", val_sizes=[3] * 12, qgt=False, continual=False)
    text = write_report(run_dir).read_text()
    fig = figures[0]  # accuracy_rounds is the report's first figure
    labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
    assert not any("percentile" in lab for lab in labels)
    assert "10th percentile not drawn in any round" in fig.axes[0].get_title()
    assert "held-out sets here: 3 samples" in fig.axes[0].get_title()
    caption = text.split("### Accuracy per round")[1].split("![")[0]
    assert "no 10th percentile line" in caption and ">= 20 held-out samples" in caption
    assert "| On-device 10th percentile (0 devices with >= 20 held-out samples) | not computed" in text


def test_min_val_samples_is_a_report_setting_shown_in_the_caption(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", num_devices=30, per_round=30, rounds=2,
                        val_sizes=[5] * 30, qgt=False, continual=False)
    strict = write_report(run_dir).read_text()
    loose = write_report(run_dir, min_val_samples=5).read_text()
    assert "no 10th percentile line" in strict
    assert "min_val_samples=5, min_devices=10" in loose and "drawn in 2 round(s)" in loose


# -- item 3: QGT shows quantized layers only ----------------------------------------------------


def test_qgt_shows_only_quantized_layers(tmp_path: Path, figures: list[Figure]) -> None:
    run = load_run(write_run(tmp_path / "run", continual=False))  # layers 0 and 7 are float
    assert data_plots.plot_qgt(run, tmp_path / "q.png") is not None
    ticks = [t.get_text() for t in figures[0].axes[0].get_yticklabels()]
    names = [t.split(" ", 1)[1] for t in ticks]
    assert len(names) == 6 and "layers.0.conv" not in names and "layers.7.conv" not in names
    assert [t.split(" ")[0] for t in ticks] == [f"#{i}" for i in range(1, 7)]  # re-ranked
    assert "float layers left out: layers.0.conv, layers.7.conv" in figures[0].get_suptitle()


def test_qgt_zero_residual_reads_as_zero(tmp_path: Path, figures: list[Figure]) -> None:
    run_dir = write_run(tmp_path / "run", continual=False, float_layers=tuple(range(1, 8)))
    qgt = json.loads((run_dir / "qgt.json").read_text())
    for layer in qgt["layers"]:
        layer.update(residual=0.0, quant_mse=0.0)
    (run_dir / "qgt.json").write_text(json.dumps(qgt))
    data_plots.plot_qgt(load_run(run_dir), tmp_path / "q.png")
    texts = [t.get_text() for t in figures[0].axes[0].texts]
    assert texts == ["0 (weights exactly on the grid)"]
    assert "only quantized layer" in figures[0].get_suptitle()


@pytest.mark.parametrize("how", ["float model", "all float in the model file"])
def test_qgt_without_quantized_layers_is_a_note(tmp_path: Path, how: str) -> None:
    cfg = base_config(0)
    if how == "float model":
        cfg["quant"] = {"weight-bits": 32, "act-bits": 32, "codec": "fp32"}
    run_dir = write_run(tmp_path / "run", config=cfg, continual=False,
                        float_layers=tuple(range(8)) if how != "float model" else (0, 7))
    text = write_report(run_dir).read_text()
    assert not (run_dir / "plots" / "qgt.png").exists()
    section = text.split("### QGT bottleneck ranking")[1]
    assert "No QGT figure" in section and "all of them float" in section
    assert "](plots/qgt.png)" not in text


def test_qgt_with_unknown_float_layers_says_so(tmp_path: Path, figures: list[Figure]) -> None:
    run = load_run(write_run(tmp_path / "run", continual=False, float_layers=None))
    data_plots.plot_qgt(run, tmp_path / "q.png")
    assert len(figures[0].axes[0].get_yticklabels()) == 8
    assert "which layers are float is unknown" in figures[0].get_suptitle()


# -- item 4: one device set for the device figure and the table -------------------------------


def test_device_figure_and_table_share_devices_count_and_mean(tmp_path: Path,
                                                              figures: list[Figure]) -> None:
    # Prepare: 100 devices, 90 with enough held-out samples -> the worst 10% are 9 devices.
    run_dir = write_run(tmp_path / "run", num_devices=100, per_round=100, rounds=2,
                        val_sizes=[25] * 90 + [4] * 10, qgt=False, continual=False)
    da = device_accuracy(load_run(run_dir))
    assert len(da.qualified) >= 80 and len(da.worst) == 9 > 8
    # Execute
    text = write_report(run_dir).read_text()
    fig = next(f for f in figures if "On-device accuracy of the received" in f.get_suptitle())
    # Assert: the table lists exactly the figure's red devices.
    row = next(x for x in text.splitlines() if x.startswith("| Worst 10% of devices"))
    listed = [int(p.strip().split(" ")[0]) for p in row.split("|")[2].split(",")]
    assert listed == da.worst
    assert f"({len(da.worst)} of {len(da.qualified)}; as in the figure)" in row
    hist, ranked = fig.axes[0], fig.axes[1]
    red = next(c for c in ranked.collections if len(c.get_facecolors()) and
               tuple(c.get_facecolors()[0][:3]) == pytest.approx((0.839, 0.153, 0.157), abs=1e-2))
    assert len(red.get_offsets()) == len(da.worst)
    legend = " ".join(t.get_text() for t in ranked.get_legend().get_texts())
    assert ", ".join(map(str, da.worst)).replace(" ", "") in legend.replace("\n", "").replace(" ", "")
    # Assert: one mean, over the same devices, in the figure and the table.
    mean_label = next(ln.get_label() for ln in hist.get_lines() if ln.get_label().startswith("mean"))
    assert f"mean of all {len(da.accuracy)} ({100 * da.mean:.1f}%)" == mean_label
    assert (f"| On-device accuracy, each device's last report ({len(da.accuracy)} devices): "
            f"mean | {100 * da.mean:.2f}% |") in text


def test_small_held_out_devices_are_not_ranked(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", num_devices=30, per_round=30, rounds=2,
                        val_sizes=[3] * 10 + [40] * 20, qgt=False, continual=False)
    _edit_devices(run_dir, lambda r: {**r, "accuracy": 0.0} if r["device"] < 10 and
                  r["accuracy"] is not None else r)
    da = device_accuracy(load_run(run_dir))
    assert da.worst and all(d >= 10 for d in da.worst)  # the 0% three-sample devices are not "worst"
    assert da.mean < np.mean([da.accuracy[d] for d in da.qualified])  # the mean keeps them


def test_report_figures_dict_still_lists_every_stem() -> None:
    assert list(report.RUN_FIGURES) == ["accuracy_rounds", "accuracy_uplink", "device_accuracy",
                                        "time_status", "partition", "qgt", "continual"]
