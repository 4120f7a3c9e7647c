"""Which layers see a non-negative input: the activation range read off the model's structure.

An activation quantizer in front of a layer whose input is the output of ReLU or ReLU6
needs only the unsigned range ``[0, 2^b - 1]``; a signed range ``[-2^(b-1), 2^(b-1) - 1]``
would leave its lower half unused (at 2 bits only the codes {0, 1}: binary activations).
The answer comes from the graph (``torch.fx``), never from a batch: a layer is fed by
ReLU when walking back from its input through operations that keep a non-negative
tensor non-negative (pooling, flatten, reshape, dropout, identity) reaches a ReLU/ReLU6.

Examples
--------
>>> from fleet.model.architectures import build_model
>>> sorted(relu_fed_layers(build_model("cnn", (1, 8, 8), 10)))
['classifier', 'conv2', 'conv3']
>>> resolve_act_signed("auto", "conv1", {"conv2"}), resolve_act_signed("auto", "conv2", {"conv2"})
(True, False)
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

__all__ = ["ACT_SIGNED_CHOICES", "relu_fed_layers", "resolve_act_signed"]

ACT_SIGNED_CHOICES = ("auto", True, False)

_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6}
_RELU_METHODS = {"relu", "relu_"}
# Operations whose output is non-negative wherever their (first) input is.
_KEEP_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.Flatten, nn.Dropout, nn.Identity)
_KEEP_FUNCTIONS = {torch.flatten, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
                   F.dropout, torch.mean, operator.getitem}
_KEEP_METHODS = {"view", "reshape", "flatten", "contiguous", "mean", "squeeze", "unsqueeze", "permute"}


def _matches(node: torch.fx.Node, modules: dict[str, nn.Module], kinds: tuple[type, ...], functions: set,
             methods: set[str]) -> bool:
    """Whether ``node`` calls a module of ``kinds``, one of ``functions`` or one of ``methods``."""
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), kinds)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


def _fed_by_relu(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s value is a ReLU output, possibly through sign-keeping operations."""
    while True:
        if _matches(node, modules, _RELU_MODULES, _RELU_FUNCTIONS, _RELU_METHODS):
            return True
        keeps = _matches(node, modules, _KEEP_MODULES, _KEEP_FUNCTIONS, _KEEP_METHODS)
        if not keeps or not node.args or not isinstance(node.args[0], torch.fx.Node):
            return False
        node = node.args[0]


def relu_fed_layers(model: nn.Module, layer_types: Iterable[type] = (nn.Conv2d, nn.Linear)) -> set[str]:
    """Names of the Conv2d/Linear modules of ``model`` whose every call takes a ReLU/ReLU6 output.

    A model ``torch.fx`` cannot trace gives the empty set (every range stays signed), with a warning.
    """
    types = tuple(layer_types)
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any untraceable model falls back to the safe range
        log.warning("quant.act-signed = auto: %s cannot be traced (%s); all activation ranges signed",
                    type(model).__name__, exc)
        return set()
    modules = dict(model.named_modules())
    verdict: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), types):
            continue
        src = node.args[0] if node.args else None
        fed = isinstance(src, torch.fx.Node) and _fed_by_relu(src, modules)
        name = str(node.target)
        verdict[name] = verdict.get(name, True) and fed
    return {name for name, fed in verdict.items() if fed}


def resolve_act_signed(setting: bool | str, layer: str, relu_fed: set[str]) -> bool:
    """The signedness of ``layer``'s activation quantizer under ``quant.act-signed``."""
    if setting == "auto":
        return layer not in relu_fed
    return bool(setting)
