"""The one Testbed interface that local, emu, colosseum and rpi implement.

Shaped like Mininet (nodes that run commands, links with shaping you can read
as data before it is applied) and Fabric's Group (per-host results, failures
reported, not hidden).  Orchestration (deploy, run, collect) only ever talks
to this interface, so a scenario runs unchanged on every testbed.
"""

from __future__ import annotations

import abc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


class TestbedError(RuntimeError):
    """A testbed could not do what was asked (unreachable host, missing root, failed command)."""

    __test__ = False  # not a pytest test class despite the name


@dataclass(frozen=True)
class LinkProfile:
    """One direction-aware access-link profile.  Units: ms, percent, Mbit/s, packets."""

    name: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "normal"
    loss_pct: float = 0.0
    rate_mbit: float | None = None
    queue_pkts: int = 1000
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HostInfo:
    """What orchestration needs to know about one node of a testbed.

    ``index`` 0 is the end-user node, 1..N are layer nodes.  ``address`` is the
    data-plane IP that other nodes connect to; ``ssh`` is how the control side
    reaches the host (None for the rootless local testbed).
    """

    name: str
    index: int
    address: str
    workdir: str
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    namespace: str | None = None
    profile: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FaultResult:
    """When a fault primitive took effect (wall-clock and monotonic ns), for faults.csv."""

    action: str
    target: str
    effective_wall_ns: int
    effective_mono_ns: int
    detail: str = ""

    @classmethod
    def now(cls, action: str, target: str, detail: str = "") -> "FaultResult":
        return cls(action, target, time.time_ns(), time.monotonic_ns(), detail)


@dataclass(frozen=True)
class CommandResult:
    """Outcome of a command on a host."""

    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Shell(Protocol):
    """How orchestration runs commands and moves files on one host (local process or SSH)."""

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True) -> CommandResult: ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...


class Testbed(abc.ABC):
    """A set of hosts plus the faults that can be injected into them.

    Implementations must make ``down`` exact and safe to repeat (everything they
    create is named with their prefix and recorded), and every fault primitive
    must return only once the fault has taken effect.
    """

    kind: str = "abstract"

    @abc.abstractmethod
    def up(self, nodes: int, links: dict[int, LinkProfile] | None = None) -> list[HostInfo]:
        """Create or attach to ``nodes`` layer nodes plus the user node; return them in index order."""

    @abc.abstractmethod
    def hosts(self) -> list[HostInfo]:
        """The hosts of the testbed as it stands (after ``up``)."""

    @abc.abstractmethod
    def shell(self, host: HostInfo) -> Shell:
        """A Shell on ``host`` for deploy, service start and collection."""

    @abc.abstractmethod
    def down(self) -> None:
        """Remove everything this testbed created; succeed if it is already gone."""

    def start_service(self, host: HostInfo, argv: list[str], log_name: str = "service.out") -> int:
        """Start a detached service on ``host`` (own session, output to ``log_name``); return its pid."""
        import shlex

        command = (f"cd {shlex.quote(host.workdir)} && setsid nohup {shlex.join(argv)} > {shlex.quote(log_name)} "
                   f"2>&1 < /dev/null & echo $!")
        result = self.shell(host).run(command, timeout=30)
        return int(result.stdout.strip().splitlines()[-1])

    def popen(self, host: HostInfo, argv: list[str]):
        """Start ``argv`` on ``host`` with its stdout piped back here (a ``subprocess.Popen``)."""
        raise TestbedError(f"the {self.kind} testbed cannot stream a command's output")

    def describe(self) -> dict:
        """Testbed description written into the run directory."""
        return {"kind": self.kind, "hosts": [h.to_dict() for h in self.hosts()]}

    # Fault primitives: each returns when the fault took effect.
    @abc.abstractmethod
    def kill(self, host: HostInfo) -> FaultResult: ...

    @abc.abstractmethod
    def pause(self, host: HostInfo) -> FaultResult: ...

    @abc.abstractmethod
    def resume(self, host: HostInfo) -> FaultResult: ...

    def link_down(self, host: HostInfo) -> FaultResult:
        raise TestbedError(f"the {self.kind} testbed cannot cut links")

    def link_up(self, host: HostInfo) -> FaultResult:
        raise TestbedError(f"the {self.kind} testbed cannot restore links")

    def degrade(self, host: HostInfo, profile: LinkProfile) -> FaultResult:
        raise TestbedError(f"the {self.kind} testbed cannot shape links")

    def partition(self, hosts: list[HostInfo]) -> FaultResult:
        raise TestbedError(f"the {self.kind} testbed cannot partition nodes")
