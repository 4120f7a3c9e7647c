"""Writes small synthetic run directories (the format of docs/results.md) for tests.

Numbers are drawn from an explicit ``np.random.Generator`` seeded by ``seed`` so every
fixture is deterministic. Accuracy rises with rounds towards ``final_accuracy``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

STATUSES = ("ok", "straggler", "oom", "offline", "failed", "rejected")


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_toml(path: Path, nested: dict[str, dict[str, Any]]) -> None:
    """Write one level of tables of scalars (all our fixtures need)."""
    lines = []
    for table, values in nested.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def base_config(seed: int = 0) -> dict[str, dict[str, Any]]:
    """A resolved-looking scenario config with kebab-case keys."""
    return {
        "federation": {"num-devices": 12, "devices-per-round": 6, "rounds": 5, "seed": seed},
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
        "model": {"arch": "mlp"},
        "quant": {"weight-bits": 4, "act-bits": 4, "codec": "fp32"},
        "coreset": {"method": "acs", "fraction": 0.2},
        "train": {"local-epochs": 1, "lr": 0.005},
        "strategy": {"name": "fedavg"},
        "ray": {"num-cpus-per-device": 1.0},
        "output": {"dir": f"runs/test/{seed}"},
    }


def write_run(
    path: Path,
    *,
    seed: int = 0,
    rounds: int = 5,
    num_devices: int = 12,
    per_round: int = 6,
    num_classes: int = 10,
    final_accuracy: float = 0.8,
    complete: bool = True,
    config: dict[str, dict[str, Any]] | None = None,
    summary_extra: dict[str, Any] | None = None,
    qgt: bool = True,
    continual: bool = True,
    truncate_last: bool = False,
    round0: bool = True,
    val_sizes: list[int] | None = None,
    float_layers: tuple[int, ...] | None = (0, 7),
    uplink_per_device: int = 20_000,
) -> Path:
    """Write a synthetic run directory and return its path.

    ``complete=False`` writes ``rounds - 1`` rounds and a ``"running"`` summary;
    ``truncate_last=True`` appends half a JSON line to ``rounds.jsonl``. ``round0`` writes
    the starting model's line first (``round: 0``, no devices, zero bytes), as real runs do.
    ``val_sizes`` sets each device's held-out count in ``partition.json`` (default: a fifth
    of its local data, 8..39). With ``qgt``, ``float_layers`` are the indices of the 8
    ``qgt.json`` layers left float in ``model-int.safetensors`` (None: no model file).
    """
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    cfg = config if config is not None else base_config(seed)
    write_toml(path / "config.toml", cfg)
    done = rounds if complete else rounds - 1
    round_lines, device_lines = [], []
    acc = 0.2
    if round0:
        round_lines.append({
            "round": 0, "accuracy": acc, "loss": 2.0 * (1 - acc), "devices_sampled": 0,
            "devices_completed": 0, "devices_failed": 0, "devices_dropped": 0,
            "devices_rejected": 0, "status_counts": dict.fromkeys(STATUSES, 0),
            "uplink_bytes": 0, "downlink_bytes": 0, "wall_s": 0.01, "sim_time_s": 0.0,
            "device_accuracy_mean": None, "device_accuracy_p10": None})
    for r in range(1, done + 1):
        acc = final_accuracy - (final_accuracy - 0.2) * 0.5 ** r + float(rng.normal(0, 0.005))
        chosen = rng.choice(num_devices, size=per_round, replace=False)
        statuses = rng.choice(STATUSES, size=per_round, p=[0.7, 0.1, 0.05, 0.05, 0.05, 0.05])
        dev_acc = np.clip(acc + rng.normal(0, 0.08, size=per_round), 0, 1)
        up = 0
        for d, st, da in zip(chosen, statuses, dev_acc, strict=True):
            ok = st in ("ok", "rejected")
            bytes_up = uplink_per_device if ok else 0
            up += bytes_up
            device_lines.append({
                "round": r, "device": int(d), "status": str(st), "profile": "phone-mid",
                "bits": 4, "local_size": 100, "coreset_size": 20, "train_samples": 20,
                "scoring_passes": 100, "teacher_passes": 20, "method": "acs",
                "accuracy": float(da) if ok else None, "loss": 0.5 if ok else None,
                "uplink_bytes": bytes_up, "downlink_bytes": 80_000, "compute_s": 1.5,
                "comm_s": 0.5, "sim_time_s": 2.0 + float(rng.random()), "energy_j": 3.0,
                "peak_mem_mb": 40.0, "wall_s": 0.1, "fault": None if ok else str(st),
                "error": None if st != "failed" else "RuntimeError: synthetic",
            })
        counts = {s: int((statuses == s).sum()) for s in STATUSES}
        ok_acc = [float(a) for a, s in zip(dev_acc, statuses, strict=True)
                  if s in ("ok", "rejected")]
        round_lines.append({
            "round": r, "accuracy": acc, "loss": 2.0 * (1 - acc),
            "devices_sampled": per_round, "devices_completed": counts["ok"],
            "devices_failed": counts["failed"],
            "devices_dropped": counts["straggler"] + counts["oom"] + counts["offline"],
            "devices_rejected": counts["rejected"], "status_counts": counts,
            "uplink_bytes": up, "downlink_bytes": 80_000 * per_round, "wall_s": 1.0 + r * 0.1,
            "sim_time_s": 3.0 + float(rng.random()),
            "device_accuracy_mean": float(np.mean(ok_acc)) if ok_acc else None,
            "device_accuracy_p10": float(np.percentile(ok_acc, 10)) if ok_acc else None,
        })
    rounds_text = "".join(json.dumps(x) + "\n" for x in round_lines)
    if truncate_last:
        rounds_text += json.dumps({"round": done + 1, "accuracy": 0.5})[:17]
    (path / "rounds.jsonl").write_text(rounds_text, encoding="utf-8")
    (path / "devices.jsonl").write_text("".join(json.dumps(x) + "\n" for x in device_lines))
    labels = rng.dirichlet(np.full(num_classes, 0.5), size=num_devices)  # (D, K)
    sizes = rng.integers(40, 200, size=num_devices)
    partition = {"num_classes": num_classes, "devices": [
        {"device": i, "train": int(sizes[i]),
         "val": int(sizes[i] // 5) if val_sizes is None else int(val_sizes[i]),
         "labels": [int(x) for x in np.round(labels[i] * sizes[i])]}
        for i in range(num_devices)]}
    (path / "partition.json").write_text(json.dumps(partition))
    if qgt:
        layers = [{"layer": f"layers.{i}.conv", "residual": float(rng.random() * 1e-3),
                   "quant_mse": float(rng.random() * 1e-4)} for i in range(8)]
        ranked = sorted(layers, key=lambda x: -x["residual"])
        for rank, layer in enumerate(ranked, start=1):
            layer["rank"] = rank
        (path / "qgt.json").write_text(json.dumps({"bits": 4, "layers": layers}))
        if float_layers is not None:
            quantized = [x["layer"] for i, x in enumerate(layers) if i not in float_layers]
            write_safetensors_header(path / "model-int.safetensors", [
                *(f"{n}.weight::{k}" for n in quantized for k in ("codes", "qspec", "shape")),
                *(f"{n}.weight_quant.step" for n in quantized),
                *(f"layers.{i}.conv.weight" for i in float_layers)])
    if continual:
        lines = []
        for dev in range(4):
            for task in range(1, 6):
                for method, base in (("qcore", 0.75), ("sgd", 0.65), ("none", 0.5)):
                    lines.append({
                        "device": dev, "task": task, "calibration": method,
                        "accuracy_task": base + float(rng.normal(0, 0.03)),
                        "accuracy_original": base + 0.1 - 0.02 * task,
                        "accuracy_core": 0.9, "flops": 1e6, "wall_s": 0.01})
        (path / "continual.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if complete or summary_extra is not None:
        coreset = cfg.get("coreset", {})
        quant = cfg.get("quant", {})
        summary = {
            "status": "complete" if complete else "running", "scenario": "synthetic",
            "final_accuracy": acc, "fp_reference_accuracy": 0.9,
            "rounds_completed": done, "rounds_planned": rounds,
            "uplink_bytes": sum(x["uplink_bytes"] for x in round_lines),
            "downlink_bytes": sum(x["downlink_bytes"] for x in round_lines),
            "wall_time_s": 10.0 + seed, "sim_time_s": 20.0 + seed,
            "device_rounds_completed": 20, "device_rounds_failed": 2,
            "device_rounds_dropped": 3, "energy_j": 90.0,
            "weight_bits": quant.get("weight-bits", 32), "act_bits": quant.get("act-bits", 32),
            "model_size_bytes": 25_000, "fp32_model_size_bytes": 200_000,
            "coreset_method": coreset.get("method", "full"),
            "coreset_fraction": coreset.get("fraction", 1.0), "strategy": "fedavg",
            "codec": "fp32", "seed": seed,
        }
        summary.update(summary_extra or {})
        (path / "summary.json").write_text(json.dumps(summary, indent=1))
    return path


def write_safetensors_header(path: Path, names: list[str]) -> None:
    """A valid ``.safetensors`` file holding one float32 zero per name (only the names matter)."""
    header = {n: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
              for i, n in enumerate(names)}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + b"\0" * (4 * len(names)))


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; raises AssertionError if not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path} has no IHDR chunk first"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def assert_readable_png(path: Path) -> None:
    """A PNG of a reasonable size: 400..4000 px each side and more than 5 KB."""
    width, height = png_size(path)
    assert 400 <= width <= 4000 and 300 <= height <= 4000, (path, width, height)
    assert path.stat().st_size > 5 * 1024, (path, path.stat().st_size)


def fake_run(scenario: str, overrides: dict[str, str], out_dir: Path) -> None:
    """A stand-in for ``simulations.run.scenario.run_scenario``: writes a synthetic run.

    Accuracy grows with ``coreset.fraction`` and is higher for method ``acs``, and the
    uplink grows with the fraction and differs by method, so the comparison figures have
    something to show (real coreset sweeps often send equal bytes: that case is tested in
    ``tests/test_figures_compare.py``). Module-level so a spawn pool can pickle it.
    """
    seed = int(overrides.get("federation.seed", "0"))
    cfg = base_config(seed)
    frac = float(overrides.get("coreset.fraction", cfg["coreset"]["fraction"]))
    method = overrides.get("coreset.method", cfg["coreset"]["method"])
    cfg["coreset"] = {"method": method, "fraction": frac}
    cfg["output"] = {"dir": str(out_dir)}
    acc = 0.6 + 0.3 * frac + (0.05 if method == "acs" else 0.0) + 0.01 * seed
    uplink = int(20_000 * (1 + frac) * (1.0 if method == "acs" else 1.1))
    write_run(out_dir, seed=seed, config=cfg, final_accuracy=acc, qgt=False, continual=False,
              uplink_per_device=uplink)


def capture_saves(monkeypatch: Any, *modules: Any) -> list[Any]:
    """Every figure the given plot modules save, in order (the PNG is still written): tests read what was drawn."""
    saved: list[Any] = []
    real_save = modules[0].save

    def capture(fig: Any, path: Path) -> Path:
        saved.append(fig)
        return real_save(fig, path)

    for module in modules:
        monkeypatch.setattr(module, "save", capture)
    return saved
