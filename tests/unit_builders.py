"""Builders for the fast orchestration unit tests (no Ray, no subprocess, no simulation engine).

The server side is driven as Flower drives it: ``FleetStrategy.discover`` answers a roster query
through a fake grid, ``configure_train`` emits one instruction Message per sampled device, and each
reply is built from its instruction exactly as ``fleet/client_app.py`` builds it
(``Message(RecordDict({arrays, metrics, report}), reply_to=instruction)``), or as the error reply
Flower sends when the ClientApp raised (``Message(Error, reply_to=instruction)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict

from fleet import protocol as P
from fleet.arrays import record_from_numpy, record_to_numpy
from fleet.quant.codecs import payload_nbytes

__all__ = ["RosterGrid", "instruction_of", "device_reply", "error_reply", "arrays_of", "by_device"]


class RosterGrid:
    """The part of ``flwr.serverapp.Grid`` the fleet wrapper uses before a round: node ids and the roster.

    Device ``i`` lives on node ``i + 101`` (Flower's node ids are opaque: never equal to the device index).
    """

    OFFSET = 101

    def __init__(self, num_devices: int) -> None:
        self.num_devices = num_devices

    def get_node_ids(self) -> list[int]:
        return [d + self.OFFSET for d in range(self.num_devices)]

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        # The ClientApp's query handler: "which device are you?" -> {"device": partition id}
        return [Message(RecordDict({P.REPORT: ConfigRecord({"device": m.metadata.dst_node_id - self.OFFSET})}),
                        reply_to=m) for m in messages]


def instruction_of(msg: Message) -> P.DeviceInstruction:
    """The per-device instruction a train Message carries."""
    return P.DeviceInstruction.from_record(msg.content[P.CONFIG])


def by_device(msgs: Iterable[Message]) -> dict[int, Message]:
    """Instruction Messages keyed by the device they are addressed to."""
    return {instruction_of(m).device: m for m in msgs}


def device_reply(instruction: Message, payload: Mapping[str, Sequence[float] | np.ndarray] | None = None, *,
                 weight: float = 1.0, status: str = "ok", sim_time_s: float = 1.0, bits: int | None = None,
                 **report_fields: object) -> Message:
    """The reply a device sends to ``instruction`` (built as ``fleet/client_app.py`` builds it).

    ``payload`` is the encoded update as the device's codec produced it (float32 unless already typed);
    the report's bits default to the instruction's weight bits, its uplink bytes to the payload's size.
    """
    ins = instruction_of(instruction)
    arrays = {k: (v if isinstance(v, np.ndarray) else np.asarray(v, np.float32)) for k, v in (payload or {}).items()}
    fields: dict[str, object] = {"uplink_bytes": payload_nbytes(arrays), **report_fields}
    rep = P.DeviceReport(device=ins.device, status=status, profile=ins.profile, fault=ins.fault,
                         bits=ins.weight_bits if bits is None else bits, weight=weight, sim_time_s=sim_time_s,
                         **fields)  # type: ignore[arg-type]
    metrics, report = rep.to_records()
    return Message(RecordDict({P.ARRAYS: record_from_numpy(arrays), P.METRICS: metrics, P.REPORT: report}),
                   reply_to=instruction)


def error_reply(instruction: Message, reason: str) -> Message:
    """The reply Flower sends for ``instruction`` when the ClientApp raised (``reason``: the traceback text)."""
    return Message(Error(code=0, reason=reason), reply_to=instruction)


def arrays_of(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    """Numpy copies of an aggregated ArrayRecord (fails on None: nothing was aggregated)."""
    assert record is not None, "nothing was aggregated"
    return record_to_numpy(record)
