"""``fleet report RUN_DIR``: figures under ``RUN_DIR/plots/`` and a readable ``RUN_DIR/report.md``.

The report works on incomplete runs too (a crash, an interrupt, a run still going): it is
then marked INCOMPLETE and its numbers come from the rounds that finished.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulations.analysis.plots.common import byte_unit
from simulations.analysis.plots.data import plot_continual, plot_partition, plot_qgt
from simulations.analysis.plots.run import (
    last_device_accuracy,
    plot_accuracy_rounds,
    plot_accuracy_uplink,
    plot_device_accuracy,
    plot_time_status,
    worst_devices,
)
from simulations.store.rundir import Run, RunDirError, load_run

__all__ = ["RUN_FIGURES", "write_report", "key_numbers", "fmt_bytes", "add_parser", "main"]

PlotFn = Callable[[Run, Path], Path | None]

#: Figure file stem -> (plot function, heading, caption in report.md), in report order.
RUN_FIGURES: dict[str, tuple[PlotFn, str, str]] = {
    "accuracy_rounds": (plot_accuracy_rounds, "Accuracy per round",
                        "Central test accuracy of the global model (deployed/quantized when "
                        "quantized), the on-device mean and 10th percentile, and the FP "
                        "reference as a dashed line."),
    "accuracy_uplink": (plot_accuracy_uplink, "Accuracy against communication",
                        "Global-model accuracy against the cumulative bytes devices uploaded."),
    "device_accuracy": (plot_device_accuracy, "Accuracy across devices",
                        "On-device held-out accuracy of the received global model, in the "
                        "last round each device reported one; the worst 10% in red."),
    "time_status": (plot_time_status, "Round time and device status",
                    "Simulated round time (slowest accepted device), wall time, and what "
                    "happened to each round's sampled devices."),
    "partition": (plot_partition, "Data partition",
                  "Share of each class in each device's training data, and local data sizes."),
    "qgt": (plot_qgt, "QGT bottleneck ranking",
            "Per-layer QGT residual and quantization MSE; the top layers are the first "
            "candidates for more bits."),
    "continual": (plot_continual, "Continual calibration",
                  "Accuracy per stream task for each calibration method: mean over devices "
                  "with the 10th-90th percentile band."),
}


def fmt_bytes(n: float | None) -> str:
    """Bytes in a readable decimal unit (``1.50 MB``), or ``–`` for None."""
    if n is None:
        return "–"
    div, unit = byte_unit(float(n))
    return f"{n / div:.2f} {unit}" if div > 1 else f"{int(n)} B"


def _pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}%"


def _num(x: Any, unit: str = "", digits: int = 1) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}{unit}"


def key_numbers(run: Run) -> list[tuple[str, str]]:
    """The report's key numbers as ``(label, text)`` rows, from the summary and the rounds.

    Without a summary, totals are summed over ``rounds.jsonl`` instead.
    """
    s = run.summary or {}
    rounds = run.rounds
    last = rounds[-1] if rounds else {}
    final = s.get("final_accuracy", last.get("accuracy"))
    fp = s.get("fp_reference_accuracy")

    def total(key: str, summary_key: str) -> float | None:
        if s.get(summary_key) is not None:
            return float(s[summary_key])
        return float(sum(float(r.get(key) or 0) for r in rounds)) if rounds else None

    rows = [("Status", "complete" if not run.incomplete else f"INCOMPLETE ({run.status})"),
            ("Scenario", str(s.get("scenario", "–"))),
            ("Rounds completed / planned",
             f"{s.get('rounds_completed', len(rounds))} / {s.get('rounds_planned', '?')}"),
            ("Final accuracy (global model)", _pct(final)),
            ("FP reference accuracy", _pct(fp))]
    if final is not None and fp is not None:
        rows.append(("Gap to FP reference", f"{100 * (final - fp):+.2f} points"))
    if rounds:
        best = max(rounds, key=lambda r: float(r.get("accuracy") or 0))
        rows.append(("Best round accuracy",
                     f"{_pct(best.get('accuracy'))} (round {best['round']})"))
        rows.append(("On-device accuracy, last round: mean / p10",
                     f"{_pct(last.get('device_accuracy_mean'))} / "
                     f"{_pct(last.get('device_accuracy_p10'))}"))
    per_device = last_device_accuracy(run)
    if per_device:
        worst = worst_devices(per_device)
        rows.append(("Worst 10% of devices (last on-device accuracy)",
                     ", ".join(f"{d} ({100 * per_device[d]:.1f}%)" for d in worst[:8])))
    rows += [("Uplink / downlink total",
              f"{fmt_bytes(total('uplink_bytes', 'uplink_bytes'))} / "
              f"{fmt_bytes(total('downlink_bytes', 'downlink_bytes'))}"),
             ("Wall time / simulated time",
              f"{_num(total('wall_s', 'wall_time_s'), ' s')} / "
              f"{_num(total('sim_time_s', 'sim_time_s'), ' s')}")]
    dev_keys = (("completed", "devices_completed"), ("failed", "devices_failed"),
                ("dropped", "devices_dropped"))
    rows.append(("Device-rounds completed / failed / dropped / rejected",
                 " / ".join([str(int(total(k, f"device_rounds_{n}") or 0)) for n, k in dev_keys]
                            + [str(sum(int(r.get("devices_rejected") or 0) for r in rounds))])))
    if s.get("energy_j") is not None:
        rows.append(("Energy (all devices)", _num(s["energy_j"], " J")))
    if "weight_bits" in s:
        rows.append(("Weight / activation bits", f"{s.get('weight_bits')} / {s.get('act_bits')}"))
    size, fp32 = s.get("model_size_bytes"), s.get("fp32_model_size_bytes")
    if size:
        ratio = (f" ({fp32 / size:.1f}x smaller than FP32 {fmt_bytes(fp32)})"
                 if fp32 and fp32 > size else "")
        rows.append(("Model size", fmt_bytes(size) + ratio))
    for label, key in (("Coreset method", "coreset_method"),
                       ("Coreset fraction", "coreset_fraction"), ("Strategy", "strategy"),
                       ("Uplink codec", "codec"), ("Seed", "seed")):
        if key in s:
            rows.append((label, str(s[key])))
    return rows


def render_markdown(run: Run, figures: list[tuple[str, str, str]]) -> str:
    """``report.md`` text: banner, key numbers, notes and the figures by relative path."""
    lines = [f"# Run report: {run.name}", "", f"Run directory: `{run.path}`", ""]
    if run.incomplete:
        lines += [f"> **INCOMPLETE RUN** (summary status: {run.status}). The numbers below come "
                  f"from the {len(run.rounds)} round(s) that finished.", ""]
    lines += ["## Key numbers", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {text} |" for label, text in key_numbers(run)]
    if run.notes:
        lines += ["", "## Notes while reading", ""] + [f"- {n}" for n in run.notes]
    lines += ["", "## Figures", ""]
    for rel, title, caption in figures:
        lines += [f"### {title}", "", caption, "", f"![{title}]({rel})", ""]
    if not figures:
        lines.append("No figures: the run has no finished rounds yet.")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> Path:
    """Write the figures under ``run_dir/plots/`` and ``run_dir/report.md``; return the latter.

    Raises
    ------
    RunDirError
        When ``run_dir`` is not a run directory.
    """
    run = load_run(run_dir)
    figures = []
    for stem, (plot, title, caption) in RUN_FIGURES.items():
        if plot(run, run.path / "plots" / f"{stem}.png") is not None:
            figures.append((f"plots/{stem}.png", title, caption))
    out = run.path / "report.md"
    out.write_text(render_markdown(run, figures), encoding="utf-8")
    return out


def add_parser(subparsers: Any) -> None:
    """Register ``report`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "report",
        help="figures and report.md for one run directory",
        description="Write PNG figures under RUN_DIR/plots/ (accuracy per round, accuracy "
        "against uplink bytes, on-device accuracy across devices, round time and device "
        "status, label partition, and the QGT ranking and continual-calibration curves "
        "when the run has them) and RUN_DIR/report.md with the key numbers. Works on "
        "incomplete runs, which are marked INCOMPLETE.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help="a run directory (holds config.toml and rounds.jsonl)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``fleet report``; exit code 0, or 2 with a one-line error on stderr."""
    try:
        out = write_report(Path(args.run_dir))
    except RunDirError as exc:
        print(f"fleet report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
