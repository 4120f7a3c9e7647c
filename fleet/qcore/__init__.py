"""QCore: continual on-device calibration of quantized models (Campos et al., PVLDB 2024).

Modules: ``quant`` (integer-code quantizer), ``misses`` (quantization misses and QCore
sampling/update), ``bfn`` (bit-flipping networks), ``calibrate`` (per-batch calibration
methods and FLOPs), ``stream`` (drifting device streams), ``continual`` (deployment and
the device loop). Flower-free. See docs/qcore.md.
"""

from fleet.qcore.continual import ContinualConfig, TaskMetrics, deploy, run_device_stream
from fleet.qcore.quant import SUPPORTED_BITS, to_qcore

__all__ = [
    "SUPPORTED_BITS",
    "ContinualConfig",
    "TaskMetrics",
    "deploy",
    "run_device_stream",
    "to_qcore",
]
