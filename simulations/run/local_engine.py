"""The single-machine engine (``federation.engine = "local"``): the same ServerApp and ClientApp, without Ray.

A Flower ``Grid`` delivers each message to the ClientApp of its node:

- :class:`LocalGrid` in this process, one message at a time (tests and benchmarks);
- :class:`PoolGrid` in ``federation.workers`` worker processes, each simulating a fixed share of the nodes
  (node ``n`` lives in worker ``n mod W``, with its Flower ``Context`` kept there across rounds, as Flower's
  simulation keeps one per node). A round's messages run in parallel across the workers; a worker whose
  device has not answered within the round timeout is stopped and replaced, and its devices' replies are
  missing, as under Ray. The round timeout starts once every worker is up: a replacement's start-up (its
  ClientApp and the fleet's data) is the simulator's cost, not the next round's devices'.

Results equal the Ray engine's for the same seed: every device's randomness derives from the scenario and
its instruction, not from the process it runs in, the server sorts replies by device, and the per-device
limits (memory, deadline, availability) are the device profiles' and the virtual clock's, not the engine's
(tests/test_local_engine.py). Ray stays the engine of ``flwr run`` and of ``ray.address`` clusters.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import os
import queue
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flwr.app import ArrayRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid", "PoolGrid", "server_identity", "simulate_local", "node_context", "deliver",
           "start_forkserver"]


@contextmanager
def server_identity() -> Iterator[None]:
    """The process identity a running ServerApp has: Flower's Messages take their run and sender from it."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def node_context(node_id: int, num_nodes: int) -> Context:
    """Node ``node_id`` (1-based) simulates device (partition) ``node_id - 1``."""
    return Context(run_id=1, node_id=node_id, state=RecordDict(), run_config={},
                   node_config={"partition-id": node_id - 1, "num-partitions": num_nodes})


def _copied(msg: Message) -> Message:
    """``msg`` with its config and metric records copied (its arrays shared: a device does not write into the
    arrays it received), as after a real transport: SecAgg+ sends one record to every node, and its client
    mod consumes keys of what it receives."""
    content = RecordDict({k: rec if isinstance(rec, ArrayRecord) else copy.deepcopy(rec)
                          for k, rec in msg.content.items()})
    out = Message(content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type,
                  group_id=msg.metadata.group_id)
    out.metadata.__dict__.update(msg.metadata.__dict__)
    return out


def deliver(client_app: ClientApp, context: Context, msg: Message) -> Message:
    """Run ``client_app`` on ``msg``; an exception becomes an error reply, as in Flower."""
    try:
        reply = client_app(_copied(msg), context)
    except Exception as exc:  # noqa: BLE001 - a device failure is a reply, as in Flower
        reason = f"{type(exc)}:<'{exc}'>"
        reply = Message(Error(code=0, reason=reason + traceback.format_exc(limit=2)), reply_to=msg)
    reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
    return reply


class _Grid(Grid):
    """What both grids share: node ids 1..N, messages built directly, no SuperLink."""

    def __init__(self, num_nodes: int) -> None:
        self.num_nodes = num_nodes

    def set_run(self, run: Run) -> None:  # noqa: D102 - a single in-process run
        pass

    @property
    def run(self) -> Run:  # noqa: D102
        raise NotImplementedError("a local grid has no SuperLink run")

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:  # noqa: D102
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(range(1, self.num_nodes + 1))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise NotImplementedError("use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise NotImplementedError("use send_and_receive")


class LocalGrid(_Grid):
    """Every node's ClientApp in this process, one message at a time (``timeout`` unused)."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        super().__init__(num_nodes)
        self.client_app = client_app
        self.contexts = {n: node_context(n, num_nodes) for n in range(1, num_nodes + 1)}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            replies.append(deliver(self.client_app, self.contexts[msg.metadata.dst_node_id], msg))
        return replies


def _worker(flat: dict[str, Any], num_nodes: int, log_path: str, inbox: Any, outbox: Any, ready: Any) -> None:
    """A worker process: its nodes' contexts, made as messages for them arrive; output into the run's log;
    ``ready`` set once its ClientApp and the fleet's data are built."""
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    from fleet.client_app import config_from_run_config, make_client_app
    from fleet.data.splits import fleet_data

    app = make_client_app(flat)
    fleet_data(config_from_run_config(flat))  # the dataset and its partition: once per process, before any round
    ready.set()
    contexts: dict[int, Context] = {}
    with server_identity():
        while (msg := inbox.get()) is not None:
            node = msg.metadata.dst_node_id
            ctx = contexts.setdefault(node, node_context(node, num_nodes))
            outbox.put(deliver(app, ctx, msg))


def start_forkserver() -> Any:
    """The workers' fork server, started, as a multiprocessing context. It imports torch and flwr once and
    forks every worker after (torch._dynamo too, which torch.optim imports on a device's first optimizer: about
    1 s every worker would pay again). Starting returns at once, so ``fleet run`` calls this before its
    preflight and the server's imports (about 5 s) overlap it; calling it again reuses the running server."""
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["fleet.client_app", "torch._dynamo"])
    forkserver.ensure_running()
    return ctx


class PoolGrid(_Grid):
    """Every node's ClientApp in one of ``workers`` processes (module docstring); :meth:`close` stops them."""

    def __init__(self, flat: dict[str, Any], num_nodes: int, workers: int, log_path: str = "") -> None:
        super().__init__(num_nodes)
        self.flat, self.log_path = flat, log_path
        self.mp = start_forkserver()
        self.outbox = self.mp.Queue()
        self.procs: list[Any] = []
        self.inboxes: list[Any] = []
        self.ready: list[Any] = []
        for _ in range(max(1, min(workers, num_nodes))):
            self._spawn()

    def _spawn(self, slot: int | None = None) -> None:
        inbox, ready = self.mp.Queue(), self.mp.Event()
        proc = self.mp.Process(target=_worker, daemon=True,
                               args=(self.flat, self.num_nodes, self.log_path, inbox, self.outbox, ready))
        proc.start()
        if slot is None:
            self.procs.append(proc)
            self.inboxes.append(inbox)
            self.ready.append(ready)
        else:
            self.procs[slot], self.inboxes[slot], self.ready[slot] = proc, inbox, ready

    def _wait_ready(self) -> None:
        """Block until every worker is up (:func:`_worker`); a worker that dies first is an error."""
        for slot, (proc, ready) in enumerate(zip(self.procs, self.ready)):
            while not ready.wait(0.2):
                if not proc.is_alive():
                    where = f"; see {self.log_path}" if self.log_path else ""
                    raise RuntimeError(f"local engine worker {slot} exited during start-up "
                                       f"(exit code {proc.exitcode}){where}")

    def _slot(self, node_id: int) -> int:
        return (node_id - 1) % len(self.procs)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        self._wait_ready()
        waiting: dict[str, int] = {}
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = mid = str(uuid.uuid4())
            waiting[mid] = self._slot(msg.metadata.dst_node_id)
            self.inboxes[waiting[mid]].put(msg)
        replies: list[Message] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                reply = self.outbox.get(timeout=left)
            except queue.Empty:
                break
            if waiting.pop(reply.metadata.reply_to_message_id, None) is not None:
                replies.append(reply)  # a late reply of an earlier round is dropped, as Flower drops it
        for slot in sorted(set(waiting.values())):  # hung past the timeout: replaced, its queue with it
            self.procs[slot].kill()
            _abandon(self.inboxes[slot])
            self._spawn(slot)
        return replies

    def close(self) -> None:
        """Stop every worker (safe to call twice)."""
        for inbox in self.inboxes:
            inbox.put(None)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for q in [*self.inboxes, self.outbox]:
            _abandon(q)
        self.procs, self.inboxes, self.ready = [], [], []


def _abandon(q: Any) -> None:
    """Close a queue without waiting to flush it: its reader may be gone (a killed worker), and a queue's
    feeder thread blocked on a full pipe would otherwise hang this process at exit."""
    q.cancel_join_thread()
    q.close()


def simulate_local(server_app: ServerApp, make_grid: Callable[[], Grid]) -> None:
    """Run ``server_app`` on the grid ``make_grid`` builds (closed afterwards if it can be)."""
    grid = make_grid()
    try:
        with server_identity():
            server_app(grid=grid, context=Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={},
                                                  state=RecordDict(), run_config={}))
    finally:
        close = getattr(grid, "close", None)
        if close is not None:
            close()


def workers_for(requested: int, threads_per_device: int = 1) -> int:
    """``federation.workers``: 0 = as many as the CPUs hold devices of ``threads_per_device`` threads."""
    return requested if requested > 0 else max(1, (os.cpu_count() or 1) // max(1, threads_per_device))


