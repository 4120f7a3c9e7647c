"""Assemble the model a scenario trains: the float architecture, fake-quantized by surgery.

Shared by the server (initial global model, evaluation, export) and the devices,
so both always build the same module tree and state-dict keys.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from fleet.config.scenario import ScenarioConfig
from fleet.config.schema import ConfigError
from fleet.quant.convert import default_keep_fp, quant_info, quant_layers, quantize_model, set_initialized
from fleet.quant.spec import QuantInfo, is_quantized, split_state

__all__ = ["keep_fp_names", "trainable_model", "state_arrays", "load_arrays", "QuantInfo",
           "model_quant_info"]


INT8_BITS = 8  # quant.keep-fp = "int8": the width of the layers ACS keeps in float


def keep_fp_names(cfg: ScenarioConfig, model: nn.Module) -> list[str] | None:
    """``quant.keep-fp`` as module names (None = the papers' default set)."""
    text = cfg.quant.keep_fp.strip()
    if text in ("default", "int8"):
        return None
    if text in ("", "none"):
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules:
            raise ConfigError("quant.keep-fp", f"no module named '{n}' in {cfg.model.arch}")
    return names


def w8_layer_names(cfg: ScenarioConfig, model: nn.Module) -> list[str]:
    """``quant.w8-layers`` as module names, each one a quantized layer of ``model`` (ConfigError otherwise)."""
    names = [n.strip() for n in cfg.quant.w8_layers.split(",") if n.strip()]
    quantized = set(quant_layers(model))
    for n in names:
        if n not in quantized:
            raise ConfigError("quant.w8-layers", f"'{n}' is not a quantized layer of {cfg.model.arch}; quantized: "
                                                 f"{', '.join(sorted(quantized)) or 'none'}")
    return names


def _swap(model: nn.Module, donor: nn.Module, names: list[str]) -> None:
    """Replace ``model``'s modules ``names`` by ``donor``'s (the same architecture quantized otherwise)."""
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, donor.get_submodule(name))


def trainable_model(cfg: ScenarioConfig, reference: nn.Module, weight_bits: int, act_bits: int) -> nn.Module:
    """A fresh trainable copy of ``reference``, fake-quantized at the given widths (32 = float)."""
    if not is_quantized(weight_bits, act_bits):
        model = copy.deepcopy(reference)
    else:
        opts: dict[str, Any] = {"weights_only": cfg.quant.weights_only, "per_channel": cfg.quant.per_channel,
                                "act_signed": cfg.quant.act_signed}
        model = quantize_model(reference, weight_bits, act_bits, keep_fp=keep_fp_names(cfg, reference), **opts)
        if cfg.quant.keep_fp.strip() == "int8":  # the layers ACS keeps in float, at 8 bits instead
            _swap(model, quantize_model(reference, INT8_BITS, INT8_BITS, keep_fp=[], **opts),
                  default_keep_fp(reference))
        if names := w8_layer_names(cfg, model):  # only their weight quantizers: their inputs keep their widths
            donor = quantize_model(reference, INT8_BITS, act_bits, keep_fp=[], **opts)
            for name in names:
                model.get_submodule(name).weight_quant = donor.get_submodule(name).weight_quant
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def state_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    """The aggregatable float state of ``model`` as numpy (init flags and counters stay local)."""
    agg, _ = split_state(model.state_dict())
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in agg.items()}


def load_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load aggregatable arrays into ``model``; quantizers count as initialised (their steps came along)."""
    own = model.state_dict()
    agg, _ = split_state(own)
    missing = sorted(set(agg) - set(arrays))
    if missing:
        raise ValueError(f"global arrays lack {len(missing)} keys, e.g. {missing[:3]}")
    with torch.no_grad():
        for k in agg:
            own[k].copy_(torch.from_numpy(np.asarray(arrays[k])).to(own[k].dtype).reshape(own[k].shape))
    set_initialized(model, True)


def model_quant_info(model: nn.Module) -> QuantInfo:
    return quant_info(model)
