"""The reproduction study: its grid keeps the issue's budget, its quick run writes the schema, and its verdicts
follow the stated rule on its own output."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pytest

from simulations.analysis.stats import t_quantile_975
from simulations.benchmarks import reproduce
from simulations.benchmarks.reproduce_grid import BITS, CLAIMS, FRACTIONS, PROTOCOL, ROWS, TABLES, cell_overrides
from simulations.benchmarks.reproduce_qcore import QCORE_ROWS, QCORE_SCHEMA
from simulations.benchmarks.reproduce_report import MIN_EFFECT, bottleneck_claim, judge, verdict


def test_a_one_percent_cell_trains_on_600_samples_for_300_steps() -> None:
    flat = cell_overrides("mnist/w2a2/1%/quarc")
    samples = round(60_000 * flat["coreset.fraction"])
    steps = flat["federation.rounds"] * math.ceil(samples / flat["train.batch-size"])
    assert samples >= 600 and steps >= 300
    assert flat["train.clc-beta"] == "auto" and flat["coreset.method"] == "quarc"
    assert cell_overrides("mnist/w2a2/1%/acs+res").get("train.clc-beta", PROTOCOL.get("train.clc-beta", 0.0)) == 0.0


def test_every_claim_is_decided_by_cells_the_tables_run() -> None:
    cells = {c for t in TABLES for c in t.cells}
    for claim in CLAIMS:
        assert {claim.better, *claim.against} <= cells, claim.key
    for t in TABLES:
        for cell in t.cells:
            dataset, bits, frac, row = cell.split("/")
            if dataset == "qcore":
                assert bits in ("w4", "w2") and frac == "drift" and row in QCORE_ROWS, cell
            else:
                assert bits in BITS and frac in FRACTIONS and row in ROWS, cell


@pytest.mark.parametrize(("mean", "half", "n", "expected"), [
    (0.02, 0.01, 5, "reproduced"), (0.0001, 0.00005, 5, "reproduced"),
    (-0.03, 0.01, 5, "not reproduced"), (0.001, 0.002, 5, "not reproduced"),  # a gain of half a point excluded
    (0.01, 0.02, 5, "inconclusive at this budget"), (0.05, 0.001, 2, "inconclusive at this budget"),
])
def test_the_verdict_rule(mean: float, half: float, n: int, expected: str) -> None:
    assert verdict(mean, half, n) == expected


def _by_hand(diffs: list[float]) -> str:
    """The rule of reproduce_report's docstring, computed independently."""
    if len(diffs) < 3:
        return "inconclusive at this budget"
    half = t_quantile_975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    mean = statistics.fmean(diffs)
    if mean - half > 0:
        return "reproduced"
    return "not reproduced" if mean + half < MIN_EFFECT else "inconclusive at this budget"


def test_quick_run_writes_the_schema_and_judges_its_own_output(tmp_path: Path) -> None:
    # Prepare + Execute: the smoke run (two cells, three seeds, digits).
    out, doc = tmp_path / "reproduce.json", tmp_path / "reproduction.md"
    results = reproduce.main(["--quick", "--out", str(out), "--doc", str(doc)])
    # Assert: the JSON holds every run with the schema, the commit and the budget.
    saved = json.loads(out.read_text())
    assert saved["machine"]["commit"] and saved["budget"]["seeds"] == reproduce.QUICK_SEEDS
    for cell in reproduce.QUICK_CELLS:
        runs = saved["runs"][cell]
        assert sorted(runs) == [str(s) for s in range(reproduce.QUICK_SEEDS)]
        for r in runs.values():
            assert set(reproduce.SCHEMA) <= set(r)
            assert 0.0 <= r["accuracy"] <= 1.0 and r["steps"] > 0 and r["flops"] > 0 and r["wall_s"] > 0
            # the steps the device took: one epoch a round, ceil(coreset / batch) steps an epoch
            cfg = r["config"]
            assert r["steps"] == cfg["federation.rounds"] * math.ceil(r["coreset_size"] / cfg["train.batch-size"])
            # each evaluated round's point: (round, accuracy, its wall s, wall s of rounds 1..round)
            elapsed = [p[3] for p in r["curve"]]
            assert all(len(p) == 4 for p in r["curve"]) and elapsed[0] == 0.0 and elapsed == sorted(elapsed)
            assert elapsed[-1] == pytest.approx(sum(p[2] for p in r["curve"][1:]))  # every round is evaluated
    # ... and each verdict is the rule applied to the paired seeds, by hand.
    text = doc.read_text()
    for claim in CLAIMS:
        j = judge(results, claim)
        per = []
        for c in j["comparisons"]:
            a, b = saved["runs"].get(claim.better, {}), saved["runs"].get(c["against"], {})
            per.append(_by_hand([a[s]["accuracy"] - b[s]["accuracy"] for s in sorted(set(a) & set(b))]))
        expected = ("not reproduced" if "not reproduced" in per else
                    "reproduced" if set(per) == {"reproduced"} else "inconclusive at this budget")
        assert j["verdict"] == expected, claim.key
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {claim.text} |"))
        assert f"**{expected}**" in line, line
    # A second invocation resumes: nothing reruns, and the report is rewritten from the JSON alone.
    again = reproduce.main(["--quick", "--out", str(out), "--doc", str(doc), "--report-only"])
    assert again["runs"] == saved["runs"]


def test_the_bottleneck_claim_follows_the_reports_first_layer() -> None:
    # Prepare: the base run's report ranks conv3 first in two seeds of three
    base = "mnist/w2/1%/qgt-ptq-all"
    runs = {base: {"0": {"accuracy": 0.4, "bottleneck": ["conv3", "conv1"]},
                   "1": {"accuracy": 0.4, "bottleneck": ["conv1", "conv3"]},
                   "2": {"accuracy": 0.4, "bottleneck": ["conv3", "conv2"]}}}
    # Execute
    claim = bottleneck_claim({"runs": runs})
    # Assert: conv3 with 8-bit weights must beat each other layer with 8-bit weights
    assert claim is not None and "conv3, in 2 of 3 seeds" in claim.text
    assert claim.better == f"{base}+w8-conv3"
    assert set(claim.against) == {f"{base}+w8-{n}" for n in ("conv1", "conv2", "classifier")}
    assert bottleneck_claim({"runs": {}}) is None


def test_quick_qcore_cells_write_their_records_and_verdicts(tmp_path: Path) -> None:
    # Execute: the QCore table's W4 rows, three seeds, digits
    out, doc = tmp_path / "reproduce.json", tmp_path / "reproduction.md"
    results = reproduce.main(["--quick", "--tables", "qcore", "--cells", "qcore/w4/*", "--out", str(out),
                              "--doc", str(doc)])
    # Assert: a record per row and seed, on one shared deployment per seed (the same streams: a 'bfn' run that
    # flips nothing scores exactly the 'none' run of its seed)
    saved = json.loads(out.read_text())
    for row in QCORE_ROWS:
        runs = saved["runs"][f"qcore/w4/drift/{row}"]
        assert sorted(runs) == ["0", "1", "2"], row
        for r in runs.values():
            assert set(QCORE_SCHEMA) <= set(r)
            assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["codes_changed"] <= 1.0 and r["commit"]
            assert r["config"]["calibration"] == QCORE_ROWS[row][0] and r["config"]["quick"] is True
    assert all(r["flops_per_task"] == 0 for r in saved["runs"]["qcore/w4/drift/none"].values())
    assert all(r["codes_changed"] == 0 for r in saved["runs"]["qcore/w4/drift/none"].values())
    for s, r in saved["runs"]["qcore/w4/drift/bfn"].items():
        if r["codes_changed"] == 0:
            assert r["accuracy"] == saved["runs"]["qcore/w4/drift/none"][s]["accuracy"]
    text = doc.read_text()
    assert "### QCore" in text and "- W4 (3 paired seeds): the BFN recovers" in text
    for claim in CLAIMS:
        if claim.key.endswith("-w4") and claim.key.startswith("qcore"):
            j = judge(results, claim)
            diffs = [saved["runs"][claim.better][s]["accuracy"] - saved["runs"][claim.against[0]][s]["accuracy"]
                     for s in ("0", "1", "2")]
            assert j["verdict"] == _by_hand(diffs), claim.key


def test_federated_cells_are_the_learning_recipe_with_the_cells_selector() -> None:
    from fleet.config.scenario import parse_config

    acs, quarc = cell_overrides("mnist-fed/w2a2/1%/acs"), cell_overrides("mnist-fed/w4a4/10%/quarc")
    assert acs["federation.num-devices"] == 100 and acs["data.alpha"] == 0.3 and acs["data.partition"] == "dirichlet"
    assert acs["coreset.method"] == "acs" and acs["coreset.fraction"] == 0.01
    assert parse_config(acs, name="t").train.clc_beta == 0.0  # the recipe's own beta is not carried over
    assert quarc["train.clc-beta"] == "auto" and quarc["quant.weight-bits"] == 4
    # the quick variant of a federated cell is a valid scenario of a small fleet
    cfg = parse_config(reproduce.cell_flat("mnist-fed/w2a2/1%/quarc", 0, {}, quick=True), name="t")
    assert cfg.federation.num_devices == reproduce.QUICK_FED["federation.num-devices"]
    fed_claims = [c for c in CLAIMS if c.key.endswith("-federated")]
    assert fed_claims and all(c.better.startswith("mnist-fed/") for c in fed_claims)


def _timed(curve: list[tuple[int, float, float]]) -> dict[str, object]:
    """A record whose curve is (round, accuracy, rounds' wall time so far)."""
    return {"accuracy": curve[-1][1], "curve": [[r, a, 1.0, t] for r, a, t in curve]}


@pytest.mark.parametrize(("quarc", "against", "expected"), [
    # QuaRC reaches full's accuracy less a point at epoch 10 in each seed, 100 s before full's run ends ...
    ([[(10, 0.95, 50.0), (20, 0.96, 100.0)]] * 3, "full_s", "reproduced"),
    # ... but not before full itself reaches it (after its first epoch, 50 s)
    ([[(10, 0.95, 50.0), (20, 0.96, 100.0)]] * 3, "full_reach_s", "inconclusive at this budget"),
    ([[(10, 0.95, 60.0)]] * 3, "full_reach_s", "not reproduced"),
    # only at its end, after full has ended: slower in each seed
    ([[(10, 0.90, 100.0), (20, 0.95, 200.0)]] * 3, "full_s", "not reproduced"),
    # never within a point in two seeds of three
    ([[(10, 0.90, 50.0)], [(10, 0.91, 50.0)], [(10, 0.95, 50.0)]], "full_s", "not reproduced"),
    # missed once, slower in the two others: the claim fails in every seed
    ([[(10, 0.90, 50.0)], [(10, 0.95, 200.0)], [(10, 0.95, 201.0)]], "full_s", "not reproduced"),
    # missed once, faster in the two others: it cannot be reproduced, nor excluded
    ([[(10, 0.90, 50.0)], [(10, 0.95, 40.0)], [(10, 0.95, 60.0)]], "full_s", "inconclusive at this budget"),
    # faster and slower: the interval straddles 0
    ([[(10, 0.95, 40.0)], [(10, 0.95, 260.0)], [(10, 0.95, 100.0)]], "full_s", "inconclusive at this budget"),
    # two seeds only
    ([[(10, 0.95, 50.0)]] * 2, "full_s", "inconclusive at this budget"),
])
def test_the_time_to_accuracy_verdict(quarc: list[list[tuple[int, float, float]]], against: str,
                                      expected: str) -> None:
    from simulations.benchmarks.reproduce_cost import FULL, QUARC_TIMED
    from simulations.benchmarks.reproduce_report import judge_cost

    # Prepare: full-data QAT ends at 95.5% after 150 s in every seed; its target, 94.5%, it reaches at 50 s
    full = {str(s): _timed([(1, 0.95, 50.0), (3, 0.955, 150.0 + s)]) for s in range(3)}
    runs = {FULL: full, QUARC_TIMED: {str(s): _timed(c) for s, c in enumerate(quarc)}}
    # Execute + Assert
    assert judge_cost({"runs": runs}, against)["verdict"] == expected


def test_the_time_claims_are_in_the_report_even_unrun() -> None:
    from simulations.benchmarks.reproduce_cost import COST_CLAIMS
    from simulations.benchmarks.reproduce_report import render

    text = render({"runs": {}}, "cmd")
    for claim, _ in COST_CLAIMS:
        line = next(ln for ln in text.splitlines() if ln.startswith(f"| {claim.text} |"))
        assert "**inconclusive at this budget** | not run at this budget |" in line


def test_the_cost_lines_show_each_seeds_time_and_the_evaluation_overhead() -> None:
    from simulations.benchmarks.reproduce_cost import FULL, PLAIN_QUARC, QUARC_TIMED, cost_lines

    # Prepare: seed 0 reaches full's accuracy less a point at epoch 10, seed 1 never does
    full = {s: _timed([(1, 0.95, 50.0), (3, 0.955, 150.0)]) for s in ("0", "1")}
    quarc = {"0": {**_timed([(10, 0.95, 80.0)]), "wall_s": 130.0}, "1": {**_timed([(10, 0.90, 80.0)]), "wall_s": 120.0}}
    plain = {"0": {"wall_s": 100.0}, "1": {"wall_s": 100.0}, "2": {"wall_s": 100.0, "commit": "b"}}
    quarc["2"] = {**_timed([(10, 0.95, 80.0)]), "wall_s": 900.0, "commit": "a"}  # another session: not paired
    runs = {FULL: full, QUARC_TIMED: quarc, PLAIN_QUARC: plain}
    # Execute
    text = "\n".join(cost_lines({"runs": runs}))
    # Assert: full reaches its own target after its first epoch; the overhead is the paired mean (30 + 20) / 2
    assert "| 0 | 95.50 | 94.50 | 150 | 50 | 10 | 80 | 95.00 (80) |" in text
    assert "| 1 | 95.50 | 94.50 | 150 | 50 | never | – |" in text
    assert "run time by +25 ± 64 s" in text  # t(1) = 12.71, sd 7.07, 2 seeds (seed 2's runs: two commits)


def test_the_evaluation_overhead_is_not_measured_from_runs_at_different_commits() -> None:
    from simulations.benchmarks.reproduce_cost import PLAIN_QUARC, QUARC_TIMED, cost_lines

    runs = {QUARC_TIMED: {"0": {"wall_s": 300.0, "commit": "a"}}, PLAIN_QUARC: {"0": {"wall_s": 200.0, "commit": "b"}}}
    text = "\n".join(cost_lines({"runs": runs}))
    assert "is not measured: no seed ran both" in text and "run time by" not in text


def test_a_cells_pattern_that_matches_nothing_is_a_one_line_error_that_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "reproduce.json"
    with pytest.raises(SystemExit, match=r"--cells: 'mnist/w9a9/\*' matches no cell of the tables ablation"):
        reproduce.main(["--tables", "ablation", "--cells", "mnist/w9a9/*", "--out", str(out),
                        "--doc", str(tmp_path / "r.md")])
    assert not out.exists() and not (tmp_path / "r.md").exists()


def test_the_budget_expects_a_cells_own_recorded_time() -> None:
    # Prepare: a cell with three recorded seeds (one without a wall time) and a cell never run
    runs = {"0": {"wall_s": 500.0}, "1": {"wall_s": 530.0}, "2": {"wall_s": 900.0}, "3": {"accuracy": None}}

    # Execute / Assert: the median of the recorded times; none for a cell without records
    assert reproduce._expected_s(runs) == 530.0
    assert reproduce._expected_s({}) is None


def test_a_record_names_the_shared_data_so_it_resumes_from_another_checkout(tmp_path: Path) -> None:
    # Prepare: a cell's flat scenario as this checkout builds it, and one reading the user's own folder
    args = argparse.Namespace(quick=False, dataset="", root="")
    flat = reproduce._flat("mnist/w2a2/1%/acs", 0, args)
    own = {**flat, "data.root": str(tmp_path)}

    # Execute: the records as a run stores them
    stored, stored_own = reproduce.portable(flat), reproduce.portable(own)

    # Assert: the shared folder is named relative to EDGEFLEET_SHARED_DATA, the user's folder stays absolute;
    # a record matches its own cell only
    assert stored["data.root"] == "$EDGEFLEET_SHARED_DATA/mnist" and stored_own["data.root"] == str(tmp_path.resolve())
    assert reproduce._same(stored, flat) and reproduce._same(stored_own, own) and not reproduce._same(stored, own)


def test_a_record_from_another_float_reference_runs_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: one stored run of a cell; this machine's reference for it is 'here'
    args = argparse.Namespace(quick=False, dataset="", root="", seeds=1, budget_min=0.0, tables="",
                              cells="mnist/w2a2/1%/acs")
    cell = "mnist/w2a2/1%/acs"
    stored = {"accuracy": 0.9, "config": reproduce.portable(reproduce._flat(cell, 0, args)), "wall_s": 1.0}
    ran: list[str] = []
    monkeypatch.setattr(reproduce, "_reference_for", lambda *_: "here")
    monkeypatch.setattr(reproduce, "_run", lambda c, *_: ran.append(c) or {**stored, "reference": "here",
                                                                          "steps": 1, "coreset_size": 1})

    # Execute + Assert: a record of this reference stands; one of another, or without one, runs again
    for reference, reruns in (("here", False), ("elsewhere", True), (None, True)):
        ran.clear()
        results = {"runs": {cell: {"0": {**stored, "reference": reference}}}}
        reproduce._run_all(args, results, tmp_path / "out.json")
        assert (ran == [cell]) is reruns, reference
        assert results["runs"][cell]["0"]["reference"] == "here"


def test_seeds_pair_only_within_one_float_reference() -> None:
    from simulations.benchmarks.reproduce_report import paired, unpaired

    def rec(acc: float, reference: str | None = None, round0: float = 0.5) -> dict:
        return {"accuracy": acc, "float_accuracy": 0.98, "curve": [[0, round0, 1.0]], "reference": reference}

    a, b = "mnist/w2a2/1%/quarc", "mnist/w2a2/1%/acs"
    results = {"runs": {a: {"0": rec(0.9, "r0"), "1": rec(0.8), "2": rec(0.7, round0=0.6), "3": rec(0.9, "x")},
                        b: {"0": rec(0.8, "r0"), "1": rec(0.7), "2": rec(0.6), "3": rec(0.9, "y")}}}
    # seed 0: same hash; seed 1: no hashes, same reference accuracy and round 0; seed 2: round 0 differs;
    # seed 3: the hashes differ
    mean, _, n = paired(results, a, b)
    assert n == 2 and mean == pytest.approx(0.1) and unpaired(results, a, b) == 2
