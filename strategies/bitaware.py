"""Bit-width-aware FedAvg for fleets whose devices train at different precisions."""

import copy
from collections.abc import Iterable, Sequence
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

# MetricRecord key of the bit-width a device trained and encoded at (32 = float):
# `fleet.protocol.DeviceReport.bits` on the wire, kept by the wrapper's decoded replies.
BITS_KEY = "bits"

BIT_MODES: tuple[str, ...] = ("weight", "group")


def bit_weights(
    num_examples: Sequence[float], bits: Sequence[int], mode: str = "weight"
) -> list[float]:
    """Per-reply aggregation weights (unnormalized) for devices at mixed bit-widths.

    With ``w(b) = b / max_b`` (``max_b`` the widest bit-width in the round):

    - ``"weight"``: reply *i* weighs ``n_i * w(b_i)``.
    - ``"group"``: replies are averaged within their bit-width group by ``n_i``,
      then group means are combined with weights ``w(b_g)``; reply *i* in group *g*
      therefore weighs ``(n_i / N_g) * w(b_g)`` with ``N_g`` the group's examples.

    Parameters
    ----------
    num_examples : Sequence[float]
        Weight of each reply before bit-awareness (``num-examples``).
    bits : Sequence[int]
        Bit-width of each reply.
    mode : str (default: "weight")
        ``"weight"`` or ``"group"``.

    Returns
    -------
    list[float]
        One non-negative weight per reply; the caller normalizes.

    Examples
    --------
    >>> bit_weights([10, 10, 20], [2, 4, 8], "weight")
    [2.5, 5.0, 20.0]
    >>> bit_weights([10, 30, 10], [2, 2, 8], "group")
    [0.0625, 0.1875, 1.0]
    """
    if mode not in BIT_MODES:
        raise ValueError(f"unknown bit-aware mode '{mode}'; valid modes: {BIT_MODES}")
    if len(num_examples) != len(bits):
        raise ValueError("num_examples and bits must have the same length")
    if any(b <= 0 for b in bits):
        raise ValueError(f"bit-widths must be positive, got {list(bits)}")
    max_b = max(bits)
    if mode == "weight":
        return [n * b / max_b for n, b in zip(num_examples, bits, strict=True)]
    group_total: dict[int, float] = {}
    for n, b in zip(num_examples, bits, strict=True):
        group_total[b] = group_total.get(b, 0.0) + n
    # An empty group (all its devices report 0 examples) contributes nothing.
    return [
        (n / group_total[b]) * (b / max_b) if group_total[b] > 0 else 0.0
        for n, b in zip(num_examples, bits, strict=True)
    ]


class BitAwareFedAvg(FedAvg):
    """FedAvg that trusts low-bit updates less than high-bit ones.

    A 2-bit device's decoded update carries more quantization noise than an 8-bit
    device's, so it gets a smaller say. The bit-width is read from each reply's
    MetricRecord under ``"bits"`` (32 for float devices) and the reply weight
    (``num-examples``) is rescaled by `bit_weights`; the weighted mean itself, reply
    validation, logging and metric aggregation are FedAvg's (the aggregated
    metrics are weighted by the same rescaled weights).

    Modes, with ``w(b) = b / max_b`` over the round's replies (only ratios matter,
    since weights are normalized):

    - ``"weight"``: reply weight ``num-examples * w(bits)``.
    - ``"group"``: average within each bit-width group by ``num-examples``, then
      combine the group means with weights ``w(b_g)``. A group's size does not buy
      it extra say, so a handful of 8-bit devices is not drowned by many 2-bit ones.
      (Combining group means by their total examples, the obvious alternative, is
      algebraically identical to plain FedAvg and ignores bits entirely.)

    Parameters
    ----------
    mode : str (default: "weight")
        ``"weight"`` or ``"group"``.
    **kwargs : Any
        Passed to `flwr.serverapp.strategy.FedAvg`.
    """

    def __init__(self, *, mode: str = "weight", **kwargs: Any) -> None:
        if mode not in BIT_MODES:
            raise ValueError(f"mode must be one of {BIT_MODES}, got '{mode}'")
        super().__init__(**kwargs)
        self.mode = mode

    def summary(self) -> None:
        """Log summary configuration of the strategy."""
        log(INFO, "\t├──> BitAwareFedAvg settings:")
        log(INFO, "\t│\t└── Mode: %s (w(b) = b / max_b)", self.mode)
        super().summary()

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Rescale each reply's weight by its bit-width, then aggregate as FedAvg."""
        replies = list(replies)
        ok = [msg for msg in replies if not msg.has_error()]
        errors = [msg for msg in replies if msg.has_error()]
        if not ok:
            return super().aggregate_train(server_round, replies)
        metrics = [_metric_record(msg) for msg in ok]
        weights = bit_weights(
            [_scalar(rec, self.weighted_by_key) for rec in metrics],
            [int(_scalar(rec, BITS_KEY)) for rec in metrics],
            self.mode,
        )
        if sum(weights) <= 0:
            raise AggregationError(reason="all bit-aware reply weights are zero")
        reweighted = [
            _with_weight(msg, self.weighted_by_key, w)
            for msg, w in zip(ok, weights, strict=True)
        ]
        return super().aggregate_train(server_round, reweighted + errors)


def _metric_record(msg: Message) -> MetricRecord:
    """The reply's only MetricRecord (FedAvg's validation enforces exactly one)."""
    records = list(msg.content.metric_records.values())
    if len(records) != 1:
        raise AggregationError(reason="expected exactly one MetricRecord per reply")
    return records[0]


def _scalar(record: MetricRecord, key: str) -> float:
    """A scalar metric, or an AggregationError naming the missing key."""
    value = record.get(key)
    if not isinstance(value, int | float):
        raise AggregationError(
            reason=f"BitAwareFedAvg needs a scalar '{key}' in every reply's metrics"
        )
    return float(value)


def _with_weight(msg: Message, key: str, weight: float) -> Message:
    """A copy of ``msg`` whose metric ``key`` is ``weight``; arrays are shared.

    Copied rather than edited in place so the caller's replies (which the wrapper
    may still log) keep their original ``num-examples``.
    """
    content = RecordDict()
    for name, record in msg.content.items():
        if isinstance(record, MetricRecord):
            record = MetricRecord({**dict(record), key: weight})
        content[name] = record
    # flwr's overloads omit the metadata-only constructor it supports (and uses itself, in make_message)
    return Message(content=content, metadata=copy.copy(msg.metadata))  # type: ignore[call-overload]
