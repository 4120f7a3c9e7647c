"""Which models a device-round uses, decided from the scenario alone (torch-free, so the server's
strategies can ask without loading torch)."""

from __future__ import annotations

import functools

from fleet.config.scenario import ScenarioConfig
from fleet.quant.spec import is_quantized

__all__ = ["needs_reference"]


@functools.lru_cache(maxsize=64)  # asked per device and round, on both sides; the answer is fixed per scenario
def needs_reference(cfg: ScenarioConfig, weight_bits: int, act_bits: int) -> bool:
    """Whether a device training at these widths uses the float reference: as the teacher (KD at low
    bits, CLC) or to score its coreset (the selector says whether it does). A device that does not is
    never sent one."""
    if (is_quantized(weight_bits, act_bits) and cfg.train.kd) or cfg.train.clc_beta != 0.0:
        return True
    from fleet.coreset.selectors import uses_float_model  # torch: only when the answer depends on it

    return uses_float_model(cfg.coreset.method)
