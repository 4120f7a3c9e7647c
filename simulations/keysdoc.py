"""Render the scenario key reference (docs/scenario-keys.md) from the schema, the single source of truth."""

from __future__ import annotations

import dataclasses

from fleet.config.schema import SECTIONS, key_of

__all__ = ["render"]


def _default(v: object) -> str:
    if isinstance(v, tuple):
        return ", ".join(f"{k} = {w}" for k, w in v) or "(empty)"
    if isinstance(v, dict):
        return "(none)"
    if isinstance(v, str):
        return f'"{v}"'
    return str(v).lower() if isinstance(v, bool) else str(v)


def _range(m: dict) -> str:
    parts = []
    if m.get("choices"):
        parts.append(" \\| ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in m["choices"]))
    for k, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if m.get(k) is not None:
            parts.append(f"{sym} {m[k]:g}")
    return "; ".join(parts)


def render() -> str:
    lines = ["# Scenario keys", "",
             "Every key a scenario may set, generated from `fleet/config/schema.py` (`fleet keys` prints it).",
             "Unknown keys, wrong types and out-of-range values stop the run before Ray starts, with one line",
             "naming the key and exit code 2. Tables (`devices.profiles`, `devices.custom`, `strategy.options`)",
             "take `name = value` entries.", ""]
    for section, cls in SECTIONS.items():
        lines += [f"## [{section}]", "", "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            else:
                assert f.default_factory is not dataclasses.MISSING  # every schema field has a default or a factory
                default = f.default_factory()
            lines.append(f"| `{key_of(section, f.name)}` | `{_default(default)}` | {_range(dict(f.metadata))} "
                         f"| {f.metadata['help']} |")
        lines.append("")
    return "\n".join(lines)
