"""The part every inventory-driven testbed shares: hosts JARVIS does not own, listed in a file, reached over SSH.

Colosseum SRNs and Raspberry Pis are brought up from an inventory the user
writes; later calls (deploy, faults, down, even from another process) find
the inventory and everything that was set up in the testbed's state.  This
base keeps the state store, reads and caches the validated inventory, and
keeps one SSH shell per host.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

from testbed import services
from testbed.interface import FOLLOW_ARGV, FaultResult, HostInfo, Testbed, TestbedError
from testbed.ssh import SshShell
from testbed.state import StateStore, state_root


class InventoryTestbed(Testbed):
    """A testbed of the hosts in an inventory file; ``inventory`` is needed for ``up`` (later calls find it)."""

    title: ClassVar[str]  # what users call it, for messages ("Raspberry Pi")
    guide: ClassVar[str]  # where the example inventory and the walk-through are

    def __init__(self, prefix: str, *, inventory: str | Path | None = None,
                 progress: Callable[[str], None] = print) -> None:
        self.prefix = prefix
        self.state_dir = state_root() / self.kind / prefix
        self.state = StateStore(self.state_dir / "state.json", what=f"{self.title} testbed state")
        self.inventory_path = Path(inventory).expanduser().resolve() if inventory else None
        self.progress = progress
        self._lock = threading.Lock()
        self._shells: dict[str, SshShell] = {}
        self._loaded: tuple[tuple[Path, int], BaseModel] | None = None

    @abc.abstractmethod
    def load_inventory(self, path: Path) -> BaseModel:
        """Read and validate an inventory file of this testbed's kind."""

    def inventory_file(self) -> Path:
        """The inventory given, else the one the running testbed was brought up with."""
        path = self.inventory_path or (self.state.load() or {}).get("inventory")
        if path is None:
            raise TestbedError(f"the {self.title} testbed needs an inventory: pass --inventory FILE "
                               f"(see {self.guide})")
        return Path(path)

    def inventory(self):
        """The validated inventory, read once per file version (deploy asks for shells many times)."""
        path = self.inventory_file()
        key = (path, path.stat().st_mtime_ns if path.exists() else 0)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, self.load_inventory(path))
        return self._loaded[1]

    @abc.abstractmethod
    def capacity(self) -> int:
        """How many layer nodes the inventory can hold (``fab deploy`` brings that many up by default)."""

    def is_up(self) -> bool:
        return bool((self.state.load() or {}).get("ready"))

    def _ready(self) -> dict:
        data = self.state.load() or {}
        if not data.get("ready"):
            raise TestbedError(f"{self.title} testbed {self.prefix!r} is not up: run "
                               f"`fab up --testbed {self.kind} --inventory FILE --nodes N`")
        return data

    def _cached_shell(self, name: str, make: Callable[[], SshShell]) -> SshShell:
        """The shell of host ``name``, made once by ``make`` (each host keeps its own connection)."""
        with self._lock:
            if name not in self._shells:
                self._shells[name] = make()
            return self._shells[name]

    # -- node services: detached in their own process group, pid recorded in the state -----------------

    def start_service(self, host: HostInfo, argv: list[str], log_name: str = "service.out") -> int:
        """Start the node service detached in its own process group; its pid is recorded for faults and down."""
        result = self.shell(host).run(services.service_command(argv, log_name))
        pid = int(result.stdout.strip().splitlines()[-1])
        self.state.update(lambda d: d["services"].update({host.name: {"host": host.ssh_host, "pid": pid}}))
        return pid

    def stop_service(self, host: HostInfo) -> None:
        """Kill the recorded service's process group (only if that pid still runs the payload)."""
        service = self._ready()["services"].get(host.name)
        if service is not None:
            self.shell(host).run(services.stop_service_command(service["pid"]), check=False, timeout=15)
            self.state.update(lambda d: d["services"].pop(host.name, None))

    def follow(self, host: HostInfo, name: str):
        """``tail -F`` over the host's SSH connection (a channel of its own beside the shell's commands)."""
        return self.shell(host).popen([*FOLLOW_ARGV, name], stderr=False)

    def _service_pid(self, host: HostInfo) -> int:
        service = self._ready()["services"].get(host.name)
        if service is None:
            raise TestbedError(f"{host.name}: no node service was started there")
        return int(service["pid"])

    # Process faults: the node service gets a signal, and each returns once ``ps`` on the host shows its effect.
    def _signal(self, host: HostInfo, signal: str, until: str, action: str) -> FaultResult:
        """Signal the service's process group and return once ``ps`` shows the effect (one round trip)."""
        pid = self._service_pid(host)
        result = self.shell(host).run(services.signal_command(pid, signal, until), check=False)
        if result.exit_code == services.NOT_RUNNING:
            raise TestbedError(f"{host.name}: node service (pid {pid}) is not running: {result.stderr.strip()}")
        if not result.ok:
            raise TestbedError(f"{host.name}: node service (pid {pid}) did not take SIG{signal} within 5 s")
        return FaultResult.now(action, host.name, f"SIG{signal} to process group {pid} on {host.ssh_host}")

    def kill(self, host: HostInfo) -> FaultResult:
        return self._signal(host, *services.PROCESS_SIGNALS["kill"], "kill")

    def pause(self, host: HostInfo) -> FaultResult:
        return self._signal(host, *services.PROCESS_SIGNALS["pause"], "pause")

    def resume(self, host: HostInfo) -> FaultResult:
        return self._signal(host, *services.PROCESS_SIGNALS["resume"], "resume")

    @abc.abstractmethod
    def _teardown(self, data: dict) -> list[str]:
        """Undo what ``data`` (the state) records; return what could not be undone (empty: all of it)."""

    @contextlib.contextmanager
    def torn_down_on_failure(self) -> Iterator[None]:
        """Around ``up``'s steps: if one fails, undo what the others did, then re-raise (with what could not
        be undone noted)."""
        try:
            yield
        except BaseException as failure:
            self.progress(f"[{self.kind}] setup failed; tearing down what was started")
            try:
                self.down()
            except TestbedError as teardown:
                failure.add_note(str(teardown))
            raise

    def down(self) -> None:
        """Undo everything recorded, then forget the testbed; safe to repeat.  If something could not be
        undone the state is kept, so ``fab down`` can be run again."""
        data = self.state.load() or {}
        try:
            problems = self._teardown(data) if data else []
        finally:
            self._close_shells()
        if problems:
            raise TestbedError(f"{self.title} teardown incomplete (state kept; run `fab down --testbed {self.kind}` "
                               "again):\n" + "\n".join(problems))
        self.state.remove()

    def _close_shells(self) -> None:
        with self._lock:
            for shell in self._shells.values():
                shell.close()
            self._shells.clear()
