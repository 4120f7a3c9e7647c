"""What a device process derives once and reuses across device-rounds: one bounded cache.

Everything here is read-only and a pure function of (scenario, float reference, width, ...): the float
reference by content hash, the trainable model of a width (its module tree), the working copy each thread
resets per round, which weights are quantized, the memory estimate, the upload size and the FLOPs per
sample. Keeping them costs memory and saves work every round; the cache holds at most ``MAX_ENTRIES``
and drops the least recently used, so a process that sees many scenarios (a sweep, the tests) stays bounded.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from fleet.config.scenario import ScenarioConfig
from fleet.data.splits import fleet_data
from fleet.hardware.flops import model_flops
from fleet.hardware.memory import estimate_peak_memory
from fleet.model.architectures import build_model
from fleet.model.assembly import model_quant_info, state_arrays, trainable_model
from fleet.model.reference import cache_dir, save_atomic, state_hash
from fleet.quant.codecs import payload_nbytes, scenario_codec
from fleet.quant.spec import QuantInfo, is_quantized

__all__ = ["MAX_ENTRIES", "cached", "reference", "template", "working_model", "quant_info_at", "peak_mb",
           "trains_quantized", "upload_nbytes", "flops_per_sample", "upload_state", "clear"]

MAX_ENTRIES = 64
T = TypeVar("T")
_CACHE: OrderedDict[Hashable, Any] = OrderedDict()
_LOCK = threading.Lock()


def cached(key: Hashable, build: Callable[[], T]) -> T:
    """``build()`` once per ``key`` in this process (least recently used entries dropped past the bound)."""
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    value = build()
    with _LOCK:
        _CACHE[key] = value
        while len(_CACHE) > MAX_ENTRIES:
            _CACHE.popitem(last=False)
    return value


def clear() -> None:
    with _LOCK:
        _CACHE.clear()


def _frozen(cfg: ScenarioConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    ds = fleet_data(cfg).dataset
    model = build_model(cfg.model.arch, ds.in_shape, ds.num_classes)
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def reference(cfg: ScenarioConfig, ref_hash: str, arrays: dict[str, np.ndarray] | None) -> nn.Module:
    """The frozen float reference with content hash ``ref_hash``: from ``arrays`` (what the server sent, also
    written to the device's disk cache), else from that disk cache; then kept in this process."""

    def build() -> nn.Module:
        path = Path(cache_dir(cfg)) / "refs" / "by-hash" / f"{ref_hash}.safetensors"
        if arrays is not None:
            state = {k: torch.from_numpy(v) for k, v in arrays.items()}
            if state_hash(state) != ref_hash:
                raise ValueError("reference arrays do not match their hash")
            if not path.is_file():
                save_atomic(state, path)
        elif path.is_file():
            state = load_file(str(path))
        else:
            raise RuntimeError(f"float reference {ref_hash} was never received by this device")
        return _frozen(cfg, state)

    return cached(("reference", cfg.model.arch, ref_hash), build)


def template(cfg: ScenarioConfig, ref_hash: str, ref: nn.Module | None, wb: int, ab: int) -> nn.Module:
    """The trainable model at a width (read-only; devices train a working copy). Only its module tree
    matters (every aggregatable tensor is overwritten by the global arrays), so without a reference it is
    converted from a freshly built architecture."""

    def build() -> nn.Module:
        base = ref
        if base is None:
            ds = fleet_data(cfg).dataset
            base = build_model(cfg.model.arch, ds.in_shape, ds.num_classes)
        return trainable_model(cfg, base, wb, ab)

    return cached(("template", cfg, ref_hash, wb, ab), build)


def working_model(cfg: ScenarioConfig, ref_hash: str, ref: nn.Module | None, wb: int, ab: int) -> nn.Module:
    """The width's trainable model in its template state, for one device-round.

    A process runs one device-round at a time per thread, so each thread keeps one working copy and
    resets it in place (every parameter and buffer, the train/eval mode, gradients dropped): an order
    of magnitude cheaper than a deep copy of the template per device-round (0.07 vs 0.74 ms, MLP)."""

    def build() -> tuple[nn.Module, dict[str, torch.Tensor], bool]:
        tpl = template(cfg, ref_hash, ref, wb, ab)  # read-only: its state is the reset point
        return copy.deepcopy(tpl), tpl.state_dict(), tpl.training

    model, pristine, training = cached(("working", cfg, ref_hash, wb, ab, threading.get_ident()), build)
    model.train(training)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            v.copy_(pristine[k])
    for p in model.parameters():
        p.grad = None
    return model


def quant_info_at(cfg: ScenarioConfig, ref_hash: str, ref: nn.Module | None, wb: int, ab: int) -> QuantInfo | None:
    """Which weights a device at this width quantizes (read off the width's template: every copy is alike).
    A float device encodes on the global model's grid (what the qweights codec needs); None if that is float too."""
    if not is_quantized(wb, ab):
        wb, ab = cfg.quant.weight_bits, cfg.quant.act_bits
        if not is_quantized(wb, ab):
            return None
    return cached(("qinfo", cfg, ref_hash, wb, ab), lambda: model_quant_info(template(cfg, ref_hash, ref, wb, ab)))


def trains_quantized(cfg: ScenarioConfig, wb: int, ab: int) -> bool:
    """Whether a device at this width trains fake-quantized (QAT); under ``train.qgt-mode = "ptq"`` it trains in
    float and quantizes afterwards, so its training memory is the float model's."""
    return is_quantized(wb, ab) and cfg.train.qgt_mode != "ptq"


def peak_mb(cfg: ScenarioConfig, model: nn.Module, wb: int, ab: int, batch: int, teacher: nn.Module | None) -> float:
    """Peak training memory estimate (MiB); it depends only on architecture, width and batch."""

    def build() -> float:
        est = estimate_peak_memory(model, fleet_data(cfg).dataset.in_shape, batch, optimizer=cfg.train.optimizer,
                                   momentum=cfg.train.momentum, teacher=teacher,
                                   quantized=trains_quantized(cfg, wb, ab))
        return est.total_bytes / 2**20

    return cached(("peak", cfg, wb, ab, batch, teacher is not None), build)


def upload_state(model: nn.Module, global_arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The device's aggregatable state on the global model's keys (a tensor the device's width lacks,
    such as a step size of a float device, is sent back unchanged)."""
    local = state_arrays(model)
    return {k: local.get(k, global_arrays[k]) for k in global_arrays}


def upload_nbytes(cfg: ScenarioConfig, ref_hash: str, ref: nn.Module | None, wb: int, ab: int,
                  global_arrays: dict[str, np.ndarray]) -> int:
    """Size of this width's upload; it depends only on shapes and bits."""

    def build() -> int:
        base = upload_state(template(cfg, ref_hash, ref, wb, ab), global_arrays)
        qinfo = quant_info_at(cfg, ref_hash, ref, wb, ab)
        return payload_nbytes(scenario_codec(cfg).encode(base, base, np.random.default_rng(0), qinfo))

    return cached(("upload", cfg, ref_hash, wb, ab), build)


def flops_per_sample(cfg: ScenarioConfig) -> int:
    """Forward FLOPs per sample of the scenario's float architecture (the virtual clock's unit of work)."""
    ds = fleet_data(cfg).dataset
    key = ("flops", cfg.model.arch, ds.in_shape, ds.num_classes)
    return cached(key, lambda: model_flops(build_model(cfg.model.arch, ds.in_shape, ds.num_classes), ds.in_shape))
