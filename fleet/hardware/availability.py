"""Device availability on the virtual clock: who is online each round, who drops out.

Three per-device models, all reproducible from ``(seed, round, device)``:

- ``always``: online every round.
- ``bernoulli``: online independently each round with probability ``p_online``.
- ``markov``: a two-state on/off chain advanced once per round (FedScale and FLSim
  drive availability from traces; a Markov chain is the trace-free stand-in). The
  chain starts from its stationary distribution, so the online rate does not drift
  over the first rounds.

Every round draws one uniform per device from a generator seeded by
``(seed, round)``, so the answer for round ``r`` does not depend on which rounds
were asked before; the Markov state of round ``r`` is obtained by stepping from
round 0 and cached, and the cache is what ``state_dict`` checkpoints.

Examples
--------
>>> model = AvailabilityModel([AvailabilitySpec("bernoulli", p_online=0.5)] * 4, seed=0)
>>> model.online(3).shape
(4,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["AVAILABILITY_KINDS", "AvailabilitySpec", "AvailabilityModel", "availability_from_dict"]

AVAILABILITY_KINDS = ("always", "bernoulli", "markov")
_ONLINE_STREAM = 0  # seed-sequence tags keep the two random streams independent
_DROPOUT_STREAM = 1


def _probability_error(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {type(value).__name__} {value!r}"
    if not 0.0 <= float(value) <= 1.0:
        return f"must be in [0, 1], got {value}"
    return None


@dataclass(frozen=True)
class AvailabilitySpec:
    """How one device class comes and goes.

    Parameters
    ----------
    kind : str
        ``"always"``, ``"bernoulli"`` or ``"markov"`` (default: "always").
    p_online : float
        Per-round online probability for ``bernoulli`` (default: 1.0).
    p_on_to_off : float
        Markov: probability that an online device is offline next round (default: 0.0).
    p_off_to_on : float
        Markov: probability that an offline device is online next round (default: 1.0).
    p_dropout : float
        Probability that a device which started a round goes offline before
        finishing it, every kind (default: 0.01).
    """

    kind: str = "always"
    p_online: float = 1.0
    p_on_to_off: float = 0.0
    p_off_to_on: float = 1.0
    p_dropout: float = 0.01

    def __post_init__(self) -> None:
        error = _spec_error(self)
        if error is not None:
            raise ValueError(f"availability.{error[0]}: {error[1]}")

    def stationary_online(self) -> float:
        """Long-run fraction of rounds online."""
        if self.kind == "always":
            return 1.0
        if self.kind == "bernoulli":
            return self.p_online
        return self.p_off_to_on / (self.p_on_to_off + self.p_off_to_on)


def _spec_error(spec: AvailabilitySpec) -> tuple[str, str] | None:
    """First invalid field of ``spec`` as ``(field, reason)``, or None."""
    if spec.kind not in AVAILABILITY_KINDS:
        return "kind", f"unknown kind {spec.kind!r}; valid: {', '.join(AVAILABILITY_KINDS)}"
    for name in ("p_online", "p_on_to_off", "p_off_to_on", "p_dropout"):
        reason = _probability_error(getattr(spec, name))
        if reason is not None:
            return name, reason
    if spec.kind == "markov" and spec.p_on_to_off + spec.p_off_to_on <= 0:
        # Both zero freezes the chain and leaves no stationary distribution.
        return "p_off_to_on", "p_on_to_off + p_off_to_on must be > 0 for markov"
    return None


def availability_from_dict(d: dict[str, Any], key_prefix: str) -> AvailabilitySpec:
    """Build a spec from a TOML table; errors name the full key, e.g. ``<prefix>.kind``.

    Parameters
    ----------
    d : dict
        Table with any of the ``AvailabilitySpec`` fields.
    key_prefix : str
        Dotted key of the table itself, e.g. ``"devices.custom.myboard.availability"``.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{key_prefix}: must be a table, got {type(d).__name__}")
    fields = AvailabilitySpec.__dataclass_fields__
    for key in d:
        if key not in fields:
            raise ValueError(f"{key_prefix}.{key}: unknown field; valid: {', '.join(fields)}")
    if "kind" in d and not isinstance(d["kind"], str):
        raise ValueError(f"{key_prefix}.kind: must be a string, got {type(d['kind']).__name__}")
    for name in ("p_online", "p_on_to_off", "p_off_to_on", "p_dropout"):
        if name in d:
            reason = _probability_error(d[name])
            if reason is not None:
                raise ValueError(f"{key_prefix}.{name}: {reason}")
    try:
        return AvailabilitySpec(**d)
    except ValueError as exc:
        # "availability.<field>: reason" -> "<key_prefix>.<field>: reason"
        raise ValueError(f"{key_prefix}{str(exc).removeprefix('availability')}") from None


class AvailabilityModel:
    """Online/dropout draws for a whole fleet.

    Parameters
    ----------
    specs : list of AvailabilitySpec
        One spec per device, indexed by device id.
    seed : int
        Run seed; every draw is a function of ``(seed, round[, device])``.
    """

    def __init__(self, specs: list[AvailabilitySpec], seed: int) -> None:
        if seed < 0:
            raise ValueError(f"seed: must be >= 0, got {seed}")
        self.seed = int(seed)
        self.num_devices = len(specs)
        kinds = np.array([s.kind for s in specs], dtype=object)
        self._always = kinds == "always"  # (D,)
        self._bernoulli = kinds == "bernoulli"
        self._markov = kinds == "markov"
        self._p_online = np.array([s.p_online for s in specs], dtype=np.float64)
        self._p_on_off = np.array([s.p_on_to_off for s in specs], dtype=np.float64)
        self._p_off_on = np.array([s.p_off_to_on for s in specs], dtype=np.float64)
        self._p_dropout = np.array([s.p_dropout for s in specs], dtype=np.float64)
        stationary = np.ones(self.num_devices)
        with np.errstate(invalid="ignore", divide="ignore"):
            chain = self._p_off_on / (self._p_on_off + self._p_off_on)
        stationary[self._markov] = chain[self._markov]
        self._stationary = stationary  # (D,)
        self._cached_round = -1
        self._cached_state = np.zeros(self.num_devices, dtype=bool)

    def _uniforms(self, round_: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, round_, _ONLINE_STREAM])
        return rng.random(self.num_devices)  # (D,)

    def _markov_state(self, round_: int) -> np.ndarray:
        """Chain state at ``round_``, stepping forward from the cache (or round 0)."""
        if round_ < self._cached_round or self._cached_round < 0:
            self._cached_state = self._uniforms(0) < self._stationary
            self._cached_round = 0
        state = self._cached_state
        for r in range(self._cached_round + 1, round_ + 1):
            u = self._uniforms(r)
            state = np.where(state, u >= self._p_on_off, u < self._p_off_on)
        self._cached_state, self._cached_round = state, round_
        return state

    def online(self, round: int) -> np.ndarray:  # noqa: A002 - name fixed by the API
        """Boolean mask (D,) of devices online at ``round`` (rounds start at 0)."""
        if round < 0:
            raise ValueError(f"round: must be >= 0, got {round}")
        result = self._always.copy()
        if self._bernoulli.any():
            bern = self._uniforms(round) < self._p_online
            result |= self._bernoulli & bern
        if self._markov.any():
            result |= self._markov & self._markov_state(round)
        return result

    def dropped(self, round: int, device: int) -> bool:  # noqa: A002
        """Whether ``device`` goes offline during ``round`` after starting it."""
        if round < 0 or not 0 <= device < self.num_devices:
            raise ValueError(f"round/device out of range: round={round}, device={device}")
        rng = np.random.default_rng([self.seed, round, device, _DROPOUT_STREAM])
        return bool(rng.random() < self._p_dropout[device])

    def state_dict(self) -> dict[str, Any]:
        """Checkpointable state: plain ints and a bool array (the Markov cache)."""
        return {
            "seed": self.seed,
            "num_devices": self.num_devices,
            "round": self._cached_round,
            "state": self._cached_state.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output; seed and fleet size must match."""
        if int(state["seed"]) != self.seed or int(state["num_devices"]) != self.num_devices:
            raise ValueError(
                f"availability checkpoint is for seed={state['seed']}, "
                f"num_devices={state['num_devices']}; this model has seed={self.seed}, "
                f"num_devices={self.num_devices}"
            )
        chain = np.asarray(state["state"], dtype=bool)
        if chain.shape != (self.num_devices,):
            raise ValueError(f"availability state: expected shape ({self.num_devices},), got {chain.shape}")
        self._cached_round = int(state["round"])
        self._cached_state = chain.copy()
