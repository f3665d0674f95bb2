"""A real multi-node Ray cluster on one machine: a head and worker raylets, each started
by its own `ray start --block` process, as on separate machines.

Every port is picked free and passed explicitly, and every process lives in its own
process group under a private temp dir, so this cluster never touches another Ray on
the same machine: `stop()` kills exactly the process groups it started (never a bare
`ray stop`), and `kill_node()` takes one worker node down without warning, like a
lost instance.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
_START_TIMEOUT_S = 180.0
_START_ATTEMPTS = 2
# Detect a dead node within ~3 s instead of Ray's default ~15-30 s.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class NodeStartError(RuntimeError):
    """A node's `ray start` exited or its raylet never registered."""


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all sockets held open while picking)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Node:
    name: str
    process: subprocess.Popen
    node_manager_port: int
    log: Path
    node_id: str = ""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LocalCluster:
    """Use as a context manager. `env` is what every node (and so every Ray worker
    process) gets on top of this process's environment: PYTHONPATH, the S3 endpoint...
    """

    head_cpus: int = 0
    object_store_bytes: int = 256 * 2**20
    env: dict[str, str] = field(default_factory=dict)
    dashboard: bool = False
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lcray-", dir="/tmp")))
    nodes: list[Node] = field(default_factory=list)
    port: int = 0
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        """The GCS address: `ray.init(address=...)`, RAY_ADDRESS, `--ray-address`."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """`ray job submit --address` (needs ray[default] for the dashboard)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            **FAST_FAILURE_DETECTION,
            # Ray code that looks for "the" local cluster (Train's state API calls) must
            # find this one, not another Ray running on the same machine.
            "RAY_ADDRESS": self.address,
            **self.env,
        }

    def start(self, workers: list[dict]) -> LocalCluster:
        """Head, then one worker per item of `workers` ({"num_cpus": 1, "resources": {...}}),
        one after the other (raylets starting together race for the plasma socket)."""
        try:
            self.port, self.dashboard_port, client_port = _free_ports(3)
            head = ["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus)]
            head += ["--ray-client-server-port", str(client_port)]
            head += ["--dashboard-port", str(self.dashboard_port), "--dashboard-host", "127.0.0.1"]
            head += ["--include-dashboard", "true" if self.dashboard else "false"]
            head += ["--temp-dir", str(self.root / "ray")]
            self._start_node("head", head)
            for i, spec in enumerate(workers):
                args = ["--address", self.address, "--num-cpus", str(spec.get("num_cpus", 1))]
                if spec.get("resources"):
                    args += ["--resources", json.dumps(spec["resources"])]
                # The head's log monitor already reads the one shared log folder.
                args += ["--include-log-monitor", "false"]
                self._start_node(f"worker{i + 1}", args)
            if self.dashboard:
                self._wait_for_dashboard()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, name: str, args: list[str]) -> Node:
        """Start one node; once more if `ray start` gave up (it allows a raylet 30 s to
        register, which a heavily loaded machine can exceed)."""
        for attempt in range(_START_ATTEMPTS):
            try:
                return self._start_node_once(name, args)
            except NodeStartError:
                failed = self.nodes.pop()
                for pid in _descendants(failed.process.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                _kill_group(failed.process, signal.SIGKILL)
                failed.process.wait()
                if attempt + 1 == _START_ATTEMPTS or name == "head":
                    raise
        raise AssertionError("unreachable")

    def _start_node_once(self, name: str, args: list[str]) -> Node:
        manager, objects, agent, agent_grpc, metrics, runtime_env = _free_ports(6)
        command = [RAY, "start", "--block", "--node-ip-address", "127.0.0.1", *args]
        command += ["--node-manager-port", str(manager), "--object-manager-port", str(objects)]
        command += ["--dashboard-agent-listen-port", str(agent)]
        command += ["--dashboard-agent-grpc-port", str(agent_grpc)]
        command += ["--metrics-export-port", str(metrics)]
        command += ["--runtime-env-agent-port", str(runtime_env)]
        command += ["--min-worker-port", "0", "--max-worker-port", "0"]
        command += ["--object-store-memory", str(self.object_store_bytes)]
        command += ["--disable-usage-stats"]
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=self.node_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill_node / stop
            )
        node = Node(name, process, manager, log)
        self.nodes.append(node)
        node.node_id = self._wait_registered(node)
        return node

    def _wait_registered(self, node: Node) -> str:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not node.alive:
                raise NodeStartError(f"{node.name} exited: {node.log.read_text()[-2000:]}")
            try:
                alive = self.alive_nodes()
            except Exception:  # noqa: BLE001 - a GCS still starting or overloaded: ask again
                alive = []
            for info in alive:
                if info["node_manager_port"] == node.node_manager_port:
                    return info["node_id"]
            time.sleep(0.3)
        raise NodeStartError(f"{node.name} did not register: {node.log.read_text()[-2000:]}")

    def alive_nodes(self) -> list[dict]:
        """The GCS's view of the alive nodes: node_id, node_manager_port, resources."""
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return []  # the GCS client blocks for long when nothing listens yet
        from ray._raylet import GcsClient

        infos = GcsClient(address=self.address).get_all_node_info(timeout=5)
        return [
            {
                "node_id": info.node_id.hex(),
                "node_manager_port": info.node_manager_port,
                "resources": dict(info.resources_total),
            }
            for info in infos.values()
            if info.state == 0  # ALIVE
        ]

    def _wait_for_dashboard(self) -> None:
        import urllib.request

        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2).close()
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the dashboard did not answer on {self.dashboard_url}")

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def kill_node(self, name: str) -> None:
        """SIGKILL a node's whole process group: raylet, object store and its workers
        die at once, without draining (a lost instance)."""
        node = self.node(name)
        _kill_group(node.process, signal.SIGKILL)

    def wait_node_dead(self, name: str, timeout: float = 60.0) -> None:
        """Until the GCS has marked the node dead."""
        node_id = self.node(name).node_id
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node_id not in {n["node_id"] for n in self.alive_nodes()}:
                return
            time.sleep(0.3)
        raise RuntimeError(f"{name} is still alive in the GCS after {timeout} s")

    def running(self, name: str) -> list[str]:
        """Titles of the node's Ray worker processes (`ray::<task or actor>`). Workers
        leave the node's process group; they are children of its raylet."""
        node = self.node(name)
        table = _process_table()
        raylets = [
            pid
            for pid, (ppid, pgid, cmd) in table.items()
            if pgid == node.process.pid and "/raylet/raylet " in cmd
        ]
        return [cmd for pid, (ppid, _, cmd) in table.items() if ppid in raylets and pid]

    def stop(self) -> None:
        """Kill every process this cluster started, workers first, then remove its files."""
        for node in reversed(self.nodes):
            for pid in _descendants(node.process.pid):  # Ray workers have their own group
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _kill_group(node.process, signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)
        for pid in self.leftover_pids():  # anything that left its group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Processes whose command line names this cluster's private temp dir."""
        marker = str(self.root)
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
        return pids

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _process_table() -> dict[int, tuple[int, int, str]]:
    """{pid: (parent pid, process group, command line)} of every readable process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), cmd)
    return table


def _descendants(root: int) -> list[int]:
    table = _process_table()
    children = defaultdict(list)
    for pid, (ppid, _, _) in table.items():
        children[ppid].append(pid)
    found, todo = [], [root]
    while todo:
        for child in children[todo.pop()]:
            found.append(child)
            todo.append(child)
    return found


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session: the group id is the pid
