"""``fleet report RUN_DIR``: figures under ``RUN_DIR/plots/`` and a readable ``RUN_DIR/report.md``.

The report works on incomplete runs too (a crash, an interrupt, a run still going): it is
then marked INCOMPLETE and its numbers come from the rounds that finished.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.analysis.devices import (
    MIN_DEVICES,
    MIN_VAL_SAMPLES,
    WORST_SHARE,
    DeviceAccuracy,
    device_accuracy,
    round_spread,
)
from simulations.analysis.plots.common import byte_unit
from simulations.analysis.plots.data import plot_continual, plot_partition, plot_qgt, qgt_layers, qgt_note
from simulations.analysis.plots.run import (
    evaluated_rounds,
    p10_note,
    plot_accuracy_rounds,
    plot_accuracy_uplink,
    plot_device_accuracy,
    plot_time_status,
)
from simulations.store.rundir import Run, RunDirError, load_run

__all__ = ["RUN_FIGURES", "ReportSettings", "write_report", "key_numbers", "fmt_bytes",
           "add_parser", "main"]


@dataclass(frozen=True)
class ReportSettings:
    """How the report judges on-device accuracies (defaults in :mod:`simulations.analysis.devices`).

    Parameters
    ----------
    min_val_samples : int
        A device enters a percentile or the worst-device list only with at least this many
        held-out samples (default: 20).
    min_devices : int
        A percentile or worst list is given only when at least this many devices qualify
        (default: 10).
    worst_share : float
        Share of the qualifying devices listed as the worst (default: 0.1).
    """

    min_val_samples: int = MIN_VAL_SAMPLES
    min_devices: int = MIN_DEVICES
    worst_share: float = WORST_SHARE

    def devices(self, run: Run) -> DeviceAccuracy:
        """The one device summary the table, the figure and the caption share."""
        return device_accuracy(run, min_val_samples=self.min_val_samples,
                               min_devices=self.min_devices, share=self.worst_share)

    @property
    def rule(self) -> str:
        """The rule as caption text."""
        return (f"devices with >= {self.min_val_samples} held-out samples, when >= "
                f"{self.min_devices} devices qualify (report settings min_val_samples="
                f"{self.min_val_samples}, min_devices={self.min_devices})")


#: A figure: writes the PNG (or not) and returns ``(path or None, caption or note)``;
#: ``(None, "")`` leaves the figure out of the report.
DrawFn = Callable[[Run, Path, ReportSettings], tuple[Path | None, str]]


def _draw_accuracy_rounds(run: Run, path: Path, st: ReportSettings) -> tuple[Path | None, str]:
    out = plot_accuracy_rounds(run, path, min_val_samples=st.min_val_samples,
                               min_devices=st.min_devices)
    ns = [s.n_qualified for s in round_spread(run, min_val_samples=st.min_val_samples,
                                              min_devices=st.min_devices) if s.p10 is not None]
    why = p10_note(run, min_val_samples=st.min_val_samples, min_devices=st.min_devices)
    p10 = (f"the 10th percentile over {st.rule}, drawn in {len(ns)} round(s) from "
           f"{min(ns)}-{max(ns)} devices (n at each point)" if ns else
           "no 10th percentile line")
    p10 += f" ({why.rstrip('.')})" if why else ""
    return out, ("Central test accuracy of the global model (fake-quantized when quantized) from "
                 "round 0, the starting model before any device trained; the on-device mean "
                 f"over each round's completed devices (n in the legend); {p10}; the FP "
                 "reference as a dashed line.")


def _draw_device_accuracy(run: Run, path: Path, st: ReportSettings) -> tuple[Path | None, str]:
    out = plot_device_accuracy(run, path, min_val_samples=st.min_val_samples,
                               min_devices=st.min_devices, share=st.worst_share)
    da = st.devices(run)
    marked = (f"the 10th percentile and the worst {100 * st.worst_share:g}% ({len(da.worst)} "
              f"of {len(da.qualified)} devices, red; the same devices as the table) are over "
              f"{st.rule}" if da.worst else f"no 10th percentile or worst devices: "
              f"{da.not_ranked_reason()}")
    return out, (f"On-device held-out accuracy of the received global model, in the last round "
                 f"each of the {len(da.accuracy)} devices reported one. The mean is over all of "
                 f"them (the table's mean); {marked}. Hollow grey: devices below "
                 f"{st.min_val_samples} held-out samples.")


def _draw_qgt(run: Run, path: Path, st: ReportSettings) -> tuple[Path | None, str]:
    out = plot_qgt(run, path)
    info = qgt_layers(run)
    if info is None:
        return None, ""
    if out is None:
        return None, qgt_note(run)
    left = (f" Float layers ({', '.join(info.floats)}) are left out: they have no low-bit grid "
            f"({info.source})." if info.floats else "" if info.source else
            " Which layers are float is unknown (no model file in the run), so all are shown.")
    ranked = (" the top layer is the first candidate for more bits." if len(info.quantized) > 1
              else " there is one quantized layer, so nothing is ranked.")
    return out, ("Per-layer QGT ranking key (the normalised residual when qgt.json has it) and "
                 "weight quantization MSE of the quantized layers, each bar labelled with its "
                 f"value;{ranked}{left}")


def _plain(plot: Callable[[Run, Path], Path | None], caption: str) -> DrawFn:
    def draw(run: Run, path: Path, st: ReportSettings) -> tuple[Path | None, str]:
        out = plot(run, path)
        return out, caption if out is not None else ""

    return draw


#: Figure file stem -> (draw function, heading), in report order.
RUN_FIGURES: dict[str, tuple[DrawFn, str]] = {
    "accuracy_rounds": (_draw_accuracy_rounds, "Accuracy per round"),
    "accuracy_uplink": (_plain(plot_accuracy_uplink,
                               "Global-model accuracy against the cumulative bytes devices "
                               "uploaded, from round 0 (no bytes sent yet)."),
                        "Accuracy against communication"),
    "device_accuracy": (_draw_device_accuracy, "Accuracy across devices"),
    "time_status": (_plain(plot_time_status,
                           "Simulated round time (slowest accepted device), wall time, and what "
                           "happened to each round's sampled devices; round 0 only evaluates "
                           "the starting model."), "Round time and device status"),
    "partition": (_plain(plot_partition, "Share of each class in each device's training data, "
                         "and local data sizes (train and held-out)."), "Data partition"),
    "qgt": (_draw_qgt, "QGT bottleneck ranking"),
    "continual": (_plain(plot_continual, "Accuracy per stream task for each calibration method: "
                         "mean over devices with the 10th-90th percentile band."),
                  "Continual calibration"),
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


def key_numbers(run: Run, settings: ReportSettings | None = None) -> list[tuple[str, str]]:
    """The report's key numbers as ``(label, text)`` rows, from the summary and the rounds.

    Without a summary, totals are summed over ``rounds.jsonl`` instead. The on-device rows
    come from ``settings.devices(run)``, the source of the device-accuracy figure too.
    """
    st = settings or ReportSettings()
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
            ("Rounds completed / planned",  # round 0 (the starting model) is not a round trained
             f"{s.get('rounds_completed', sum(int(r['round']) > 0 for r in rounds))} / "
             f"{s.get('rounds_planned', '?')}"),
            ("Final accuracy (global model)", _pct(final)),
            ("FP reference accuracy", _pct(fp))]
    if final is not None and fp is not None:
        rows.append(("Gap to FP reference", f"{100 * (final - fp):+.2f} points"))
    evaluated = evaluated_rounds(run)
    if evaluated:
        first, end = evaluated[0], evaluated[-1]
        if int(first["round"]) == 0 and len(evaluated) > 1:
            change = 100 * (float(end["accuracy"]) - float(first["accuracy"]))
            rows.append(("Global model, round 0 (starting model) -> last round",
                         f"{_pct(first['accuracy'])} -> {_pct(end['accuracy'])} (round "
                         f"{end['round']}): {change:+.2f} points"))
        best = max(evaluated, key=lambda r: float(r["accuracy"]))
        rows.append(("Best round accuracy", f"{_pct(best['accuracy'])} (round {best['round']}"
                     f"{': the starting model' if int(best['round']) == 0 else ''})"))
    da = st.devices(run)
    if da.accuracy:
        rows.append((f"On-device accuracy, each device's last report ({len(da.accuracy)} "
                     "devices): mean", _pct(da.mean)))
        rows.append((f"On-device 10th percentile ({len(da.qualified)} devices with >= "
                     f"{st.min_val_samples} held-out samples)",
                     _pct(da.p10) if da.p10 is not None else f"not computed: {da.not_ranked_reason()}"))
        if da.worst:
            rows.append((f"Worst {100 * st.worst_share:g}% of devices ({len(da.worst)} of "
                         f"{len(da.qualified)}; as in the figure)",
                         ", ".join(f"{d} ({100 * da.accuracy[d]:.1f}% of {da.sizes[d]})"
                                   for d in da.worst)))
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
    rows += deploy_rows(s)
    rows += privacy_rows(s)
    for label, key in (("Coreset method", "coreset_method"),
                       ("Coreset fraction", "coreset_fraction"), ("Strategy", "strategy"),
                       ("Uplink codec", "codec"), ("Seed", "seed")):
        if key in s:
            rows.append((label, str(s[key])))
    return rows


def deploy_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """What a device stores, and how its integer-only path and ONNX file agree (docs/quantization.md)."""
    rows: list[tuple[str, str]] = []
    size, fp32 = s.get("model_size_bytes"), s.get("fp32_model_size_bytes")
    if size:
        ratio = (f" ({fp32 / size:.1f}x smaller than FP32 {fmt_bytes(fp32)})"
                 if fp32 and fp32 > size else "")
        rows.append(("Model size", fmt_bytes(size) + ratio))
    if s.get("integer_agreement") is not None:
        floats = ", ".join(s.get("integer_float_ops") or []) or "none"
        rows.append((f"Integer-only path vs fake-quantized ({s.get('deploy_check_samples')} test samples)",
                     f"{_pct(s['integer_agreement'])} agree; float ops: {floats}"))
        rows.append(("model.onnx (QDQ): onnxruntime vs integer path, fused / unfused kernels",
                     f"{_pct(s.get('onnx_agreement'))} / {_pct(s.get('onnx_unfused_agreement'))}; "
                     f"{fmt_bytes(s.get('onnx_bytes'))}"))
    return rows


def privacy_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's guarantee and measured leakage (docs/privacy.md), from ``summary.json``'s ``privacy``."""
    pv = s.get("privacy") or {}
    rows: list[tuple[str, str]] = []
    if pv.get("dp"):
        rows.append((f"Differential privacy (sigma {pv.get('noise_multiplier')}, clip {pv.get('clip_norm')}, "
                     f"{pv.get('noise')} noise, delta {pv.get('delta')})",
                     f"epsilon {_num(pv.get('epsilon_pld'), digits=2)} (PLD, Poisson, add/remove) / "
                     f"{_num(pv.get('epsilon_rdp'), digits=2)} (RDP, without replacement, replace-one)"))
    if pv:
        rows.append(("Secure aggregation / message audit", f"{'on' if pv.get('secure_aggregation') else 'off'} / "
                     f"{'on' if pv.get('audit') else 'off'}"))
    for name, res in (pv.get("membership") or {}).items():
        if isinstance(res, dict) and "auc" in res:
            rows.append((f"Membership inference, {name} ({res.get('members')} members)",
                         f"AUC {res['auc']:.3f}, TPR at 1% FPR {100 * res['tpr_at_1pct_fpr']:.1f}%"))
    if s.get("stopped"):
        rows.append(("Stopped early", str(s["stopped"])))
    return rows


def round_table(run: Run) -> list[str]:
    """One line per round (markdown): accuracy, devices, bytes and time, then the strategy's own metrics
    (the ``strategy/<name>`` columns of ``rounds.jsonl``)."""
    extra = sorted({k for r in run.rounds for k in r if k.startswith("strategy/")})
    head = ["round", "accuracy", "devices ok / sampled", "uplink", "simulated s", *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in run.rounds:
        acc = r.get("accuracy")
        cells = [str(r.get("round")), "–" if acc is None else f"{100 * acc:.2f}%",
                 f"{r.get('devices_completed', 0)} / {r.get('devices_sampled', 0)}",
                 fmt_bytes(r.get("uplink_bytes")), f"{r.get('sim_time_s', 0.0):.3g}"]
        cells += ["–" if r.get(k) is None else f"{r[k]:.4g}" for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(run: Run, figures: list[tuple[str | None, str, str]],
                    settings: ReportSettings | None = None) -> str:
    """``report.md`` text: banner, key numbers, notes and the figures by relative path.

    ``figures`` holds ``(relative path or None, heading, caption)``; without a path the
    caption is written as a note in place of the figure.
    """
    lines = [f"# Run report: {run.name}", "", f"Run directory: `{run.path}`", ""]
    if run.incomplete:
        lines += [f"> **INCOMPLETE RUN** (summary status: {run.status}). The numbers below come "
                  f"from the {len(run.rounds)} round(s) that finished.", ""]
    lines += ["## Key numbers", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {text} |" for label, text in key_numbers(run, settings)]
    if run.notes:
        lines += ["", "## Notes while reading", ""] + [f"- {n}" for n in run.notes]
    lines += ["", "## Rounds", ""] + round_table(run)
    lines += ["", "## Figures", ""]
    for rel, title, caption in figures:
        lines += [f"### {title}", "", caption, ""]
        lines += [f"![{title}]({rel})", ""] if rel is not None else []
    if not figures:
        lines.append("No figures: the run has no finished rounds yet.")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, *, min_val_samples: int = MIN_VAL_SAMPLES,
                 min_devices: int = MIN_DEVICES, worst_share: float = WORST_SHARE) -> Path:
    """Write the figures under ``run_dir/plots/`` and ``run_dir/report.md``; return the latter.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    min_val_samples, min_devices, worst_share : int, int, float
        :class:`ReportSettings` (defaults 20, 10, 0.1), stated in the captions.

    Raises
    ------
    RunDirError
        When ``run_dir`` is not a run directory.
    """
    run = load_run(run_dir)
    st = ReportSettings(min_val_samples, min_devices, worst_share)
    figures: list[tuple[str | None, str, str]] = []
    for stem, (draw, title) in RUN_FIGURES.items():
        png = run.path / "plots" / f"{stem}.png"
        png.unlink(missing_ok=True)  # a figure a re-report no longer draws must not linger
        out_png, caption = draw(run, png, st)
        if out_png is not None:
            figures.append((f"plots/{stem}.png", title, caption))
        elif caption:
            figures.append((None, title, caption))
    out = run.path / "report.md"
    out.write_text(render_markdown(run, figures, st), encoding="utf-8")
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
    p.add_argument("--min-val-samples", type=int, default=MIN_VAL_SAMPLES, metavar="N",
                   help="held-out samples a device needs to enter an on-device percentile or "
                   f"the worst-device list (default: {MIN_VAL_SAMPLES})")
    p.add_argument("--min-devices", type=int, default=MIN_DEVICES, metavar="N",
                   help="qualifying devices needed for a percentile or worst list "
                   f"(default: {MIN_DEVICES})")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``fleet report``; exit code 0, or 2 with a one-line error on stderr."""
    try:
        out = write_report(Path(args.run_dir),
                           min_val_samples=getattr(args, "min_val_samples", MIN_VAL_SAMPLES),
                           min_devices=getattr(args, "min_devices", MIN_DEVICES))
    except RunDirError as exc:
        print(f"fleet report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
