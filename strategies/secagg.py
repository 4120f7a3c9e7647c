"""Secure aggregation, the server's side: one adapter between the Message API and Flower's SecAgg+ workflow.

Flower's ``SecAggPlusWorkflow`` drives only the legacy strategy API (``configure_fit`` / ``aggregate_fit``
inside a ``LegacyContext``). :class:`SecureGrid` keeps that behind a ``Grid``: when the fleet strategy sends
a round's training messages, it runs the four SecAgg+ stages over the real grid for exactly those devices,
with the fleet's own instructions in the stage that trains, and answers with one reply per device (its
report, no update) plus, on the first reply, the **sum** of the updates (as their mean and count). Nothing
else in the project sees the legacy API, and the server never holds a single device's update.

SecAgg+ runs with weight 1 per device, the clipping range ``2^21`` and the quantization range ``2^22``
(``fleet.privacy.secagg``): the integer vectors are summed exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fleet import protocol as P
from fleet.arrays import record_from_numpy, record_to_numpy
from fleet.config.scenario import ScenarioConfig
from fleet.privacy import secagg
from strategies.grids import WrappedGrid

__all__ = ["SecureGrid", "SECURE_SUM", "SECURE_COUNT", "check_secure_strategy", "secure_mean", "decode_mean"]

SECURE_SUM = "secure-mean"  # reply record: the mean of the devices' integer vectors (float64), sorted keys
SECURE_COUNT = "secure-count"  # how many devices' vectors the mean is over


@dataclass
class _Proxy:
    """What SecAgg+ needs of a client proxy: its node id."""

    node_id: int


class _RoundStrategy:
    """The legacy strategy of one secure round: the fleet already chose the devices; this only hands them
    to the workflow and keeps what it aggregates."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes
        self.results: list[tuple[Any, Any]] = []

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[Any, Any]]:
        from flwr.common import FitIns, Parameters

        return [(_Proxy(n), FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), {})) for n in self.nodes]

    def aggregate_fit(self, server_round: int, results: list[tuple[Any, Any]], failures: list[Any]) -> tuple[
            None, dict[str, Any]]:
        self.results = list(results)
        return None, {}


class _Clients:
    def __init__(self, n: int) -> None:
        self.n = n

    def num_available(self) -> int:
        return self.n


def _workflow(cfg: ScenarioConfig, contents: dict[int, RecordDict], timeout: float | None) -> Any:
    """Flower's SecAggPlusWorkflow, told to put the fleet's own instruction into the stage that trains."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class _FleetSecAgg(SecAggPlusWorkflow):
        def collect_masked_vectors_stage(self, grid: Grid, context: Any, state: Any) -> bool:
            for nid, content in contents.items():
                if nid in state.nid_to_fitins:
                    for key, rec in content.items():
                        state.nid_to_fitins[nid][key] = rec
            return bool(super().collect_masked_vectors_stage(grid, context, state))

    pv = cfg.privacy
    return _FleetSecAgg(pv.secagg_shares, pv.secagg_threshold, max_weight=1.0, clipping_range=float(secagg.CLIP_RANGE),
                        quantization_range=secagg.TARGET_RANGE, modulus_range=secagg.MODULUS_RANGE, timeout=timeout)


class SecureGrid(WrappedGrid):
    """``grid`` with every round of training messages run as one SecAgg+ round (module docstring)."""

    def __init__(self, grid: Grid, cfg: ScenarioConfig) -> None:
        super().__init__(grid)
        self.cfg = cfg
        self.uplink: dict[int, int] = {}  # bytes each node sent in the last secure round, all stages

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        msgs = list(messages)
        if not msgs or any(m.metadata.message_type != MessageType.TRAIN for m in msgs):
            return list(self.grid.send_and_receive(msgs, timeout=timeout))
        return self._secure_round(msgs, timeout)

    def _secure_round(self, msgs: list[Message], timeout: float | None) -> list[Message]:
        from flwr.server import ServerConfig
        from flwr.server.compat.legacy_context import LegacyContext
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WorkflowKey

        by_node = {m.metadata.dst_node_id: m for m in msgs}
        if len(by_node) < 2:
            return [_error(m, "secure aggregation needs at least 2 devices in a round") for m in msgs]
        if len(by_node) > secagg.MAX_DEVICES:
            raise RuntimeError(f"secure aggregation sums at most {secagg.MAX_DEVICES} devices per round exactly, "
                               f"got {len(by_node)}")
        rnd = int(P.scalar(P.record(msgs[0].content, P.CONFIG, ConfigRecord)["server-round"]))
        strategy = _RoundStrategy(sorted(by_node))
        state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: rnd}),
                            MAIN_PARAMS_RECORD: ArrayRecord()})
        context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
                                config=ServerConfig(num_rounds=1), strategy=strategy,  # type: ignore[arg-type]
                                client_manager=_Clients(len(by_node)))  # type: ignore[arg-type]
        counter = _CountingGrid(self.grid)
        try:
            _workflow(self.cfg, {n: m.content for n, m in by_node.items()}, timeout)(counter, context)
        except ZeroDivisionError:  # no device trained: the workflow's mean has a zero total weight
            strategy.results = []
        self.uplink = counter.sent
        return self._replies(by_node, strategy.results)

    def _replies(self, by_node: dict[int, Message], results: list[tuple[Any, Any]]) -> list[Message]:
        """One reply per device that took part (its report), the sum on the first; an error for the rest."""
        from flwr.common import parameters_to_ndarrays

        replies: list[Message] = []
        count = sum(int(res.num_examples) for _, res in results)
        for proxy, res in sorted(results, key=lambda r: r[0].node_id):
            rep = secagg.report_from_fitres(res.metrics)
            rep.uplink_bytes = self.uplink.get(proxy.node_id, 0)
            nums, strs = rep.to_records()
            content = RecordDict({P.ARRAYS: ArrayRecord(), P.METRICS: nums, P.REPORT: strs})
            if not replies and count > 0:
                keys = sorted(record_to_numpy(P.record(by_node[proxy.node_id].content, P.ARRAYS, ArrayRecord)))
                mean = parameters_to_ndarrays(res.parameters)
                keys += [secagg.UNCLIPPED_KEY] * (len(mean) - len(keys))  # adaptive clipping's bit rides last
                content[SECURE_SUM] = record_from_numpy(dict(zip(keys, mean, strict=True)))
                content[SECURE_COUNT] = ConfigRecord({"count": count})
            replies.append(Message(content, reply_to=by_node[proxy.node_id]))
        answered = {p.node_id for p, _ in results}
        replies += [_error(m, "dropped out of secure aggregation") for n, m in by_node.items() if n not in answered]
        return replies


class _CountingGrid(WrappedGrid):
    """Passes messages through and counts the bytes each node sends (SecAgg+'s int64 vectors included)."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.sent: dict[int, int] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        for r in replies:
            if not r.has_error():
                n = r.metadata.src_node_id
                self.sent[n] = self.sent.get(n, 0) + sum(_nbytes(rec) for rec in r.content.values())
        return replies


def _nbytes(rec: Any) -> int:
    """Bytes of a record's values (Flower's ``count_bytes`` refuses the lists SecAgg+ sends)."""
    if isinstance(rec, ArrayRecord):
        return int(rec.count_bytes())
    total = len(rec)  # a byte per key, roughly its tag
    for value in rec.values():
        items = value if isinstance(value, list) else [value]
        total += sum(len(v) if isinstance(v, (bytes, str)) else 8 for v in items)
    return total


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=0, reason=reason), reply_to=msg)


def check_secure_strategy(cfg: ScenarioConfig) -> None:
    """Refuse, in one line, a strategy that needs individual updates under secure aggregation."""
    from fleet.config.schema import ConfigError
    from strategies.registry import NEEDS_INDIVIDUAL_UPDATES

    if cfg.privacy.secure_aggregation and cfg.strategy.name in NEEDS_INDIVIDUAL_UPDATES:
        raise ConfigError("strategy.name", f"'{cfg.strategy.name}' compares individual updates, which secure "
                          "aggregation hides from the server (it sees only their sum): use fedavg, fedprox, "
                          "fedadam, fedyogi or fedavgm")


def secure_mean(content: RecordDict) -> tuple[dict[str, np.ndarray], int] | None:
    """The (mean integer vector, count) a secure round's first reply carries, or None."""
    if SECURE_SUM not in content:
        return None
    count = int(P.scalar(P.record(content, SECURE_COUNT, ConfigRecord)["count"]))
    return record_to_numpy(P.record(content, SECURE_SUM, ArrayRecord)), count


def unclipped_sum(ok: Mapping[int, P.DeviceReport], secure: tuple[dict[str, np.ndarray], int] | None) -> float:
    """Adaptive clipping: the sum of the devices' noised unclipped bits, from their reports or, under secure
    aggregation, from the secure sum (0 when no device sent one)."""
    if secure is not None:
        mean, count = secure
        return secagg.fixed_point_value(mean[secagg.UNCLIPPED_KEY]) * count if secagg.UNCLIPPED_KEY in mean else 0.0
    return float(sum(r.extra.get(P.UNCLIPPED, 0.0) for r in ok.values()))


def decode_mean(mean: dict[str, np.ndarray], base: dict[str, np.ndarray], cfg: ScenarioConfig,
                qinfo: Any) -> dict[str, np.ndarray]:
    """The float model the devices' mean integer vector stands for (``fleet.privacy.secagg.from_integers``)."""
    return secagg.from_integers([mean[k] for k in sorted(base)], base,
                                qinfo if cfg.quant.codec == "qweights" else None)
