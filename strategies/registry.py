"""Built-in inner strategies by name, and building any strategy class from options.

The fleet wrapper (`strategies.wrapper.FleetStrategy`) owns sampling, deadlines, decoding
and the guard; it hands decoded float updates to an *inner* Flower Message-API
strategy. This module maps ``strategy.name`` to Flower's own classes (reused, never
rewritten) and builds them from ``strategy.options`` with one-line errors that name
the offending config key.

Sampling is the wrapper's job, so every built-in is constructed with
`SAMPLING_KWARGS`: the inner strategy then samples a single node in
``configure_train`` (whose message the wrapper reads only for its config entries)
and never configures federated evaluation.
"""

import inspect
from collections.abc import Mapping
from typing import Any

from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from fleet.errors import one_line
from strategies.bitaware import BitAwareFedAvg

# Fixed by the wrapper: the inner strategy must not sample on its own.
SAMPLING_KWARGS: dict[str, float | int] = {
    "fraction_train": 1e-9,
    "min_train_nodes": 1,
    "min_available_nodes": 1,
    "fraction_evaluate": 0.0,
}

# Constructor arguments a scenario may not set: the sampling kwargs above, the keys
# of the decoded-reply contract (the wrapper always writes "arrays", "config" and the
# weight under "num-examples") and callables, which TOML cannot express anyway.
RESERVED_KWARGS: frozenset[str] = frozenset(
    {
        *SAMPLING_KWARGS,
        "min_evaluate_nodes",
        "weighted_by_key",
        "arrayrecord_key",
        "configrecord_key",
        "train_metrics_aggr_fn",
        "evaluate_metrics_aggr_fn",
    }
)

#: Built-ins that need each device's update, not only their sum (refused under secure aggregation).
NEEDS_INDIVIDUAL_UPDATES = frozenset({"median", "trimmed-mean", "krum", "bit-aware"})

STRATEGIES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedavgm": FedAvgM,
    "median": FedMedian,
    "trimmed-mean": FedTrimmedAvg,
    "krum": Krum,
    "bit-aware": BitAwareFedAvg,
}

# Plain annotations we can check a TOML value against before constructing.
_SIMPLE_TYPES: tuple[type, ...] = (bool, int, float, str)


def build_inner_strategy(name: str, options: Mapping[str, object]) -> Strategy:
    """Build the built-in inner strategy ``name`` with ``options``.

    Parameters
    ----------
    name : str
        A key of `STRATEGIES` (``strategy.name``).
    options : Mapping[str, object]
        Constructor keyword arguments (``strategy.options``); kebab-case keys are
        accepted and converted to snake_case.

    Returns
    -------
    Strategy
        The constructed strategy, with `SAMPLING_KWARGS` always applied.

    Raises
    ------
    ValueError
        One line naming ``strategy.name`` or ``strategy.options.<key>``.
    """
    if name not in STRATEGIES:
        raise ValueError(
            f"strategy.name: unknown strategy '{name}'; valid names: "
            f"{', '.join(sorted(STRATEGIES))} "
            "(or an import path 'package.module:Class')"
        )
    return construct_strategy(STRATEGIES[name], options)


def construct_strategy(cls: type[Strategy], options: Mapping[str, object]) -> Strategy:
    """Check ``options`` against the constructor of ``cls``, then construct it.

    The check runs before construction (via `inspect.signature`, following
    ``**kwargs`` up the MRO), so a typo fails without side effects; errors the
    constructor raises itself are caught and re-raised as one-line ValueErrors.
    `SAMPLING_KWARGS` are passed only where the constructor accepts them.

    Parameters
    ----------
    cls : type[Strategy]
        The strategy class.
    options : Mapping[str, object]
        Constructor keyword arguments, kebab- or snake-case.

    Returns
    -------
    Strategy
        The constructed strategy.
    """
    kwargs = normalize_options(options)
    option_keys = list(kwargs)
    accepted = accepted_parameters(cls)
    settable = None if accepted is None else sorted(set(accepted) - RESERVED_KWARGS)
    for key, value in kwargs.items():
        if key in RESERVED_KWARGS:
            raise ValueError(
                f"strategy.options.{key}: set by the fleet wrapper, not configurable"
            )
        if settable is not None and key not in settable:
            raise ValueError(
                f"strategy.options.{key}: not accepted by {cls.__name__}; accepted "
                f"options: {', '.join(settable) if settable else '(none)'}"
            )
        if accepted is not None:
            _check_type(key, value, accepted[key].annotation)
    for key, value in SAMPLING_KWARGS.items():
        if accepted is None or key in accepted:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except Exception as err:  # noqa: BLE001 - any constructor failure is a config error
        raise ValueError(
            f"{_blame(err, option_keys)} {cls.__name__} rejected "
            f"the options: {one_line(err)}"
        ) from err


def normalize_options(options: Mapping[str, object]) -> dict[str, Any]:
    """Return ``options`` with kebab-case keys converted to snake_case.

    Examples
    --------
    >>> normalize_options({"server-momentum": 0.9, "eta": 0.1})
    {'server_momentum': 0.9, 'eta': 0.1}
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        norm = str(key).replace("-", "_")
        if norm in out:
            raise ValueError(f"strategy.options.{norm}: given twice ('{key}')")
        out[norm] = value
    return out


def accepted_parameters(cls: type) -> dict[str, inspect.Parameter] | None:
    """Keyword parameters ``cls(...)`` accepts, or None if it accepts any keyword.

    A constructor with ``**kwargs`` is assumed to forward them to the next
    ``__init__`` in the MRO (the usual ``super().__init__(**kwargs)`` pattern), so
    that constructor's parameters are added too.
    """
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return None  # **kwargs forwarded all the way: cannot tell
        open_kwargs = False
        for pname, param in inspect.signature(init).parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                open_kwargs = True
            elif pname != "self" and param.kind is not inspect.Parameter.VAR_POSITIONAL:
                params.setdefault(pname, param)
        if not open_kwargs:
            return params
    return None


def _check_type(key: str, value: object, annotation: object) -> None:
    """Reject a TOML value whose type clearly mismatches a plain annotation."""
    if annotation not in _SIMPLE_TYPES:
        return  # unions, strings, callables: leave it to the constructor
    ok = isinstance(value, annotation)
    if annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        name = annotation.__name__
        raise ValueError(
            f"strategy.options.{key}: expected {name}, got "
            f"{type(value).__name__} {value!r}"
        )


def _blame(err: Exception, keys: list[str]) -> str:
    """Prefix naming the option an error is about, best effort."""
    text = str(err)
    mentioned = [k for k in keys if k in text]
    if mentioned:
        return f"strategy.options.{mentioned[0]}:"
    if len(keys) == 1:
        return f"strategy.options.{keys[0]}:"
    return "strategy.name:"
