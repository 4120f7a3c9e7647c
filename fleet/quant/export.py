"""Integer-code export of a fake-quantized model (what would ship to a device).

``export_quantized`` stores each LSQ-quantized weight as packed integer codes
plus its step and shape; everything else inference needs (float layers, biases,
BatchNorm statistics, activation steps) as float32. Keys (``L`` = layer name):

* ``L.weight::codes`` packed uint8 codes, ``L.weight::shape`` int64 shape,
  ``L.weight::qspec`` int32 ``[bits, signed]``, ``L.weight_quant.step`` float32;
* ``L.act_quant::qspec`` int32 ``[bits, signed]`` and ``L.act_quant.step`` float32
  for a quantized input;
* every other state entry under its state key, float32, except the local
  bookkeeping (``initialized``, ``num_batches_tracked``), not needed for inference.

``load_exported`` rebuilds the quantized model on a float model of the same
architecture; each quantized weight is exactly ``codes * step`` (float32).
"""

from __future__ import annotations

import copy
import os

import numpy as np
import torch
from safetensors.numpy import save_file
from torch import nn

from fleet.quant.convert import MAPPING, quant_layers, set_initialized
from fleet.quant.packing import pack_codes, unpack_codes
from fleet.quant.quantizers import LsqQuantizer
from fleet.quant.spec import FLOAT_BITS, LOCAL_ONLY_SUFFIXES

__all__ = ["export_quantized", "save_export", "export_nbytes", "load_exported"]

CODES = "::codes"
SHAPE = "::shape"
QSPEC = "::qspec"


def _spec(q: LsqQuantizer) -> np.ndarray:
    return np.array([q.bits, int(q.signed)], dtype=np.int32)


@torch.no_grad()
def export_quantized(model: nn.Module) -> dict[str, np.ndarray]:
    """Arrays describing ``model`` for inference, quantized weights as packed codes."""
    state = model.state_dict()
    arrays: dict[str, np.ndarray] = {}
    coded: set[str] = set()
    for name, layer in quant_layers(model).items():
        prefix = f"{name}." if name else ""
        wq, aq = layer.weight_quant, layer.act_quant
        if isinstance(wq, LsqQuantizer):
            key = prefix + "weight"
            codes = wq.codes(layer.weight).cpu().numpy()  # int32, same shape as the weight
            arrays[key + CODES] = pack_codes(codes, wq.bits, wq.signed)
            arrays[key + SHAPE] = np.array(codes.shape, dtype=np.int64)
            arrays[key + QSPEC] = _spec(wq)
            coded.add(key)
        if isinstance(aq, LsqQuantizer):
            arrays[prefix + "act_quant" + QSPEC] = _spec(aq)
    for key, value in state.items():
        if key in coded or key.rpartition(".")[2] in LOCAL_ONLY_SUFFIXES:
            continue
        arrays[key] = value.detach().cpu().numpy().astype(np.float32)
    return arrays


def save_export(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a safetensors file."""
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def export_nbytes(arrays: dict[str, np.ndarray]) -> int:
    """Size of the export: the sum of the arrays' ``nbytes`` (packed codes at their real size)."""
    return int(sum(v.nbytes for v in arrays.values()))


def _layer_specs(arrays: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Per layer name, the ``weight`` / ``act`` qspecs found in ``arrays``."""
    specs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        if not key.endswith(QSPEC):
            continue
        path = key[: -len(QSPEC)]
        for leaf, kind in (("weight", "weight"), ("act_quant", "act")):
            if path == leaf or path.endswith("." + leaf):
                layer = path[: -len(leaf)].rstrip(".")
                specs.setdefault(layer, {})[kind] = value
    return specs


@torch.no_grad()
def load_exported(arrays: dict[str, np.ndarray], float_model: nn.Module) -> nn.Module:
    """Rebuild the exported quantized model on a copy of ``float_model`` (same architecture).

    Each quantized weight parameter is set to ``codes * step`` exactly; its LSQ
    quantizer is kept (and marked initialised), which maps that weight onto
    itself, so the model can be fine-tuned or re-exported. Activations are
    fake-quantized with the exported steps, as in training. Returned in eval mode.
    """
    model = copy.deepcopy(float_model)
    for name, spec in _layer_specs(arrays).items():
        layer = model.get_submodule(name)
        if type(layer) not in MAPPING:
            raise ValueError(f"'{name}' is a {type(layer).__name__}, not a quantizable layer")
        wspec, aspec = spec.get("weight"), spec.get("act")
        prefix = f"{name}." if name else ""
        step = arrays.get(prefix + "weight_quant.step")
        per_channel = step is not None and step.size > 1
        qlayer = MAPPING[type(layer)].from_float(
            layer,  # type: ignore[arg-type]
            int(wspec[0]) if wspec is not None else FLOAT_BITS,
            int(aspec[0]) if aspec is not None else FLOAT_BITS,
            per_channel,
            bool(aspec[1]) if aspec is not None else True,
        )
        if wspec is not None and bool(wspec[1]) != qlayer.weight_quant.signed:
            raise ValueError(f"'{name}': unsigned weight codes are not supported")
        if name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, qlayer)
        else:
            model = qlayer
    state = {}
    for key, current in model.state_dict().items():
        if key.rpartition(".")[2] in LOCAL_ONLY_SUFFIXES:
            state[key] = current
        elif key + CODES in arrays:
            state[key] = _decode_weight(arrays, key)
        elif key in arrays:
            state[key] = torch.from_numpy(np.asarray(arrays[key], dtype=np.float32))
        else:
            raise ValueError(f"export has no entry for state key '{key}'")
    model.load_state_dict(state)
    set_initialized(model, True)
    return model.eval()


def _decode_weight(arrays: dict[str, np.ndarray], key: str) -> torch.Tensor:
    bits, signed = (int(v) for v in arrays[key + QSPEC])
    shape = tuple(int(d) for d in arrays[key + SHAPE])
    codes = unpack_codes(arrays[key + CODES], bits, int(np.prod(shape)), bool(signed))
    step_key = key[: -len("weight")] + "weight_quant.step"
    step = np.asarray(arrays[step_key], dtype=np.float32)  # (1,) or (C, 1, ...)
    # An integer code times a float32 step is exactly the fake-quant forward's q * s.
    weight = codes.reshape(shape).astype(np.float32) * step
    return torch.from_numpy(weight)
