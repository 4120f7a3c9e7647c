"""The reproduction study's statistics, verdicts and ``docs/reproduction.md``, all from its results JSON.

A claim "A beats B" is judged on the paired differences ``acc(A, seed) - acc(B, seed)`` over the seeds both ran
from the same float reference (the same seed gives both the same initial quantized model and batch order; random
rows also the same draws). Pretraining is not bit-identical across machines, so a seed's reference can differ
between runs made in different sessions (:func:`reproduce_pairing.same_reference` tells; such a seed is left
out of the pair):

- **reproduced**: the 95% t interval of the mean difference lies above 0, for every B of the claim;
- **not reproduced**: for some B the interval lies below ``MIN_EFFECT`` (0.5 points): the claimed gain is
  excluded at this budget (A is no better, or is worse);
- **inconclusive at this budget**: otherwise, including fewer than ``MIN_SEEDS`` paired seeds.

The cost claims (QuaRC at 10% reaches full-data QAT's final accuracy less a point before full-data QAT's run
ends, and before full-data QAT itself does: :mod:`reproduce_cost`) are judged on the paired *time saved* (full's
time minus QuaRC's time to the target) over the seeds where QuaRC reached the target: reproduced with at least
``MIN_SEEDS`` seeds, the target reached in each and the interval above 0; not reproduced with at least
``MIN_SEEDS`` seeds and the target missed in most of them, or the interval below 0 (over at least two seeds);
otherwise inconclusive.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from simulations.analysis.stats import mean_ci95
from simulations.benchmarks.reproduce_cost import COST_CLAIMS, cost_lines, timing_rows
from simulations.benchmarks.reproduce_grid import BOTTLENECK_LAYERS, CLAIMS, TABLES, Claim, parse_cell
from simulations.benchmarks.reproduce_pairing import paired_seeds

__all__ = ["MIN_EFFECT", "MIN_SEEDS", "paired", "unpaired", "verdict", "judge", "judge_cost", "render"]

MIN_EFFECT = 0.005  # half a point of accuracy
MIN_SEEDS = 3
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive at this budget"


def accuracies(results: Mapping[str, Any], cell: str) -> dict[str, float]:
    """seed -> final deployed accuracy of a cell's finished runs."""
    return {s: r["accuracy"] for s, r in results.get("runs", {}).get(cell, {}).items() if r.get("accuracy") is not None}


def _pairs(results: Mapping[str, Any], a: str, b: str) -> tuple[list[float], int]:
    """The differences ``acc(a) - acc(b)`` over the seeds both ran from one reference, and the seeds left out."""
    xa, xb = accuracies(results, a), accuracies(results, b)
    kept, left = paired_seeds(results, a, b, sorted(set(xa) & set(xb)))
    return [xa[s] - xb[s] for s in kept], left


def _stats(diffs: list[float]) -> tuple[float, float, int]:
    if not diffs:
        return math.nan, math.nan, 0
    mean, half = mean_ci95(diffs)
    return mean, half, len(diffs)


def paired(results: Mapping[str, Any], a: str, b: str) -> tuple[float, float, int]:
    """Mean and 95% half-width of ``acc(a) - acc(b)`` over the seeds both ran from one reference, and their
    number."""
    return _stats(_pairs(results, a, b)[0])


def unpaired(results: Mapping[str, Any], a: str, b: str) -> int:
    """Seeds both cells ran, left out of their comparison because the runs' float references differ."""
    return _pairs(results, a, b)[1]


def verdict(mean: float, half: float, n: int) -> str:
    """The verdict on one paired comparison (see the module docstring).

    Examples
    --------
    >>> verdict(0.02, 0.01, 5), verdict(-0.01, 0.004, 5), verdict(0.004, 0.01, 5), verdict(0.05, 0.001, 2)
    ('reproduced', 'not reproduced', 'inconclusive at this budget', 'inconclusive at this budget')
    """
    if n < MIN_SEEDS or math.isnan(half):
        return INCONCLUSIVE
    if mean - half > 0:
        return REPRODUCED
    if mean + half < MIN_EFFECT:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def judge(results: Mapping[str, Any], claim: Claim) -> dict[str, Any]:
    """A claim's verdict and the comparisons behind it (the worst one decides)."""
    comps = []
    for b in claim.against:
        diffs, left = _pairs(results, claim.better, b)
        mean, half, n = _stats(diffs)
        comps.append({"against": b, "mean": mean, "half": half, "seeds": n, "verdict": verdict(mean, half, n),
                      "left_out": left})
    verdicts = {c["verdict"] for c in comps}
    overall = NOT_REPRODUCED if NOT_REPRODUCED in verdicts else (
        REPRODUCED if verdicts == {REPRODUCED} else INCONCLUSIVE)
    return {"claim": claim.key, "verdict": overall, "comparisons": comps}


def judge_cost(results: Mapping[str, Any], against: str) -> dict[str, Any]:
    """A time claim's verdict (the module docstring's rule for it) and the sentence that decides it; ``against``
    is the timing row's field QuaRC's time is compared with (``full_s`` or ``full_reach_s``)."""
    rows = timing_rows(results)
    reached = [r for r in rows if r["quarc_s"] is not None]
    n, missed = len(rows), len(rows) - len(reached)
    if not n:
        return {"verdict": INCONCLUSIVE, "decide": "not run at this budget"}
    mean, half = mean_ci95([r[against] - r["quarc_s"] for r in reached]) if reached else (math.nan, math.nan)
    spread = "" if math.isnan(half) else f" ± {half:.0f}"
    decide = (f"time saved {mean:+.0f}{spread} s over the {len(reached)} seeds that reached it" if reached else
              "no seed reached it") + (f"; QuaRC missed the target in {missed} of {n} seeds" if missed else "")
    slower = len(reached) >= 2 and mean + half < 0
    if n < MIN_SEEDS:
        verdict = INCONCLUSIVE
    elif not missed and mean - half > 0:
        verdict = REPRODUCED
    else:
        verdict = NOT_REPRODUCED if 2 * missed > n or slower else INCONCLUSIVE
    return {"verdict": verdict, "decide": decide}


#: Where the study's cells differ from the papers' protocol (printed with the budget).
DEVIATIONS = (
    "The papers' Tables III-V (ablation, metrics, CLC added to other selectors) are weight-only 2-bit MobileNetV2 "
    "on CIFAR-100; here they run at W2A2 (weights and activations) on MNIST.",
    "The random rows re-draw their coreset at each re-selection (every 10 epochs, the learning benchmark's "
    "protocol); the papers draw it once, so this random baseline is, if anything, stronger than theirs.",
    "The `full` row is full-data QAT for 3 epochs (2,800 steps), not T = 30: the cost table compares a budget, "
    "not the paper's 75-minute run; its 'vs random' column compares it with the 1% random row. The time claim "
    "asks QuaRC at 10% (30 epochs of 6,000 samples: as many sample passes as the full row) to reach the full "
    "row's accuracy less a point in less of the rounds' wall time; the paper's own contrast is QuaRC at 30%.",
    "The papers run no federated version. The federated cells (`mnist-fed`) run the learning issue's federated "
    "recipe (100 devices, Dirichlet(0.3) labels, 10 a round, 30 rounds of 5 local epochs, batch 32, quantized "
    "uploads), each device selecting its fraction of its own data at every participation (at 1%, a handful of "
    "samples: the `coreset_size` of each record).",
    "QGT's `ptq` mode follows ALGORITHMS.md §3.2, an unverified reconstruction (no code exists); its claim here "
    "(regulariser + round-to-nearest beats plain PTQ) is the paper's contrast, not its published number. "
    "Round-to-nearest uses the step with the least squared rounding error of each tensor (`train.ptq-step = "
    "\"mse\"`, weights and activations); the `-lsq-init` rows round on LSQ's initial step `2 mean|x|/sqrt(Qp)`, "
    "the project's rule until that key existed: their records ran before it (the commit in each record), "
    "and the claims are judged on the `mse` rows.",
    "QGT's bottleneck check quantizes every layer's weights (`quant.keep-fp = \"none\"`) at 2 bits with float "
    "activations, and gives one layer 8-bit weights at a time (`quant.w8-layers`); its claim names the layer the "
    "base run's report ranks first (in most seeds).",
    "QCore runs on MNIST pooled to 14x14 with the project's small CNN (the code: InceptionTime on human-activity "
    "time series), 4 devices of a Dirichlet(0.5) split per seed, covariate drift to severity 0.5 over 10 tasks. Its "
    "calibration setting (a 200-sample core, batch 32, code lr 0.03, 30 epochs per task) is the study's, not the "
    "code's (20 samples, batch 128, 50 epochs, codes that never move): at the code's budget back-propagation moves "
    "no code (docs/qcore.md). The BFN is this project's reconstruction (the released training path is inert, "
    "ALGORITHMS.md §4.4), fitted to codes-only back-propagation in the same setting.",
)


def _pct(mean: float, half: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{100 * mean:+.2f}" + ("" if math.isnan(half) else f" ± {100 * half:.2f}")


def _acc_text(values: list[float]) -> str:
    if not values:
        return "not run at this budget"
    mean, half = mean_ci95(values)
    return f"{100 * mean:.2f}" + ("" if math.isnan(half) else f" ± {100 * half:.2f}")


def _mean_of(runs: Any, key: str, fmt: str, scale: float) -> str:
    """The mean of a field over the runs that have it, formatted (or a dash)."""
    vals = [r[key] for r in runs if r.get(key) is not None]
    return format(scale * sum(vals) / len(vals), fmt) if vals else "–"


def _cell_row(results: Mapping[str, Any], cell: str, baselines: dict[str, str]) -> str:
    runs = results.get("runs", {}).get(cell, {}).values()
    accs = list(accuracies(results, cell).values())
    vs = [_pct(*paired(results, cell, b)[:2]) if b != cell else "" for b in baselines.values()]
    _, bits, frac, row = parse_cell(cell)
    wall, gflop, kd = (_mean_of(runs, key, fmt, scale) for key, fmt, scale in
                       (("wall_s", ".0f", 1.0), ("flops", ".0f", 1e-9), ("kd_clc_ratio", ".3g", 1.0)))
    return f"| {bits} | {frac} | {row} | {_acc_text(accs)} | {len(accs)} | {' | '.join(vs)} | {wall} | {gflop} | {kd} |"


#: The rows a table's cells are compared with, seed by seed (default: random and ACS).
_BASELINES = {"bottleneck": ("qgt-ptq-all",)}


def _table(results: Mapping[str, Any], title: str, source: str, cells: tuple[str, ...],
           baselines: tuple[str, ...] = ("random", "acs")) -> list[str]:
    dataset = parse_cell(cells[0])[0]
    names = {"random": "random", "acs": "ACS"}
    vs = " | ".join(f"vs {names.get(b, b)} (paired)" for b in baselines)
    lines = [f"### {title} ({source})", "",
             f"| bits | fraction | row | accuracy % (mean ± 95%) | seeds | {vs} | wall s | GFLOP | KD : β·CLC |",
             "|---|---|---|---|---|" + "---|" * len(baselines) + "---|---|---|"]
    for cell in cells:
        _, bits, frac, _ = parse_cell(cell)
        base = {k: f"{dataset}/{bits}/{frac}/{k}" for k in baselines}
        lines.append(_cell_row(results, cell, base))
    return [*lines, "", *_legacy_note(results, cells)]


def _legacy_note(results: Mapping[str, Any], cells: tuple[str, ...]) -> list[str]:
    """How many of a table's runs predate the reference hash (from a float reference since superseded here)."""
    records = [r for c in cells for r in results.get("runs", {}).get(c, {}).values()]
    old = sum(1 for r in records if not r.get("reference"))
    if not old:
        return []
    return [f"- {old} of these {len(records)} runs predate the float reference's hash in the records: they learned "
            "from references pretrained on another machine, are paired only with runs of the same reference, "
            "and run again in the next invocation of the study (as any record of another reference does).", ""]


def _share(results: Mapping[str, Any], bits: str) -> str:
    """The BFN's share of back-propagation's gain over no calibration, and its share of the compute, over the seeds
    every row of the comparison ran (paired)."""
    runs = {row: results.get("runs", {}).get(f"qcore/{bits}/drift/{row}", {})
            for row in ("none", "bfn", "backprop", "backprop-codes")}
    seeds = sorted(set.intersection(*({s for s, r in v.items() if r.get("accuracy") is not None}
                                      for v in runs.values())))
    if not seeds:
        return f"- {bits.upper()}: the BFN's share: – (no seed ran every row)."

    def mean(row: str, key: str = "accuracy") -> float:
        return sum(runs[row][s][key] for s in seeds) / len(seeds)

    none, bfn = mean("none"), mean("bfn")
    parts = []
    for bp in ("backprop", "backprop-codes"):
        gain = mean(bp) - none
        share = f"{100 * (bfn - none) / gain:.0f}%" if gain else "–"
        total, cal = (mean("bfn", k) / mean(bp, k) for k in ("flops_per_task", "flops_calibration_per_task"))
        parts.append(f"{share} of `{bp}`'s gain ({100 * (bfn - none):+.2f} of {100 * gain:+.2f} points) "
                     f"at {100 * total:.1f}% of its compute per task ({100 * cal:.1f}% of its calibration alone)")
    return f"- {bits.upper()} ({len(seeds)} paired seeds): the BFN recovers " + "; ".join(parts) + "."


_QCORE_LEGEND = (
    "Task accuracy: on each task's held-out quarter after that task's calibration, averaged over the tasks and "
    "devices of a seed; the interval is over seeds. Original accuracy: on 500 undrifted test images after the last "
    "task (forgetting). Codes moved: the share of integer codes a task's calibration changed. GFLOP per task: "
    "calibration plus QCore update (miss counting); in brackets the calibration alone. Rows: `none`; `bfn` (bit "
    "flips, no back-propagation); `backprop` (codes, biases and norms on the QCore); `backprop-codes` (codes only); "
    "`backprop-random` (a random core of the same size).")


def _qcore_table(results: Mapping[str, Any], title: str, source: str, cells: tuple[str, ...]) -> list[str]:
    lines = [f"### {title} ({source})", "",
             _QCORE_LEGEND, "",
             "| bits | row | task accuracy % (mean ± 95%) | seeds | vs none (paired) | vs backprop (paired) | "
             "original accuracy after the last task % | codes moved per task % | GFLOP per task "
             "(calibration) |", "|---|---|---|---|---|---|---|---|---|"]
    for cell in cells:
        _, bits, _, row = parse_cell(cell)
        runs = results.get("runs", {}).get(cell, {}).values()
        vs = [_pct(*paired(results, cell, f"qcore/{bits}/drift/{b}")[:2]) if b != row else ""
              for b in ("none", "backprop")]
        orig, moved, gflop, cal = (_mean_of(runs, key, fmt, scale) for key, fmt, scale in
                                   (("accuracy_original", ".2f", 100.0), ("codes_changed", ".2f", 100.0),
                                    ("flops_per_task", ".3f", 1e-9), ("flops_calibration_per_task", ".3f", 1e-9)))
        accs = list(accuracies(results, cell).values())
        lines.append(f"| {bits} | {row} | {_acc_text(accs)} | {len(accs)} | {' | '.join(vs)} | {orig} | {moved} | "
                     f"{gflop} ({cal}) |")
    return [*lines, "", *sorted({_share(results, parse_cell(c)[1]) for c in cells}), ""]


_BOTTLENECK_BASE = "mnist/w2/1%/qgt-ptq-all"


def bottleneck_claim(results: Mapping[str, Any]) -> Claim | None:
    """QGT's claim that its report points at the layers that resist quantization, as a claim on the study's cells:
    the layer its report ranks first (in most seeds of the base run) gains the most from 8-bit weights."""
    reports = [r["bottleneck"] for r in results.get("runs", {}).get(_BOTTLENECK_BASE, {}).values()
               if r.get("bottleneck")]
    if not reports:
        return None
    top, votes = Counter(rep[0] for rep in reports).most_common(1)[0]
    cell = f"{_BOTTLENECK_BASE}+w8-{top}"
    others = tuple(f"{_BOTTLENECK_BASE}+w8-{n}" for n in BOTTLENECK_LAYERS if n != top)
    return Claim("qgt-bottleneck", "ALGORITHMS.md §3.1", "QGT's bottleneck report names the layer whose 8-bit "
                 f"weights recover the most accuracy (its first layer: {top}, in {votes} of {len(reports)} seeds)",
                 cell, others, "no number: the abstract's 'points out the layers that resist quantization'")


def _bottleneck_note(results: Mapping[str, Any]) -> list[str]:
    reports = {s: r["bottleneck"] for s, r in results.get("runs", {}).get(_BOTTLENECK_BASE, {}).items()
               if r.get("bottleneck")}
    return [f"- The report's ranking (most resistant first) on `qgt-ptq-all`, seed {s}: {' > '.join(rep)}"
            for s, rep in sorted(reports.items())] + [""]


def render(results: Mapping[str, Any], command: str) -> str:
    """``docs/reproduction.md``: the budget, one table per paper table, then the verdicts."""
    budget = results.get("budget", {})
    commits = sorted({str(r.get("commit"))[:7] for runs in results.get("runs", {}).values() for r in runs.values()
                      if r.get("commit")})
    lines = ["# Reproduction study: QuaRC's, ACS's, QGT's and QCore's claims on MNIST with a small CNN, at this budget",
             "",
             f"Generated by `{command}` from `{results.get('path', 'its results JSON')}`; do not edit by hand. "
             f"The runs were made at commit(s) {', '.join(commits) or '?'} (each run records its own).", "",
             "## Protocol and budget", "",
             f"- {budget.get('protocol', '')}",
             f"- Data: {budget.get('data', '')}.",
             f"- Seeds per cell: up to {max((len(v) for v in results.get('runs', {}).values()), default=0)}; "
             f"{budget.get('note', '')}",
             "- Accuracy: the deployed (integer-export) model on the whole test split after the last epoch. "
             "`vs random` / `vs ACS`: the mean paired difference over the seeds both cells ran from the same "
             "float reference, in points, with its 95% t interval. A seed's reference is pretrained once and "
             "cached, but pretraining is not bit-identical across machines, and the study ran over sessions on "
             "different machines: a seed whose two runs learned from different references (told by the "
             "reference's hash, or for older records by its test accuracy and the initial model's round-0 "
             "accuracy) is left out of the pair, and the claims say how many were. wall s: the run's wall time "
             "(without the float reference's pretraining, "
             "cached after its first run); GFLOP: the compute the virtual clock "
             "charged (training, teacher and scoring passes).",
             f"- Verdicts: reproduced if the interval of every paired difference lies above 0; not reproduced if "
             f"one lies below {100 * MIN_EFFECT:.1f} points; otherwise inconclusive at this budget (also with "
             f"fewer than {MIN_SEEDS} paired seeds). 'Reproduced' tests the direction of a claim, not the paper's "
             "size of effect; no correction is made for judging many claims at once.",
             "- The time claims are judged on the paired time saved (full-data QAT's time minus QuaRC's time to "
             "the target) over the seeds where QuaRC reached the target: reproduced if it reached it in every "
             f"seed (at least {MIN_SEEDS}) and the interval lies above 0; not reproduced if it missed the target "
             "in most seeds or the interval lies below 0; otherwise inconclusive.",
             *[f"- {d}" for d in DEVIATIONS], "", "## Tables", ""]
    for t in TABLES:
        if t.key == "qcore":
            lines += _qcore_table(results, t.title, t.source, t.cells)
        else:
            lines += _table(results, t.title, t.source, t.cells, _BASELINES.get(t.key, ("random", "acs")))
        if t.key == "bottleneck":
            lines += _bottleneck_note(results)
        if t.key == "cost":
            lines += cost_lines(results)
    dynamic = bottleneck_claim(results)
    judged = [(claim, judge(results, claim)) for claim in (*CLAIMS, *([dynamic] if dynamic else []))]
    judged += [(claim, judge_cost(results, against)) for claim, against in COST_CLAIMS]
    counts = {v: sum(j["verdict"] == v for _, j in judged) for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
    lines += ["## Verdicts", "", f"{len(judged)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".",
              "", "| claim | source | paper | verdict | deciding comparison (points; seconds for the time claims) |",
              "|---|---|---|---|---|"]
    for claim, j in judged:
        if "decide" in j:
            lines.append(f"| {claim.text} | {claim.source} | {claim.paper} | **{j['verdict']}** | {j['decide']} |")
            continue
        # the comparison that decides: one with the claim's verdict, the least favourable of those
        deciding = [c for c in j["comparisons"] if c["verdict"] == j["verdict"]] or j["comparisons"]
        worst = min(deciding, key=lambda c: -1e9 if math.isnan(c["mean"]) else c["mean"] - (
            0.0 if math.isnan(c["half"]) else c["half"]))
        left = f"; {worst['left_out']} left out: another reference" if worst.get("left_out") else ""
        decide = (f"vs {parse_cell(worst['against'])[3]}: {_pct(worst['mean'], worst['half'])} "
                  f"({worst['seeds']} seeds{left})")
        lines.append(f"| {claim.text} | {claim.source} | {claim.paper} | **{j['verdict']}** | {decide} |")
    return "\n".join(lines) + "\n"
