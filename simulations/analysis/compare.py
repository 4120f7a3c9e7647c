"""``fleet compare RUN_DIR ...``: a table and figures comparing settings across runs, seeds pooled.

Runs are grouped by the config keys whose values differ between them (the *setting*),
except the seed (:data:`SEED_KEY`, pooled), keys that do not change what is learned
(:data:`IGNORED_PREFIXES`: where output goes and how Ray schedules) and the scenario's
name (:data:`NAME_KEYS`; ``flwr run`` records ``"flwr"``). Values are compared in a canonical
spelling (:func:`canonical`): ``10`` equals ``10.0``, and a device profile of weight 0 equals
an absent one (``flwr run`` lists every profile of the mix). So a ``flwr run`` of a
scenario is the same setting as its ``fleet run``.

Each metric is reported as mean ± the 95% Student t half-width over the *distinct* seeds
of a setting (:func:`simulations.analysis.stats.mean_ci95`): runs that repeat a seed are not
independent, so they are averaged into one value per seed first, and the table says how
many runs there were. Incomplete runs are listed but left out of the statistics.
:func:`write_comparison` is shared with ``fleet sweep``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulations.analysis.plots.compare import (
    fraction_note,
    plot_accuracy_by_setting,
    plot_accuracy_vs_fraction,
    plot_accuracy_vs_uplink,
    uplink_note,
)
from simulations.analysis.stats import format_ci, mean_ci95
from simulations.store.rundir import Run, RunDirError, is_run_dir, load_run

__all__ = ["METRICS", "SEED_KEY", "IGNORED_PREFIXES", "NAME_KEYS", "Result", "Group",
           "canonical", "setting_config", "varying_keys", "result_from_run", "group_results",
           "write_comparison", "compare_runs", "expand_run_dirs", "add_parser", "main"]

#: Final metrics read from summary.json (also the metric columns of sweep.csv).
METRICS = ("final_accuracy", "fp_reference_accuracy", "uplink_bytes", "wall_time_s",
           "sim_time_s", "rounds_completed")
#: The seed's config key; runs that differ only in it are repetitions of one setting.
SEED_KEY = "federation.seed"
#: Config keys that never define a setting.
IGNORED_PREFIXES = ("output.", "ray.")
#: Keys that would hold the scenario's name (``"flwr"`` under ``flwr run``): never a setting.
NAME_KEYS = ("name", "scenario")
#: Open tables of mix weights: an entry of weight 0 is the same as no entry.
ZERO_IS_ABSENT = ("devices.profiles.",)
#: Budget keys written above the table when they are the same for every run.
BUDGET_KEYS = ("data.dataset", "model.arch", "federation.num-devices",
               "federation.devices-per-round", "federation.rounds", "train.local-epochs",
               "coreset.fraction", "quant.weight-bits")
FIGURES = (("accuracy_by_setting", "Accuracy per setting"),
           ("accuracy_vs_uplink", "Accuracy against uplink bytes"),
           ("accuracy_vs_fraction", "Accuracy against coreset fraction"))


@dataclass(frozen=True)
class Result:
    """One run as a row of a comparison.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    setting : tuple of str
        The values of the comparison's keys, as text.
    seed : int or None
        The run's seed.
    status : str
        ``complete``, ``running``, ``interrupted``, ``missing`` (no summary) or ``failed``.
    summary : dict
        ``summary.json`` (empty when missing).
    config : dict
        The flat config (empty when unknown).
    """

    run_dir: Path
    setting: tuple[str, ...]
    seed: int | None
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> float | None:
        """A summary value as float, or None when absent."""
        value = self.summary.get(name)
        return None if value is None else float(value)


@dataclass(frozen=True)
class Group:
    """The complete runs of one setting (its seeds).

    ``label_keys`` are the keys whose values differ between the groups of a comparison,
    the ones a label needs (default: all ``keys``).
    """

    keys: tuple[str, ...]
    setting: tuple[str, ...]
    results: tuple[Result, ...]
    label_keys: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        """``key=value, ...`` of the keys that differ between groups, or ``all runs``."""
        wanted = self.keys if self.label_keys is None else self.label_keys
        pairs = [f"{k}={v}" for k, v in zip(self.keys, self.setting, strict=True) if k in wanted]
        return ", ".join(pairs) or "all runs"

    @property
    def seeds(self) -> list[int | None]:
        """The distinct seeds, in order of first appearance."""
        return list(dict.fromkeys(r.seed for r in self.results))

    def per_seed(self, metric: str) -> list[float]:
        """A metric's value per distinct seed (the mean of the runs that repeat a seed)."""
        by_seed: dict[int | None, list[float]] = {}
        for r in self.results:
            if (v := r.metric(metric)) is not None:
                by_seed.setdefault(r.seed, []).append(v)
        return [math.fsum(vs) / len(vs) for vs in by_seed.values()]

    def stat(self, metric: str) -> tuple[float, float, int]:
        """``(mean, half_width, n)`` over the distinct seeds; ``(nan, nan, 0)`` if none.

        ``n`` counts distinct seeds: runs that repeat a seed are averaged first.
        """
        values = self.per_seed(metric)
        if not values:
            return math.nan, math.nan, 0
        mean, half = mean_ci95(values)
        return mean, half, len(values)

    @property
    def seeds_text(self) -> str:
        """``3 seeds: 0,1,2``, or ``1 seed (2 runs): 0`` when runs repeat a seed."""
        k, n = len(self.seeds), len(self.results)
        names = ",".join("?" if s is None else str(s) for s in self.seeds)
        runs = "" if n == k else f" ({n} runs)"
        return f"{k} seed{'s' if k != 1 else ''}{runs}: {names}"


def _fmt(value: Any) -> str:
    """A config value as text, spelled as in TOML for booleans and the empty string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return '""' if value == "" else str(value)


def canonical(key: str, value: Any) -> str:
    """A config value as the text settings are compared by (and shown with).

    Numbers lose a trailing ``.0`` (``10`` and ``10.0`` are one value); booleans and the
    empty string are spelled as in TOML.

    Examples
    --------
    >>> canonical("federation.rounds", 10.0), canonical("data.alpha", 0.5)
    ('10', '0.5')
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = repr(float(value))
        return text[:-2] if text.endswith(".0") else text
    return _fmt(value)


def setting_config(flat: dict[str, Any]) -> dict[str, str]:
    """The part of a flat config that defines a setting, canonically spelled.

    Left out: the seed, ``output.*`` and ``ray.*``, the scenario's name, and mix weights of 0.
    """
    out: dict[str, str] = {}
    for k, v in flat.items():
        if k == SEED_KEY or k.startswith(IGNORED_PREFIXES) or k in NAME_KEYS:
            continue
        if k.startswith(ZERO_IS_ABSENT) and isinstance(v, (int, float)) and float(v) == 0:
            continue
        out[k] = canonical(k, v)
    return out


def _unset(key: str) -> str:
    return "0" if key.startswith(ZERO_IS_ABSENT) else "<unset>"


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Flat config keys whose values differ between runs (see :func:`setting_config`)."""
    flats = [setting_config(r.flat_config) for r in runs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({f.get(k, _unset(k)) for f in flats}) > 1]


def result_from_run(run: Run, keys: Sequence[str], setting: Sequence[str] | None = None) -> Result:
    """A :class:`Result` from a loaded run (``setting`` default: its canonical values of ``keys``)."""
    flat = run.flat_config
    canon = setting_config(flat)
    values = tuple(setting) if setting is not None else tuple(
        canon.get(k, _unset(k)) for k in keys)
    seed = (run.summary or {}).get("seed", flat.get(SEED_KEY))
    return Result(run.path, values, None if seed is None else int(seed), run.status,
                  dict(run.summary or {}), flat)


def group_results(results: Sequence[Result], keys: Sequence[str]) -> list[Group]:
    """Complete results grouped by setting, in order of first appearance."""
    groups: dict[tuple[str, ...], list[Result]] = {}
    for r in results:
        if r.status == "complete":
            groups.setdefault(r.setting, []).append(r)
    differ = tuple(k for i, k in enumerate(keys) if len({s[i] for s in groups}) > 1)
    return [Group(tuple(keys), s, tuple(rs), differ) for s, rs in groups.items()]


def _fixed_settings(results: Sequence[Result]) -> dict[str, Any]:
    flats = [r.config for r in results if r.config]
    if not flats:
        return {}
    common = set(flats[0]).intersection(*flats[1:])
    return {k: flats[0][k] for k in sorted(common)
            if k != SEED_KEY and all(canonical(k, f[k]) == canonical(k, flats[0][k]) for f in flats)}


def _table(groups: list[Group], keys: Sequence[str]) -> list[str]:
    head = ["#", *keys, "seeds", "final accuracy (%)", "FP reference (%)", "uplink (MB)",
            "wall time (s)", "sim time (s)", "rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, g in enumerate(groups, start=1):
        acc, fp, up, wall, sim, rnd = (g.stat(m) for m in METRICS)
        cells = [str(i), *g.setting, g.seeds_text, format_ci(acc[0], acc[1], 100),
                 format_ci(fp[0], fp[1], 100), format_ci(up[0], up[1], 1e-6),
                 format_ci(wall[0], wall[1], 1, 1), format_ci(sim[0], sim[1], 1, 1),
                 format_ci(rnd[0], rnd[1], 1, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_comparison(results: Sequence[Result], keys: Sequence[str], out_dir: Path,
                     title: str, notes: Sequence[str] = ()) -> Path:
    """Write ``out_dir/compare.md`` and its figures under ``out_dir/plots/``; return the .md path.

    Parameters
    ----------
    results : sequence of Result
        All runs, complete or not (incomplete ones are listed, not averaged).
    keys : sequence of str
        The keys that define a setting (``Result.setting`` holds their values).
    out_dir : Path
        Where ``compare.md`` and ``plots/`` go (created).
    title : str
        The report's heading.
    notes : sequence of str
        Extra lines listed under the heading (default: none).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(keys)
    groups = group_results(results, keys)
    fixed = _fixed_settings(results)
    lines = [f"# {title}", ""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    budget = [f"{k} = {_fmt(fixed[k])}" for k in BUDGET_KEYS if k in fixed]
    if budget:
        lines += ["Budget (same for every run): " + ", ".join(budget) + ".", ""]
    lines += [f"{len(results)} run(s), {len(groups)} setting(s). Values are the mean over "
              "distinct seeds ± the half-width of the 95% Student t interval (no interval for "
              "one seed). A difference inside the interval is not a difference.", ""]
    lines += _table(groups, keys) if groups else ["No complete runs to compare."]
    repeated = [i for i, g in enumerate(groups, start=1) if len(g.results) > len(g.seeds)]
    if repeated:
        lines += ["", f"Settings {', '.join(f'#{i}' for i in repeated)} have runs that repeat a "
                  "seed. Such runs are not independent samples: they are averaged into one value "
                  "per seed, and the interval is over distinct seeds only (none for one seed)."]
    left_out = [r for r in results if r.status != "complete"]
    if left_out:
        lines += ["", "Left out of the statistics (not complete):", ""]
        lines += [f"- `{r.run_dir}`: {r.status}" for r in left_out]
    lines += ["", "## Figures", ""]
    plots = {"accuracy_by_setting": lambda p: plot_accuracy_by_setting(groups, p),
             "accuracy_vs_uplink": lambda p: plot_accuracy_vs_uplink(groups, p),
             "accuracy_vs_fraction": lambda p: plot_accuracy_vs_fraction(groups, keys, p)}
    notes_for = {"accuracy_vs_uplink": uplink_note(groups),
                 "accuracy_vs_fraction": fraction_note(groups, keys)}
    for stem, heading in FIGURES:
        png = out_dir / "plots" / f"{stem}.png"
        png.unlink(missing_ok=True)  # a figure this comparison does not draw must not linger
        if plots[stem](png) is not None:
            lines += [f"### {heading}", "", f"![{heading}](plots/{stem}.png)", ""]
        elif notes_for.get(stem):
            lines += [f"### {heading}", "", notes_for[stem], ""]
    if fixed:
        lines += ["<details><summary>Settings shared by every run</summary>", "", "```"]
        lines += [f"{k} = {_fmt(v)}" for k, v in fixed.items()] + ["```", "</details>"]
    out = out_dir / "compare.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def expand_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Each path if it is a run, else the run directories directly inside it (a sweep).

    Raises
    ------
    RunDirError
        For a path that is neither a run nor a folder holding runs.
    """
    found: list[Path] = []
    for p in paths:
        if is_run_dir(p):
            found.append(p)
            continue
        inner = sorted(c for c in p.iterdir() if is_run_dir(c)) if p.is_dir() else []
        if not inner:
            load_run(p)  # raises the one-line RunDirError naming p
        found += inner
    return found


def compare_runs(paths: Sequence[Path], out_dir: Path) -> Path:
    """Load runs, group them by the config keys that differ, and write the comparison."""
    runs = [load_run(p) for p in expand_run_dirs(paths)]
    keys = varying_keys(runs)
    results = [result_from_run(r, keys) for r in runs]
    notes = [f"Compared by: {', '.join(keys) if keys else 'nothing differs (seeds pooled)'}"]
    return write_comparison(results, keys, out_dir, "Comparison of runs", notes)


def add_parser(subparsers: Any) -> None:
    """Register ``compare`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "compare",
        help="compare runs made by hand: mean and 95%% interval per setting",
        description="Group runs by the config values that differ between them (seeds are "
        "pooled; output.* and ray.* keys are ignored) and write compare.md with mean ± 95% "
        "Student t interval per setting, plus figures: accuracy per setting, accuracy "
        "against uplink bytes, and accuracy against coreset fraction when it varies. A "
        "folder that is not a run but holds runs (a sweep) is expanded.",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="run directories, or folders that hold run directories")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="where compare.md and plots/ go (default: runs/compare/<timestamp>)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run ``fleet compare``; exit code 0, or 2 with a one-line error on stderr."""
    out = args.out or Path("runs") / "compare" / time.strftime("%Y%m%d-%H%M%S")
    try:
        path = compare_runs([Path(p) for p in args.run_dirs], Path(out))
    except RunDirError as exc:
        print(f"fleet compare: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
