"""The one place that starts Flower's simulation engine (Ray) for in-process runs.

Flower deprecated ``run_simulation`` in 1.28 in favour of ``flwr run``; it is still
the only way to run a whole federation inside one Python process, so ``fleet run``
and the tests use it, and moving to the supported path is a change to this module
only. ``flwr run .`` uses the same ServerApp and ClientApp through
``[tool.flwr.app.components]``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fleet.config.scenario import ScenarioConfig

log = logging.getLogger(__name__)

__all__ = ["backend_config", "simulate", "engine_of", "shutdown_ray", "kill_process_tree", "interrupt_guard"]


def kill_process_tree() -> None:
    """SIGKILL every descendant of this process (Ray's GCS, raylet, agents and workers), at once.

    No grace period on purpose: the caller exits right after, and while it waited, Ray's core worker
    in this process could notice its raylet dying and end the process itself with exit code 1."""
    import psutil

    for c in psutil.Process().children(recursive=True):
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass


@contextlib.contextmanager
def interrupt_guard(on_interrupt: Callable[[], None]) -> Iterator[None]:
    """Make Ctrl-C (SIGINT) and SIGTERM stop a run cleanly and at once.

    A terminal's Ctrl-C goes to the whole process group. If Ray's raylet gets it, it dies, and Ray's
    core worker may end this process (exit 1) before a Python handler runs, leaving the run marked
    "running". So, where the platform allows, SIGINT is blocked in this (main) thread while the run
    lasts: the threads and processes it starts meanwhile (Ray's daemons and, through them, its
    workers) inherit the block and never see a Ctrl-C. Whichever thread the signal reaches, Python's
    C-level handler writes it to a wake-up socket that a watcher thread (started before the block)
    reads, so the stop does not wait for the main thread, which may be blocked inside Flower. The stop
    runs ``on_interrupt`` (mark the run as interrupted; finished rounds and checkpoints are already on
    disk), kills the whole process tree and exits with 130 at once.
    """
    once = threading.Lock()

    def stop() -> None:
        if not once.acquire(blocking=False):
            return  # another thread is already stopping the process
        try:
            on_interrupt()
        finally:
            terminal = sys.__stderr__ or sys.stderr  # sys.stderr may be routed to run.log
            terminal.write("interrupted: every finished round is on disk; continue with `fleet resume RUN_DIR`\n")
            terminal.flush()
            kill_process_tree()
            os._exit(130)

    def handler(signum: int, _frame: object) -> None:
        stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    if not (hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()):
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
        return
    rsock, wsock = socket.socketpair()
    wsock.setblocking(False)
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            data = rsock.recv(64)
            if not done.is_set() and (signal.SIGINT in data or signal.SIGTERM in data):
                stop()

    watcher = threading.Thread(target=watch, name="edgefleet-interrupt", daemon=True)
    watcher.start()  # before the block: the watcher can still receive SIGINT
    old_wakeup = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(old_wakeup)
        wsock.send(b"\0")  # wake the watcher so it sees `done`
        watcher.join(timeout=5)
        rsock.close()
        wsock.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sig, h in previous.items():
            signal.signal(sig, h)


def backend_config(cfg: ScenarioConfig) -> dict[str, Any]:
    """Ray settings from the scenario's ``[ray]`` table."""
    init_args: dict[str, Any] = {"include_dashboard": False}
    if cfg.ray.address:
        init_args["address"] = cfg.ray.address  # join an existing cluster (ray start --head ...)
    elif cfg.ray.num_cpus:
        init_args["num_cpus"] = cfg.ray.num_cpus
    return {
        "client_resources": {"num_cpus": cfg.ray.num_cpus_per_device, "num_gpus": cfg.ray.num_gpus_per_device},
        "init_args": init_args,
    }


def shutdown_ray() -> None:
    """Stop this process's Ray driver and the workers it started (safe to call twice)."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - shutting down must never raise
        log.debug("ray shutdown: %s", exc)


def engine_of(cfg: ScenarioConfig) -> str:
    """The engine a run uses: ``federation.engine``, with 'auto' = Ray for a cluster (``ray.address``), else local."""
    engine = cfg.federation.engine
    return ("ray" if cfg.ray.address else "local") if engine == "auto" else engine


def simulate(server_app: ServerApp, client_app: ClientApp, cfg: ScenarioConfig, verbose: bool = False,
             log_path: str = "") -> None:
    """Run ``server_app`` against ``cfg.federation.num-devices`` simulated SuperNodes on Ray, or on this
    machine's worker processes (``federation.engine = "local"``; their output goes to ``log_path``)."""
    if engine_of(cfg) == "local":
        from fleet.client_app import device_threads
        from simulations.run.local_engine import PoolGrid, simulate_local, workers_for

        fed = cfg.federation
        workers = workers_for(fed.workers, device_threads(cfg))
        simulate_local(server_app, lambda: PoolGrid(cfg.to_flat(), fed.num_devices, workers, log_path))
        return
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a Ray FutureWarning; CPU-only default

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            run_simulation(server_app=server_app, client_app=client_app,
                           num_supernodes=cfg.federation.num_devices, backend_config=backend_config(cfg),
                           verbose_logging=verbose)
    finally:
        shutdown_ray()
