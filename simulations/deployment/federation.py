"""A federation on Flower's deployment engine on this machine: one SuperLink and N SuperNodes on 127.0.0.1.

Secure by default: the SuperLink serves TLS with a certificate for ``localhost``/``127.0.0.1`` signed by a CA made
for this federation, and runs with ``--enable-supernode-auth``; each SuperNode's ECDSA public key is registered
through the Control API (``flwr supernode register``) before the node starts, so a node whose key was not
registered is refused. ``secure=False`` is Flower's ``--insecure`` (plain HTTP, no authentication).

Nothing is installed at run time (``--disable-runtime-dependency-installation``): the app runs in this Python
environment. The ``flwr`` CLI gets its own ``FLWR_HOME`` inside the working folder, so the user's ``~/.flwr`` (its
connections, its managed local SuperLink) is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import tomli_w

from simulations.deployment.credentials import Certificates, NodeKey, make_certificates, make_node_key
from simulations.deployment.processes import ProcessGroup, Started, free_port, log_tail, wait_until

__all__ = ["CONNECTION", "DeploymentError", "LocalFederation", "flower_command"]

#: The name of the SuperLink connection in the federation's own ``FLWR_HOME/config.toml``.
CONNECTION = "edgefleet-local"
#: Seconds to wait for the SuperLink to answer, and for every SuperNode to be online.
START_TIMEOUT_S = 60.0
NODES_TIMEOUT_S = 120.0


class DeploymentError(RuntimeError):
    """A process of the deployment failed to start or died; the message names it and its log."""


def flower_command(name: str) -> str:
    """Flower's executable ``name`` (``flwr``, ``flower-superlink``, ...) next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise DeploymentError(f"{name}: not found next to {sys.executable} or on PATH (pip install 'flwr>=1.41')")
    return found


@dataclass
class LocalFederation:
    """A SuperLink and ``devices`` SuperNodes; a context manager that stops every process on exit.

    Parameters
    ----------
    work : Path
        A private working folder: credentials, ``FLWR_HOME``, process logs (``work/logs``).
    devices : int
        SuperNodes to start; node ``i`` gets ``--node-config "partition-id=i num-partitions=devices"``.
    cwd : Path
        The processes' working directory (relative paths in the run config resolve against it).
    secure : bool
        TLS and SuperNode authentication (default), or Flower's ``--insecure``.
    """

    work: Path
    devices: int
    cwd: Path
    secure: bool = True
    port: int = field(default_factory=free_port)
    certs: Certificates | None = None
    keys: list[NodeKey] = field(default_factory=list)
    group: ProcessGroup = field(init=False)
    superlink: Started | None = None
    nodes: list[Started] = field(default_factory=list)

    def __post_init__(self) -> None:
        home = self.work / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
                   FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1")
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        self.group = ProcessGroup(self.work / "logs", env, self.cwd)
        if self.secure:
            self.certs = make_certificates(self.work / "certs")
            self.keys = [make_node_key(self.work / "keys", f"supernode-{i}") for i in range(self.devices)]
        self._write_connection(home)

    def _write_connection(self, home: Path) -> None:
        conn: dict[str, object] = {"address": f"127.0.0.1:{self.port}"}
        conn.update({"root-certificates": str(self.certs.ca)} if self.certs else {"insecure": True})
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: conn}}))

    def _tls_args(self, server: bool) -> list[str]:
        if self.certs is None:
            return ["--insecure"]
        if server:
            return ["--ssl-ca-certfile", str(self.certs.ca), "--ssl-certfile", str(self.certs.cert),
                    "--ssl-keyfile", str(self.certs.key), "--enable-supernode-auth"]
        return ["--root-certificates", str(self.certs.ca)]

    # -- start ------------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalFederation:
        try:
            self.start_superlink()
            for key in self.keys:
                self.register(key)
            self.nodes = [self.add_node(f"supernode-{i}", self.keys[i] if self.keys else None, i)
                          for i in range(self.devices)]
            self.wait_online(self.devices)
        except BaseException:
            self.group.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.group.__exit__(exc_type, *exc)

    def start_superlink(self) -> None:
        self.superlink = self.group.start("superlink", [
            flower_command("flower-superlink"), *self._tls_args(server=True), "--host", "127.0.0.1",
            "--port", str(self.port), "--isolation", "subprocess", "--disable-runtime-dependency-installation"])
        scheme = "https" if self.certs else "http"
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(self.certs.ca)) if self.certs else False

        def healthy() -> bool:
            self._check_alive(self.superlink)
            try:
                return httpx.get(f"{scheme}://127.0.0.1:{self.port}/health", verify=verify, timeout=1.0).is_success
            except httpx.HTTPError:
                return False

        if not wait_until(healthy, START_TIMEOUT_S):
            raise DeploymentError(f"the SuperLink did not answer on 127.0.0.1:{self.port} within "
                                  f"{START_TIMEOUT_S:.0f} s; {self._where(self.superlink)}")

    def register(self, key: NodeKey) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        cmd = [flower_command("flwr"), "supernode", "register", str(key.public), CONNECTION, "--format", "json"]
        try:
            res = self.group.run("register", cmd)
        except subprocess.TimeoutExpired:
            raise DeploymentError(f"flwr supernode register {key.public.name}: no answer within 120 s; "
                                  f"{self._where(self.superlink)}") from None
        if res.returncode != 0:
            last = (res.stdout + res.stderr).strip().splitlines()
            raise DeploymentError(f"flwr supernode register {key.public.name} failed: "
                                  f"{last[-1] if last else f'exit code {res.returncode}'}")

    def add_node(self, name: str, key: NodeKey | None, partition: int, max_retries: int = 10) -> Started:
        """Start one SuperNode (its own runtime port) for device ``partition``; it gives up connecting after
        ``max_retries`` failed attempts (exit code 305 when the SuperLink refuses it)."""
        auth = ["--auth-supernode-private-key", str(key.private)] if key is not None else []
        return self.group.start(name, [
            flower_command("flower-supernode"), "--superlink", f"127.0.0.1:{self.port}", *self._tls_args(server=False),
            *auth, "--host", "127.0.0.1", "--port", str(free_port()), "--max-retries", str(max_retries),
            "--node-config", f"partition-id={partition} num-partitions={self.devices}"])

    def online(self) -> int:
        """SuperNodes the SuperLink lists as online (``flwr supernode list``)."""
        res = self.group.run("supernode-list", [flower_command("flwr"), "supernode", "list", CONNECTION,
                                                "--format", "json"])
        try:
            nodes = json.loads(res.stdout).get("nodes", [])
        except ValueError:
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_online(self, n: int) -> None:
        def ready() -> bool:
            for node in (self.superlink, *self.nodes):
                self._check_alive(node)
            return self.online() >= n

        if not wait_until(ready, NODES_TIMEOUT_S, interval=0.5):
            raise DeploymentError(f"fewer than {n} SuperNodes online after {NODES_TIMEOUT_S:.0f} s "
                                  f"(logs in {self.group.logs})")

    # -- run --------------------------------------------------------------------------------------------------

    def run(self, app: Path, run_config: Path, echo: Callable[[str], None] | None = None) -> Started:
        """``flwr run APP --run-config FILE --stream`` against this federation, to its end; returns the process.

        While it runs, the SuperLink and every SuperNode must stay up (else :class:`DeploymentError`); new lines of
        the stream go to ``echo``.
        """
        run = self.group.start("flwr-run", [flower_command("flwr"), "run", str(app), CONNECTION,
                                            "--run-config", str(run_config), "--stream"])
        seen = 0

        def finished() -> bool:
            nonlocal seen
            seen = _echo_new(run.log, seen, echo)
            for s in (self.superlink, *self.nodes):  # on one machine a process that dies is a failure
                self._check_alive(s)
            return not run.alive()

        wait_until(finished, float("inf"), interval=0.5)
        _echo_new(run.log, seen, echo)
        return run

    def _check_alive(self, s: Started | None) -> None:
        if s is not None and not s.alive():
            raise DeploymentError(f"{s.name} exited with code {s.proc.returncode}; {self._where(s)}")

    @staticmethod
    def _where(s: Started | None) -> str:
        return "" if s is None else f"log {s.log}: {log_tail(s.log)}"


def _echo_new(path: Path, seen: int, echo: Callable[[str], None] | None) -> int:
    """Pass the log's bytes after ``seen`` (whole lines) to ``echo``; returns the new offset."""
    try:
        with path.open("rb") as f:
            f.seek(seen)
            chunk = f.read()
    except OSError:
        return seen
    end = chunk.rfind(b"\n") + 1
    if echo is not None and end:
        for line in chunk[:end].decode(errors="replace").splitlines():
            echo(line)
    return seen + end
