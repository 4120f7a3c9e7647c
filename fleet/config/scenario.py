"""Scenario configuration: one typed, frozen, validated view of the run config.

A scenario is a TOML file of run-config keys in nested tables (``[federation]``,
``[data]``, ...). Flower flattens nested tables into dotted keys
(``federation.num-devices``), so parsing works on the flat form; both ``fleet run``
and ``flwr run --run-config`` feed the same parser. The dataclasses below are the
single source of truth for key names, types, defaults and allowed values; the
``[tool.flwr.app.config]`` table in ``pyproject.toml`` and ``docs/scenario-keys.md``
are checked against them by the tests.

Errors are :class:`ConfigError`, whose text is one line naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flwr.common.config import unflatten_dict

from fleet.config.schema import (
    SECTIONS,
    ConfigError,
    CoresetConfig,
    DataConfig,
    DevicesConfig,
    FaultsConfig,
    FederationConfig,
    ModelConfig,
    OutputConfig,
    PrivacyConfig,
    QuantConfig,
    RayConfig,
    StrategyConfig,
    StreamConfig,
    TrainConfig,
    check_value,
    key_of,
)

__all__ = [
    "ConfigError",
    "ScenarioConfig",
    "parse_config",
    "flatten",
    "unflatten",
    "defaults",
    "check_override",
    "parse_override",
    "load_scenario_file",
    "to_flat",
]

#: Sections whose values are open tables of ``name = value`` (flattened with a prefix).
TABLE_KEYS = ("devices.profiles", "strategy.options", "devices.custom")


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested tables into dotted keys, as Flower does with run configs. Not Flower's ``flatten_dict``:
    that one refuses arrays, which user profile tables hold (``bits = [8, 32]``)."""
    flat: dict[str, Any] = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten` (Flower's ``unflatten_dict``)."""
    return unflatten_dict(dict(flat))


@dataclass(frozen=True)
class ScenarioConfig:
    """The whole scenario, one frozen dataclass per section."""

    federation: FederationConfig
    data: DataConfig
    model: ModelConfig
    quant: QuantConfig
    coreset: CoresetConfig
    train: TrainConfig
    devices: DevicesConfig
    strategy: StrategyConfig
    ray: RayConfig
    output: OutputConfig
    faults: FaultsConfig
    stream: StreamConfig
    privacy: PrivacyConfig
    name: str = "scenario"

    def to_flat(self) -> dict[str, Any]:
        """The fully resolved config as flat run-config keys."""
        return to_flat(self)

    def __hash__(self) -> int:  # the custom-profile tables are dicts: hash the canonical flat form
        return self._hash

    @functools.cached_property
    def _hash(self) -> int:  # computed once: configs key the per-process caches on every message
        return hash((self.name, tuple(sorted((k, repr(v)) for k, v in self.to_flat().items()))))


def _table_prefix(key: str) -> str | None:
    for t in TABLE_KEYS:
        if key.startswith(t + "."):
            return t
    return None


def parse_config(flat: Mapping[str, Any], name: str = "scenario") -> ScenarioConfig:
    """Parse and validate a flat run config (missing keys take their defaults).

    Raises
    ------
    ConfigError
        For an unknown key, a wrong type or an out-of-range value.
    """
    known = {key_of(s, f.name): (s, f) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    tables: dict[str, dict[str, Any]] = {t: {} for t in TABLE_KEYS}
    for key, raw in flat.items():
        table = _table_prefix(key)
        if table is not None:
            tables[table][key[len(table) + 1 :]] = raw
            continue
        if key == "strategy.options":
            continue  # a "k=v,k=v" string or an empty placeholder: read by _options below
        if key in known:
            section, f = known[key]
            values[section][f.name] = check_value(key, raw, f)
            continue
        if key in TABLE_KEYS and raw in ("", {}):
            continue  # an empty table written as a placeholder
        section = key.split(".", 1)[0]
        hint = f"valid sections: {', '.join(SECTIONS)}" if section not in SECTIONS else (
            "valid keys: " + ", ".join(k for k in known if k.startswith(section + "."))
        )
        raise ConfigError(key, f"unknown key ({hint})")
    if tables["strategy.options"] or "strategy.options" in flat:
        values["strategy"]["options"] = _options(flat.get("strategy.options"), tables["strategy.options"])
    if tables["devices.profiles"]:
        values["devices"]["profiles"] = _profiles_mix(tables["devices.profiles"])
    if tables["devices.custom"]:
        values["devices"]["custom"] = unflatten(tables["devices.custom"])
    sections = {s: cls(**values[s]) for s, cls in SECTIONS.items()}
    cfg = ScenarioConfig(**sections, name=sections["output"].name or name)
    _check_cross(cfg)
    return cfg


def _options(raw: Any, table: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Strategy options from a table, or from ``"k=v,k=v"`` (the form ``flwr run`` can carry)."""
    opts = dict(table)
    if isinstance(raw, str) and raw.strip():
        for item in raw.split(","):
            if "=" not in item:
                raise ConfigError("strategy.options", f"expected 'key=value' pairs, got '{item.strip()}'")
            k, v = item.split("=", 1)
            opts[k.strip()] = parse_override_value(v.strip())
    return tuple(sorted(opts.items()))


def _profiles_mix(table: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    mix = []
    for name, w in table.items():
        key = f"devices.profiles.{name}"
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise ConfigError(key, f"must be a number (mix weight), got {w!r}")
        if w < 0:
            raise ConfigError(key, f"must be >= 0, got {w}")
        mix.append((name, float(w)))
    total = sum(w for _, w in mix)
    if abs(total - 1.0) > 1e-6:
        raise ConfigError("devices.profiles", f"mix weights must sum to 1, got {total:g}")
    return tuple(sorted(mix))


def _check_cross(cfg: ScenarioConfig) -> None:
    fed = cfg.federation
    if fed.devices_per_round > fed.num_devices:
        raise ConfigError(
            "federation.devices-per-round",
            f"must be <= federation.num-devices ({fed.num_devices}), got {fed.devices_per_round}",
        )
    if cfg.data.dataset == "npz" and not cfg.data.root:
        raise ConfigError("data.root",
                          "the npz dataset needs data.root (a folder of <name>_train.npz / <name>_test.npz)")
    if cfg.quant.codec == "qweights" and cfg.quant.weight_bits == 32:
        raise ConfigError("quant.codec", "'qweights' needs quant.weight-bits < 32 (the model's own bit-width)")
    if cfg.federation.engine == "local" and cfg.ray.address:
        raise ConfigError("federation.engine", "'local' runs on this machine; a Ray cluster (ray.address) needs 'ray'")
    _check_qgt_mode(cfg)
    _check_privacy(cfg)


def _check_qgt_mode(cfg: ScenarioConfig) -> None:
    """``train.qgt-mode = "ptq"`` rounds a float-trained model on each device's own grid (docs/methods.md). With
    ``train.qgt-lambda = 0`` it is allowed: plain float training + round-to-nearest, the control QGT is measured
    against."""
    if cfg.train.qgt_mode != "ptq":
        return
    if cfg.quant.weight_bits == 32:
        raise ConfigError("train.qgt-mode", "'ptq' rounds the float-trained weights to quant.weight-bits after "
                          "training: it needs quant.weight-bits < 32")
    if cfg.privacy.dp or cfg.privacy.secure_aggregation:
        what = "privacy.dp" if cfg.privacy.dp else "privacy.secure-aggregation"
        raise ConfigError("train.qgt-mode", f"'ptq' sets each device's own grid after training, but {what} "
                          "keeps the server's shared grid: use 'qat'")


def _check_privacy(cfg: ScenarioConfig) -> None:
    """What differential privacy and secure aggregation need of the rest of the scenario (docs/privacy.md)."""
    pv = cfg.privacy
    if pv.dp or pv.secure_aggregation:
        what = "privacy.dp" if pv.dp else "privacy.secure-aggregation"
        if cfg.data.public_fraction == 0:
            raise ConfigError("data.public-fraction", f"{what} needs a public split (> 0): the server calibrates "
                              "the shared quantization grid and BatchNorm statistics on it, not on device data")
        if cfg.strategy.bn_stats == "average":
            raise ConfigError("strategy.bn-stats", f"{what} sends no BatchNorm statistics (they are measured on "
                              "device data): use 'public'")
    if pv.clipping == "adaptive":
        _check_adaptive(cfg)
    if pv.secure_aggregation:
        if cfg.strategy.guard:
            raise ConfigError("strategy.guard", "the update guard screens individual updates, which secure "
                              "aggregation hides from the server: set strategy.guard = false")
        if cfg.quant.codec.startswith("delta-"):
            raise ConfigError("quant.codec", f"'{cfg.quant.codec}' scales each device's codes by its own maximum, so "
                              "codes of different devices cannot be summed: use qweights (quantized) or fp32")
        if cfg.devices.over_selection > 1.0:
            raise ConfigError("devices.over-selection", "keeping the first finishers needs individual updates, which "
                              "secure aggregation hides: use 1")


def _check_adaptive(cfg: ScenarioConfig) -> None:
    """Adaptive clipping spends part of the noise on the count of unclipped updates: it needs DP, and sigma
    must stay below 2 * clipped-count-stddev for the update's share to exist (Andrew et al. 2021, Thm. 1)."""
    from fleet.privacy.dp import count_stddev

    pv = cfg.privacy
    if not pv.dp:
        raise ConfigError("privacy.clipping", "'adaptive' learns C from noised bits: it needs privacy.dp = true")
    sigma_b = count_stddev(pv.clipped_count_stddev, cfg.federation.devices_per_round)
    if pv.noise_multiplier >= 2 * sigma_b:
        raise ConfigError("privacy.noise-multiplier", f"adaptive clipping needs sigma < 2 x clipped-count-stddev "
                          f"({2 * sigma_b:g}), got {pv.noise_multiplier:g}: raise privacy.clipped-count-stddev")


def defaults() -> ScenarioConfig:
    """The default scenario (every key at its default)."""
    return parse_config({})


def to_flat(cfg: ScenarioConfig) -> dict[str, Any]:
    """Flat run-config keys of a parsed config (tables expanded with their prefix)."""
    flat: dict[str, Any] = {}
    for s in SECTIONS:
        obj = getattr(cfg, s)
        for f in dataclasses.fields(obj):
            key = key_of(s, f.name)
            v = getattr(obj, f.name)
            if key == "strategy.options":
                flat.update({f"{key}.{k}": val for k, val in v})
            elif key == "devices.profiles":
                flat.update({f"{key}.{k}": val for k, val in v})
            elif key == "devices.custom":
                flat.update(flatten(v, key + "."))
            else:
                flat[key] = v
    return flat


def parse_override_value(text: str) -> Any:
    """Read ``--set`` text as a TOML value (``3``, ``0.5``, ``true``, ``"x"``), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE`` (from ``--set``) and parse the value."""
    if "=" not in item:
        raise ConfigError(item, "expected KEY=VALUE")
    key, text = item.split("=", 1)
    return key.strip(), parse_override_value(text.strip())


def check_override(key: str, text: str, context: Mapping[str, str] | None = None) -> None:
    """Validate one override (sweeps, before anything runs), beside the ``context`` overrides given with it:
    a value that is only valid together with another (``data.dataset = "npz"`` needs ``data.root``) passes
    when the other is in the context."""
    value = parse_override_value(text)
    if key.startswith("devices.profiles."):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(key, f"must be a number >= 0 (mix weight), got {value!r}")
        return
    flat = {k: parse_override_value(v) for k, v in (context or {}).items() if not k.startswith("devices.profiles.")}
    parse_config({**flat, key: value})


def load_scenario_file(path: str) -> dict[str, Any]:
    """Read a scenario TOML file into flat keys; errors name the file."""
    try:
        with open(path, "rb") as fh:
            return flatten(tomllib.load(fh))
    except FileNotFoundError:
        raise ConfigError(path, "scenario file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, f"not valid TOML ({exc})") from None

