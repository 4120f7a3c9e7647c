"""A Flower ``Grid`` that audits every message a device sends (``privacy.audit``) before anyone reads it.

It wraps the run's grid, so every reply passes through it whichever code asked: the roster query, the
training rounds, SecAgg+'s stages, the continual phase. A reply that breaks the rules of
:class:`fleet.privacy.audit.MessageAudit` fails the run with :class:`fleet.privacy.audit.AuditError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fleet.privacy.audit import MessageAudit
from strategies.grids import WrappedGrid

__all__ = ["AuditedGrid"]


class AuditedGrid(WrappedGrid):
    """``grid`` with each reply checked by ``audit``; ``name_of(node_id)`` names the device in errors."""

    def __init__(self, grid: Grid, audit: MessageAudit, name_of: Callable[[int], str]) -> None:
        super().__init__(grid)
        self.audit, self.name_of = audit, name_of
        self.checked = 0  # replies audited (the tests read it)

    def _check(self, replies: Iterable[Message]) -> list[Message]:
        out = list(replies)
        for msg in out:
            if not msg.has_error():
                self.audit.check(msg.content, self.name_of(msg.metadata.src_node_id),
                                 query=msg.metadata.message_type == MessageType.QUERY)
                self.checked += 1
        return out

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self._check(self.grid.send_and_receive(messages, timeout=timeout))

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return self._check(self.grid.pull_messages(message_ids))
