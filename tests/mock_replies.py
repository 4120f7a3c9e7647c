"""Mock decoded reply Messages, as the fleet wrapper hands them to inner strategies.

A decoded reply's content is ``RecordDict({"arrays": ArrayRecord(float32 arrays),
"metrics": MetricRecord({"num-examples": w, "bits": b, "device": i})})``.
Replies are built with explicit `Metadata` because Flower 1.41's instruction-style
``Message(content, dst_node_id, message_type)`` needs a process-wide
``TaskIdentity.run_id`` that only a running ServerApp sets.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

SERVER_NODE_ID = 0
RUN_ID = 1


def _metadata(device: int) -> Metadata:
    return Metadata(
        run_id=RUN_ID,
        message_id=f"reply-{device}",
        src_node_id=device + 1,  # node ids are opaque; device i lives on node i + 1
        dst_node_id=SERVER_NODE_ID,
        reply_to_message_id=f"instruction-{device}",
        group_id="",
        created_at=0.0,
        ttl=3600.0,
        message_type=MessageType.TRAIN,
    )


def arrays_record(arrays: Mapping[str, Sequence[float] | np.ndarray]) -> ArrayRecord:
    """ArrayRecord of float32 copies of ``arrays``."""
    return ArrayRecord(
        {k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}
    )


def make_reply(
    arrays: Mapping[str, Sequence[float] | np.ndarray],
    num_examples: float,
    bits: int = 32,
    device: int = 0,
) -> Message:
    """A decoded train reply from ``device``."""
    content = RecordDict(
        {
            "arrays": arrays_record(arrays),
            "metrics": MetricRecord(
                {"num-examples": num_examples, "bits": bits, "device": device}
            ),
        }
    )
    return Message(content=content, metadata=_metadata(device))


def make_error_reply(device: int, reason: str = "simulated OOM") -> Message:
    """A failed train reply (the ClientApp raised)."""
    return Message(error=Error(code=0, reason=reason), metadata=_metadata(device))


class FakeGrid:
    """The part of `flwr.serverapp.Grid` that ``configure_train`` uses."""

    def __init__(self, node_ids: Sequence[int] = (1,)) -> None:
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        """Connected node ids."""
        return list(self._node_ids)


def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give this process the TaskIdentity a ServerApp has (undone after the test)."""
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN_ID)
    monkeypatch.setattr(TaskIdentity, "_node_id", SERVER_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def configure_one_round(
    strategy: object,
    arrays: Mapping[str, Sequence[float] | np.ndarray],
    server_round: int = 1,
) -> ConfigRecord:
    """Call ``strategy.configure_train`` as the wrapper does; return the sent config."""
    messages = list(
        strategy.configure_train(  # type: ignore[attr-defined]
            server_round, arrays_record(arrays), ConfigRecord(), FakeGrid()
        )
    )
    assert len(messages) == 1
    config = messages[0].content["config"]
    assert isinstance(config, ConfigRecord)
    return config


def aggregated(record: ArrayRecord | None) -> dict[str, np.ndarray]:
    """Numpy view of an aggregated ArrayRecord."""
    assert record is not None
    return {k: v.numpy() for k, v in record.items()}
