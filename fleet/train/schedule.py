"""Learning-rate schedules of a training job, as a factor of the base rate at a point of the job.

A *training job* is what one optimizer and one schedule cover. With ``train.lr-scope = "run"``
the job is the whole run: the server sends each round the share of the run it covers
(``[(r - 1) / R, r / R]``), so a device's rate follows one schedule over all rounds, as the
papers' single-device recipes do (QuaRC Alg. 1, one optimizer over T epochs). With
``"round"`` each round's local training is a job of its own.

Examples
--------
>>> [round(lr_factor("cosine", p), 3) for p in (0.0, 0.5, 1.0)]
[1.0, 0.5, 0.0]
>>> [round(lr_factor("step", p), 6) for p in (0.0, 0.5, 0.8)]
[1.0, 0.1, 0.01]
>>> progress((0.5, 1.0), 5, 10)
0.75
"""

from __future__ import annotations

import math

__all__ = ["LR_SCHEDULES", "LR_SCOPES", "lr_factor", "progress", "round_window"]

LR_SCHEDULES = ("constant", "cosine", "step")
LR_SCOPES = ("run", "round")
STEP_MILESTONES = (0.5, 0.75)  # "step": the rate is multiplied by STEP_GAMMA at each of these shares of the job
STEP_GAMMA = 0.1


def lr_factor(schedule: str, p: float) -> float:
    """Factor of the base rate at progress ``p`` in [0, 1] of the job."""
    p = min(max(p, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "step":
        return STEP_GAMMA ** sum(p >= m for m in STEP_MILESTONES)
    raise ValueError(f"unknown lr schedule '{schedule}'; valid: {', '.join(LR_SCHEDULES)}")


def progress(window: tuple[float, float], step: int, total_steps: int) -> float:
    """Where step ``step`` of ``total_steps`` (the steps of this call) falls in the job."""
    start, end = window
    return start + (end - start) * step / max(total_steps, 1)


def round_window(scope: str, server_round: int, rounds: int) -> tuple[float, float]:
    """The share of the job that round ``server_round`` (1-based) of ``rounds`` covers."""
    if scope == "round":
        return 0.0, 1.0
    return (server_round - 1) / rounds, min(server_round / rounds, 1.0)
