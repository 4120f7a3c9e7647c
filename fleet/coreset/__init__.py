"""Coreset selection for on-device QAT: scores, schedules, selectors, persistence.

See ``fleet.coreset.selectors`` for the registry and docs/methods.md (ACS, QuaRC)
"""

from fleet.coreset.base import CoresetResult, SelectionContext, Selector, SelectorState
from fleet.coreset.budget import normalize, top_k
from fleet.coreset.persistence import CORESET_KEY, select_or_reuse, should_reselect
from fleet.coreset.schedules import SCHEDULES
from fleet.coreset.scores import ScorePass, ds, evs, res, res_from_logits, score_pass
from fleet.coreset.selectors import SELECTORS, build_selector

__all__ = [
    "CORESET_KEY",
    "SCHEDULES",
    "SELECTORS",
    "CoresetResult",
    "ScorePass",
    "SelectionContext",
    "Selector",
    "SelectorState",
    "build_selector",
    "ds",
    "evs",
    "normalize",
    "res",
    "res_from_logits",
    "score_pass",
    "select_or_reuse",
    "should_reselect",
    "top_k",
]
