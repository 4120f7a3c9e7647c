"""Which seeds of two study cells pair: runs of one seed that learned from the same float reference.

The float reference is pretrained once per seed and cached (``fleet.model.reference``); pretraining is
deterministic on one machine but not bit-identical across machines (CPU kernels and thread counts change the
float rounding), so the study's records, made over several sessions, can hold two references for one seed. Runs
from different references start from different quantized models: their difference is not a paired one.
Records keep the reference's content hash (``reference``); older records are matched by what they kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from simulations.benchmarks.reproduce_grid import ROWS, parse_cell

__all__ = ["paired_seeds", "same_reference"]


def _initial_model(cell: str) -> tuple[Any, ...]:
    """What a cell's initial quantized model depends on besides the reference (round 0 compares only if equal)."""
    dataset, bits, _, row = parse_cell(cell)
    over = ROWS.get(row, {})
    return dataset, bits, over.get("quant.keep-fp"), over.get("quant.w8-layers")


def _round0(record: Mapping[str, Any]) -> float | None:
    curve = record.get("curve") or []
    return curve[0][1] if curve and curve[0][0] == 0 else None


def same_reference(ra: Mapping[str, Any], rb: Mapping[str, Any], same_init: bool = True) -> bool:
    """Whether two runs of one seed learned from the same float reference: by its content hash when both records
    have one; otherwise (records made before the hash was kept) by the reference's test accuracy and, when the
    cells start from the same initial model (``same_init``), by that model's round-0 accuracy.

    >>> a = {"float_accuracy": 0.985, "curve": [[0, 0.5369, 3.0]]}
    >>> same_reference(a, {**a, "curve": [[0, 0.5854, 5.2]]}), same_reference(a, {**a, "reference": "f00"})
    (False, True)
    """
    if ra.get("reference") and rb.get("reference"):
        return bool(ra["reference"] == rb["reference"])
    if ra.get("float_accuracy") != rb.get("float_accuracy"):
        return False
    return not same_init or _round0(ra) == _round0(rb)


def paired_seeds(results: Mapping[str, Any], a: str, b: str, seeds: Sequence[str]) -> tuple[list[str], int]:
    """Of ``seeds`` (run by both cells), those whose runs share a reference, and how many were left out. QCore
    cells have no float reference of the study's (their model is pretrained by the QCore benchmark): all pair."""
    if parse_cell(a)[0] == "qcore":
        return list(seeds), 0
    runs = results.get("runs", {})
    ra, rb = runs.get(a, {}), runs.get(b, {})
    same_init = _initial_model(a) == _initial_model(b)
    kept = [s for s in seeds if same_reference(ra[s], rb[s], same_init)]
    return kept, len(seeds) - len(kept)
