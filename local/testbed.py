"""Rootless local testbed: every node is a process on 127.0.0.1 with its own work directory.

It needs no root and no SSH, so it is the fallback everywhere and the fast
path for tests.  Link faults are not available here (use the emu testbed).
State (ports, pids) lives in a manifest under ``$JARVIS_STATE/local/<prefix>``
so ``down`` kills exactly the processes this testbed started and nothing else.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from local.spawner import ModuleCall, SpawnerClient, code_fingerprint
from payload.clock import write_skew
from testbed.straggler import SLOW_PERIOD_S, Stragglers
from testbed.interface import (CLOCK_FAULTS, FOLLOW_ARGV, PROCESS_FAULTS, UNSHAPED, FaultResult, HostInfo, Testbed,
                               TestbedError)
from testbed.profiles import LinkProfile
from testbed.shell import LocalShell
from testbed.state import StateStore, state_root


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """``count`` listening ports that are free now and outside the kernel's ephemeral range.

    Ports from ``bind(0)`` come from the ephemeral range, where the chain's own
    outgoing connections also take their source ports: a node could then find
    its port taken by a connection by the time it starts.  Ports below that
    range are only ever taken by other listeners.
    """
    low, _ = _ephemeral_range()
    ceiling = min(low, 65536) - 1
    floor = max(1024, ceiling - 12000)
    ports: list[int] = []
    for port in random.sample(range(floor, ceiling), ceiling - floor):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise TestbedError(f"no {count} free TCP ports on 127.0.0.1 between {floor} and {ceiling}")


class LocalTestbed(Testbed):
    """Nodes as processes of this machine; faults are signals to their process groups."""

    kind = "local"
    faults = PROCESS_FAULTS | CLOCK_FAULTS  # no links to fault here; the nodes share this host's clock

    def __init__(self, prefix: str = "jv-local"):
        self.prefix = prefix
        self.state_dir = state_root() / "local" / prefix
        self.store = StateStore(self.state_dir / "manifest.json", what="local testbed manifest")
        self._lock = threading.Lock()  # deploy starts services from parallel threads
        self._spawner_lock = threading.Lock()
        self._stragglers = Stragglers()

    def _load(self) -> dict:
        state = self.store.load()
        if state is None:
            raise TestbedError(f"local testbed {self.prefix!r} is not up: run `fab up --testbed local --nodes N`")
        return state

    def _save(self, state: dict) -> None:
        self.store.save(state)

    def up(self, nodes: int, links: dict[int, LinkProfile] | None = None) -> list[HostInfo]:
        if nodes < 1:
            raise TestbedError("a chain needs at least one layer node")
        if self.store.exists():
            self.down()
        hosts = []
        ports = free_ports(nodes + 1)
        for index in range(nodes + 1):
            name = "user" if index == 0 else f"node{index}"
            workdir = self.state_dir / name
            workdir.mkdir(parents=True, exist_ok=True)
            hosts.append(HostInfo(name=name, index=index, address="127.0.0.1", workdir=str(workdir),
                                  profile=UNSHAPED, extra={"port": ports[index]}))
        self._save({"prefix": self.prefix, "hosts": [h.to_dict() for h in hosts], "pids": {}})
        return hosts

    def hosts(self) -> list[HostInfo]:
        return [HostInfo(**h) for h in self._load()["hosts"]]

    def shell(self, host: HostInfo) -> LocalShell:
        return LocalShell(host)

    def describe(self) -> dict:
        return {"kind": self.kind, "shaping": "none (loopback)", "hosts": [h.to_dict() for h in self.hosts()]}

    # -- services ------------------------------------------------------------------
    def start_service(self, host: HostInfo, argv: list[str], log_name: str = "service.out") -> int:
        """Start a node service in its own process group; the pid is recorded for faults and down.

        A payload module run by this interpreter is forked from the warm spawner
        (see local/spawner.py); any other command is started afresh.
        """
        log = Path(host.workdir) / log_name
        warm = self._warm_start(argv)
        if warm is not None:
            spawner, call = warm
            pid = spawner.spawn(call, host.workdir, str(log))
        else:
            with open(log, "ab") as out:
                pid = subprocess.Popen(argv, cwd=host.workdir, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}).pid
        self._record_pid(host, pid)
        return pid

    def _warm_start(self, argv: list[str]) -> tuple[SpawnerClient, ModuleCall] | None:
        """The spawner and call that run ``argv`` warm, or None when it must start afresh."""
        call = ModuleCall.parse(argv)
        spawner = self._spawner(call.env.get("PYTHONPATH", "")) if call else None
        return None if spawner is None else (spawner, call)

    def _spawner(self, pythonpath: str) -> SpawnerClient | None:
        """The testbed's warm spawner for source tree ``pythonpath``, started on first use.

        One spawner serves one source tree: a service from another tree (None
        here) is started afresh rather than run with the wrong code.
        """
        client = SpawnerClient(self.state_dir / "spawner.sock", self.state_dir / "spawner.out")
        code = code_fingerprint(Path(pythonpath))
        with self._spawner_lock:
            spawner = self._load().get("spawner")
            if spawner and _alive(spawner["pid"]) and client.socket_path.exists():
                if spawner["pythonpath"] != pythonpath:
                    return None
                if spawner["code"] == code:
                    return client
                print("[local] the payload source changed: restarting the node spawner", flush=True)
            self._stop_spawner()
            pid = client.start(pythonpath)
            with self._lock:
                state = self._load()
                state["spawner"] = {"pid": pid, "pythonpath": pythonpath, "code": code}
                self._save(state)
        return client

    def _stop_spawner(self) -> None:
        """Kill the spawner (services it forked run on: they are processes of their own)."""
        if not self.store.exists():
            return
        spawner = self._load().get("spawner")
        if spawner and _alive(spawner["pid"]):
            try:
                os.killpg(spawner["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(spawner["pid"])
            _reap(spawner["pid"])

    def _record_pid(self, host: HostInfo, pid: int) -> None:
        with self._lock:
            state = self._load()
            state["pids"][host.name] = pid
            self._save(state)

    def popen(self, host: HostInfo, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` with its stdout piped back; a payload module runs attached to the warm spawner.

        Either way the returned ``Popen`` carries the service's output and exit
        status, and faults on ``host`` hit the service process itself.
        """
        warm = self._warm_start(argv)
        if warm is not None:
            spawner, call = warm
            proc, pid = spawner.popen(call, host.workdir)
        else:
            proc = subprocess.Popen(argv, cwd=host.workdir, stdout=subprocess.PIPE, stderr=None, text=True,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            pid = proc.pid
        self._record_pid(host, pid)
        return proc

    def follow(self, host: HostInfo, name: str) -> subprocess.Popen:
        return subprocess.Popen([*FOLLOW_ARGV, name], cwd=host.workdir, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)

    def pid(self, host: HostInfo) -> int:
        pid = self._load()["pids"].get(host.name)
        if pid is None:
            raise TestbedError(f"no service is running on {host.name}")
        return int(pid)

    def _signal(self, host: HostInfo, sig: signal.Signals, action: str) -> FaultResult:
        pid = self.pid(host)
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            raise TestbedError(f"{host.name}: process {pid} is already gone") from None
        result = FaultResult.now(action, host.name, f"signal {sig.name} to process group {pid}")
        if sig == signal.SIGKILL:
            _wait_gone(pid)
        return result

    def kill(self, host: HostInfo) -> FaultResult:
        return self._signal(host, signal.SIGKILL, "kill")

    def pause(self, host: HostInfo) -> FaultResult:
        return self._signal(host, signal.SIGSTOP, "pause")

    def resume(self, host: HostInfo) -> FaultResult:
        return self._signal(host, signal.SIGCONT, "resume")

    def clock_skew(self, host: HostInfo, offset_ms: float) -> FaultResult:
        """The node applies the offset to its wall stamps (payload/clock.py): every node here shares one clock."""
        pid = self.pid(host)
        write_skew(Path(host.workdir), offset_ms)
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            raise TestbedError(f"{host.name}: process {pid} is already gone") from None
        with self._lock:
            state = self._load()
            state.setdefault("skews", {})[host.name] = offset_ms
            self._save(state)
        return FaultResult.now("clock_skew", host.name, f"wall clock {offset_ms:+g} ms (SIGUSR1 to {pid})")

    def slow(self, host: HostInfo, factor: float) -> FaultResult:
        pid = self.pid(host)

        def send(sig: signal.Signals) -> None:
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                pass  # it died meanwhile: nothing left to slow

        self._stragglers.start(host.name, send, factor)
        return FaultResult.now("slow", host.name, f"runs 1/{factor:g} of every {SLOW_PERIOD_S * 1000:g} ms "
                                                 f"(SIGSTOP/SIGCONT to process group {pid})")

    def heal(self, hosts: list[HostInfo]) -> FaultResult:
        """Reset the clock skews of ``hosts`` and end their slowdowns (the impairments this testbed has)."""
        skews = self._load().get("skews", {})
        reset = [h for h in hosts if skews.get(h.name)]
        for host in reset:
            self.clock_skew(host, 0)
        slowed = self._stragglers.stop([h.name for h in hosts])
        return FaultResult.now("heal", " ".join(h.name for h in hosts),
                               f"clocks of {' '.join(h.name for h in reset) or 'none'} reset"
                               + (f", {' '.join(slowed)} at full speed" if slowed else ""))

    def stop_service(self, host: HostInfo) -> None:
        """SIGKILL the service recorded for ``host`` (a re-deploy replaces it at once); none is fine."""
        with self._lock:
            state = self._load()
            pid = state["pids"].pop(host.name, None)
            self._save(state)
        if pid is not None:
            _stop(pid, grace_s=0.0)

    def stop_services(self) -> None:
        """Stop every service this testbed started (SIGTERM, then SIGKILL); already gone is fine."""
        if not self.store.exists():
            return
        state = self._load()
        for pid in state["pids"].values():
            _stop(pid, grace_s=5.0)
        state["pids"] = {}
        self._save(state)

    def down(self) -> None:
        self.stop_services()
        self._stop_spawner()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _stop(pid: int, *, grace_s: float) -> None:
    """End process group ``pid``: continue it and SIGTERM it, then SIGKILL after ``grace_s``; reap it if ours."""
    signals = (signal.SIGCONT, signal.SIGTERM) if grace_s > 0 else ()
    for sig in signals:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
    if not signals or not _wait_gone(pid, grace_s):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(pid)
    _reap(pid)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    """Wait until ``pid`` has exited, without reaping it.

    A process this one started (the user node under ``popen``) stays waitable,
    so its ``Popen`` still reads the true exit status: reaping it here once
    made a killed user node look like a clean exit.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # not our child: gone once its parent has reaped it
            if not _alive(pid):
                return True
        time.sleep(0.01)
    return False


def _reap(pid: int) -> None:
    """Collect an exited child of ours (a no-op for anyone else's)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def python_argv(module: str, *args: str) -> list[str]:
    """Command line that runs a payload module with this interpreter."""
    return [sys.executable, "-m", module, *args]
