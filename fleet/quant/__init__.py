"""Quantization library: LSQ quantizers, model surgery, bit packing and export.

See ``quantizers`` (the LSQ fake quantizer), ``convert`` (float -> quantized model
surgery, state splitting), ``packing`` (integer codes <-> bytes) and ``export``
(integer-code checkpoints).
"""

from fleet.quant.convert import (
    MAPPING,
    QConv2d,
    QLinear,
    QuantInfo,
    QuantSpec,
    default_keep_fp,
    init_quantizers,
    quant_info,
    quant_layers,
    quantize_model,
    set_initialized,
    split_state,
)
from fleet.quant.packing import pack_codes, packed_nbytes, unpack_codes
from fleet.quant.quantizers import (
    FLOAT_BITS,
    IdentityQuantizer,
    LsqQuantizer,
    grad_scale,
    qrange,
    round_ste,
)

__all__ = [
    "FLOAT_BITS",
    "MAPPING",
    "IdentityQuantizer",
    "LsqQuantizer",
    "QConv2d",
    "QLinear",
    "QuantInfo",
    "QuantSpec",
    "default_keep_fp",
    "grad_scale",
    "init_quantizers",
    "pack_codes",
    "packed_nbytes",
    "qrange",
    "quant_info",
    "quant_layers",
    "quantize_model",
    "round_ste",
    "set_initialized",
    "split_state",
    "unpack_codes",
]
