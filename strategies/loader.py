"""Resolve ``strategy.name`` (built-in or ``package.module:Class``) to a strategy.

A user's own aggregation is a plain Flower Message-API strategy class, named by
import path in the scenario
(``strategy.name = "my_strategies.clipped_mean:ClippedMean"``) and built with
``strategy.options`` as constructor keywords. Every failure is a one-line ValueError
starting with ``strategy.name:`` or ``strategy.options.<key>:``, raised before any
device starts.
"""

import importlib
import inspect
import sys
from collections.abc import Mapping
from pathlib import Path

from flwr.serverapp.strategy import Strategy

from strategies.registry import STRATEGIES, build_inner_strategy, construct_strategy


def load_strategy(name: str, options: Mapping[str, object], path: str = "") -> Strategy:
    """Build the inner strategy named by ``strategy.name`` with ``strategy.options``.

    Parameters
    ----------
    name : str
        A built-in name (a key of `strategies.registry.STRATEGIES`) or an import
        path ``package.module:ClassName`` of a `flwr.serverapp.strategy.Strategy`
        subclass.
    options : Mapping[str, object]
        Constructor keywords (kebab- or snake-case). They are checked against the
        constructor's signature before constructing; the wrapper's sampling kwargs
        (`strategies.registry.SAMPLING_KWARGS`) are passed to a user class only if
        its constructor accepts them.

    path : str
        ``strategy.path``: a folder put first on ``sys.path`` before importing ``name``'s module, so a
        strategy in a folder of the user's runs without installing it (default: "", nothing added).

    Returns
    -------
    Strategy
        The constructed strategy.

    Raises
    ------
    ValueError
        One line naming ``strategy.name`` or ``strategy.options.<key>``.
    """
    if name in STRATEGIES or ":" not in name:
        return build_inner_strategy(name, options)  # lists valid names if unknown
    if path:
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"strategy.path: '{path}' is not a folder")
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    return construct_strategy(import_strategy_class(name), options)


def import_strategy_class(path: str) -> type[Strategy]:
    """Import ``package.module:ClassName`` and check it is a Strategy subclass.

    Examples
    --------
    >>> import_strategy_class("flwr.serverapp.strategy:FedAvg").__name__
    'FedAvg'
    """
    module_name, _, attr_path = path.partition(":")
    if not module_name or not attr_path or ":" in attr_path:
        raise ValueError(
            f"strategy.name: '{path}' is not of the form 'package.module:ClassName'"
        )
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - user code may fail in any way on import
        raise ValueError(
            f"strategy.name: cannot import module '{module_name}' of '{path}': "
            f"{type(err).__name__}: {' '.join(str(err).split())} "
            "(is it installed, or is its folder strategy.path?)"
        ) from err
    for part in attr_path.split("."):  # nested classes: "module:Outer.Inner"
        if not hasattr(obj, part):
            raise ValueError(
                f"strategy.name: module '{module_name}' has no attribute '{attr_path}'"
            )
        obj = getattr(obj, part)
    if not (inspect.isclass(obj) and issubclass(obj, Strategy)):
        raise ValueError(
            f"strategy.name: '{path}' is not a subclass of "
            f"flwr.serverapp.strategy.Strategy (got {' '.join(repr(obj).split())[:80]})"
        )
    return obj
