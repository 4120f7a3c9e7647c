"""The deployable artifact: the final global model as packed integer weights plus scales, its integer-only
path and its ONNX file.

The exported model is rebuilt from the integer codes and evaluated; its accuracy
is the run's ``final_accuracy`` (the deployed model), and its predictions are
compared with the fake-quantized model's (they must agree on >= 99.9% of samples).
With ``output.onnx`` the model is also lowered to integer-only inference (``fleet.deploy.integer``) and written
as ``model.onnx`` (QDQ, ``fleet.deploy.onnx_export``); on the first ``CHECK_SAMPLES`` test samples the integer
path is compared with the fake-quantized model and onnxruntime's output with the integer path.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fleet.config.scenario import ScenarioConfig
from fleet.quant.export import export_nbytes, export_quantized, load_exported, save_export

log = logging.getLogger(__name__)

__all__ = ["export_deployable", "write_qgt_report"]


def write_qgt_report(model: nn.Module, bits: int, run_dir: Path) -> None:
    """Per-layer distance to the low-bit grid of the final model (QGT's bottleneck report, a reconstruction)."""
    from fleet.train.qgt import bottleneck_report
    from simulations.store.results import write_json_atomic

    layers = bottleneck_report(model, bits)
    write_json_atomic(run_dir / "qgt.json", {"bits": bits, "layers": layers})


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[s:s + 512]).argmax(1) for s in range(0, len(x), 512)])


def export_deployable(qmodel: nn.Module, reference: nn.Module, cfg: ScenarioConfig, run_dir: Path,
                      x_test: torch.Tensor, y_test: torch.Tensor,
                      pred_fq: torch.Tensor | None = None) -> dict[str, Any]:
    """Export, save as ``model-int.safetensors``, re-load, evaluate; returns summary fields. ``pred_fq``: the
    fake-quantized model's predictions on ``x_test`` if already computed (the final round's evaluation)."""
    arrays = export_quantized(qmodel)
    save_export(run_dir / "model-int.safetensors", arrays)
    deployed = load_exported(arrays, reference)
    pred_int = _predict(deployed, x_test)
    if pred_fq is None:
        pred_fq = _predict(qmodel, x_test)
    agreement = float((pred_int == pred_fq).float().mean())
    if agreement < 0.999:
        log.warning("exported model agrees with the fake-quantized one on only %.2f%% of test samples",
                    100 * agreement)
    fp32 = sum(v.numel() * 4 for v in reference.state_dict().values() if v.is_floating_point())
    extra = _checked_deploy(qmodel, run_dir, x_test, pred_fq) if cfg.output.onnx else {}
    return {**extra,
        "final_accuracy": float((pred_int == y_test).float().mean()),
        "fake_quant_accuracy": float((pred_fq == y_test).float().mean()),
        "export_agreement": agreement,
        "model_size_bytes": export_nbytes(arrays),
        "fp32_model_size_bytes": fp32,
    }


CHECK_SAMPLES = 2000  # test samples the integer path and the ONNX file are checked on


def _checked_deploy(qmodel: nn.Module, run_dir: Path, x_test: torch.Tensor, pred_fq: torch.Tensor) -> dict[str, Any]:
    """The integer path and ``model.onnx``; a model they do not support is a warning, never a failed run."""
    try:
        return _integer_and_onnx(qmodel, run_dir, x_test, pred_fq)
    except (ValueError, OverflowError, ImportError) as exc:
        (run_dir / "model.onnx").unlink(missing_ok=True)
        log.warning("no integer path or model.onnx for this model: %s", exc)
        return {"deploy_check": f"skipped: {exc}"}


@torch.no_grad()
def _integer_and_onnx(qmodel: nn.Module, run_dir: Path, x_test: torch.Tensor,
                      pred_fq: torch.Tensor) -> dict[str, Any]:
    """Lower to the integer-only path, write ``model.onnx``; their agreements on the first test samples."""
    from fleet.deploy.integer import lower
    from fleet.deploy.onnx_export import export_onnx, onnx_logits

    x = x_test[:CHECK_SAMPLES]
    integer = lower(qmodel)
    pred_int = torch.cat([integer(x[s:s + 512]).argmax(1) for s in range(0, len(x), 512)]) if len(x) else \
        torch.zeros(0, dtype=torch.long)
    path = export_onnx(qmodel, run_dir / "model.onnx", x_test[:1])
    integer_agreement = float((pred_int == pred_fq[:len(x)]).float().mean())
    onnx_agreement, onnx_unfused = (float((onnx_logits(path, x, fused=f).argmax(1) == pred_int).float().mean())
                                    for f in (True, False))
    if min(integer_agreement, onnx_agreement) < 0.995:
        log.warning("integer path agrees with the fake-quantized model on %.2f%%, onnxruntime with the integer path "
                    "on %.2f%% of %d test samples (%.2f%% without its fused kernels)", 100 * integer_agreement,
                    100 * onnx_agreement, len(x), 100 * onnx_unfused)
    return {"integer_agreement": integer_agreement, "onnx_agreement": onnx_agreement,
            "onnx_unfused_agreement": onnx_unfused,
            "integer_float_ops": integer.float_ops, "onnx_bytes": path.stat().st_size,
            "deploy_check_samples": len(x)}
