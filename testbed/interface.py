"""The one Testbed interface that the local, emu, Colosseum and Raspberry Pi testbeds implement.

Shaped like Mininet (nodes that run commands, links with shaping you can read
as data before it is applied) and Fabric's Group (per-host results, failures
reported, not hidden).  Orchestration (deploy, run, collect) only ever talks
to this interface, so a scenario runs unchanged on every testbed.  What a
caller may rely on is stated here rather than probed: where a testbed keeps
its state (``state_dir``), which faults it can inject (``faults``, checked
when a scenario is loaded, before anything starts), how a node service is
started and stopped, and whether it can print a dry run.
"""

from __future__ import annotations

import abc
import enum
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar, Protocol

from payload.errors import JarvisError
from testbed.profiles import LinkProfile
from testbed.services import service_command


class TestbedError(JarvisError):
    """A testbed could not do what was asked (unreachable host, missing root, failed command)."""

    __test__ = False  # not a pytest test class despite the name


class FaultKind(str, enum.Enum):
    """Fault primitives; a testbed declares the ones it supports in ``Testbed.faults``."""

    KILL = "kill"
    PAUSE = "pause"
    RESUME = "resume"
    LINK_DOWN = "link_down"
    LINK_UP = "link_up"
    FLAP = "flap"  # link_down/link_up with a period and duty cycle: the runner drives it, so any link-fault testbed can
    DEGRADE = "degrade"
    PARTITION = "partition"
    ONE_WAY_PARTITION = "one_way_partition"  # frames from some nodes to others dropped, the other way delivered
    BLACKHOLE = "blackhole"  # every frame to and from a node dropped, the link up: no RST, no ICMP, no carrier loss
    CORRUPT = "corrupt"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    SLOW = "slow"  # a straggler: the node runs 1/factor of the time (testbed/straggler.py), alive and answering
    CLOCK_SKEW = "clock_skew"  # the node's wall clock off by offset_ms (payload/clock.py), where hosts share one
    HEAL = "heal"  # ends the impairments above, a slowdown and a clock skew, on the nodes named

    @property
    def undo(self) -> "FaultKind | None":
        """The action that ends this one when it has a duration (a pause is resumed, a cut link restored)."""
        if self in IMPAIRMENTS or self in (FaultKind.CLOCK_SKEW, FaultKind.SLOW):
            return FaultKind.HEAL
        return {FaultKind.PAUSE: FaultKind.RESUME, FaultKind.LINK_DOWN: FaultKind.LINK_UP}.get(self)


IMPAIRMENTS = frozenset({FaultKind.ONE_WAY_PARTITION, FaultKind.BLACKHOLE, FaultKind.CORRUPT, FaultKind.DUPLICATE,
                         FaultKind.REORDER})
PCT_FAULTS = frozenset({FaultKind.CORRUPT, FaultKind.DUPLICATE, FaultKind.REORDER})  # each takes ``pct``
PROCESS_FAULTS = frozenset({FaultKind.KILL, FaultKind.PAUSE, FaultKind.RESUME})
LINK_FAULTS = frozenset({FaultKind.LINK_DOWN, FaultKind.LINK_UP, FaultKind.FLAP})
SHAPING_FAULTS = PROCESS_FAULTS | LINK_FAULTS | {FaultKind.DEGRADE, FaultKind.PARTITION}  # what netem shaping gives
# Testbeds whose hosts share this machine's clock and processes (local, emu): clock skew and stragglers.
CLOCK_FAULTS = frozenset({FaultKind.CLOCK_SKEW, FaultKind.SLOW, FaultKind.HEAL})
ALL_FAULTS = frozenset(FaultKind)
UNDO_ACTIONS = frozenset(k.undo for k in FaultKind if k.undo is not None)


UNSHAPED = "loopback"  # HostInfo.profile of a host whose link nothing shapes (the local testbed)


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
    profile: str | None = None  # a link profile's name, or UNSHAPED where no testbed shapes the host's link
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


FOLLOW_ARGV = ("tail", "-n", "+1", "-F", "-s", "0.1")  # GNU tail: inotify where it can, 100 ms polls where not
SERVICE_PID = "service.pid"  # in a host's work directory: the running node service's pid (its process group)


def stop_pid_command(pid_file: str = SERVICE_PID) -> str:
    """Kill the process group named by ``pid_file`` and remove the file; nothing to stop is fine."""
    q = shlex.quote(pid_file)
    return (f"if [ -f {q} ]; then kill -9 -- -$(cat {q}) 2>/dev/null || kill -9 $(cat {q}) 2>/dev/null; "
            f"rm -f {q}; sleep 0.2; fi; true")


class Testbed(abc.ABC):
    """A set of hosts plus the faults that can be injected into them.

    Implementations make ``down`` exact and safe to repeat (everything they
    create is named with their prefix and recorded in ``state_dir``), and every
    fault primitive returns only once the fault has taken effect.
    """

    kind: ClassVar[str] = "abstract"
    faults: ClassVar[frozenset[FaultKind]] = PROCESS_FAULTS
    state_dir: Path  # where this testbed's state (manifest, deployment, job files) lives on the control machine

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

    # -- node services ------------------------------------------------------------------------------

    def start_service(self, host: HostInfo, argv: list[str], log_name: str = "service.out") -> int:
        """Start a detached service on ``host`` (own session, output to ``log_name``); return its pid.

        The pid is kept in ``service.pid`` in the host's work directory, where
        :meth:`stop_service` finds it.
        """
        shell = self.shell(host)
        pid = int(shell.run(service_command(argv, log_name), timeout=30).stdout.strip().splitlines()[-1])
        shell.run(f"echo {pid} > {SERVICE_PID}")
        return pid

    def stop_service(self, host: HostInfo) -> None:
        """Stop the node service running on ``host`` (a re-deploy replaces it); none running is fine."""
        self.shell(host).run(stop_pid_command(), check=False, timeout=15)

    def popen(self, host: HostInfo, argv: list[str]):
        """Start ``argv`` on ``host`` with its stdout piped back here (a ``subprocess.Popen``-like object)."""
        raise TestbedError(f"the {self.kind} testbed cannot stream a command's output")

    def follow(self, host: HostInfo, name: str):
        """Stream the lines of file ``name`` in ``host``'s work directory, from its start and as they are appended
        (a ``subprocess.Popen``-like object: ``stdout``, ``terminate``, ``wait``); a file not there yet is waited
        for.  What the live dashboard reads node logs through; nothing about the node service changes."""
        raise TestbedError(f"the {self.kind} testbed cannot follow a file on its hosts")

    def describe(self) -> dict:
        """Testbed description written into the run directory."""
        return {"kind": self.kind, "hosts": [h.to_dict() for h in self.hosts()]}

    def dry_run(self, nodes: int, links: dict[int, LinkProfile] | None = None) -> str:
        """Every remote command ``up`` (with ``links``) would run for ``nodes`` layer nodes, per host, without
        connecting."""
        raise TestbedError(f"--dry-run is not available for the {self.kind} testbed (it runs on this machine: "
                           "try it for real, `fab down` undoes it)")

    # -- faults --------------------------------------------------------------------------------------

    def supported_faults(self) -> frozenset[FaultKind]:
        """The faults this testbed can inject as configured (``faults`` is what its class implements; an
        inventory may narrow it, e.g. SSH hosts whose links are not shaped)."""
        return self.faults

    def inject(self, action: FaultKind, hosts: list[HostInfo], *, profile: LinkProfile | None = None,
               pct: float | None = None, peers: list[HostInfo] | None = None, offset_ms: float | None = None,
               factor: float | None = None) -> list[FaultResult]:
        """Apply one fault primitive to ``hosts``; return when each took effect (a partition is one result).

        ``pct`` is the share of frames a corrupt, duplicate or reorder touches; ``peers`` are the nodes a
        one-way partition stops ``hosts`` from reaching; ``offset_ms`` how far a clock skew sets their
        clocks off; ``factor`` how many times slower a straggler runs.  A primitive on several hosts is applied to all of them
        at once (a correlated failure: a room losing power), not one after another.
        """
        # What the class does not implement is refused before anything is read (an inventory, the manifest).
        supported = self.faults if action not in self.faults else self.supported_faults()
        if action not in supported:
            raise TestbedError(f"the {self.kind} testbed cannot {action.value.replace('_', ' ')} "
                               f"(it supports {', '.join(sorted(f.value for f in supported))})")
        if action == FaultKind.PARTITION:
            return [self.partition(hosts)]
        if action == FaultKind.ONE_WAY_PARTITION:
            if not hosts or not peers:
                raise TestbedError("a one-way partition needs nodes on both sides (from and to)")
            return [self.one_way_partition(hosts, peers)]
        if action == FaultKind.HEAL:
            return [self.heal(hosts)]
        if action == FaultKind.FLAP:
            raise TestbedError("flap is a schedule of link_down and link_up, run by the fault runner")
        if action == FaultKind.DEGRADE:
            if profile is None:
                raise TestbedError("degrade needs a link profile")
            primitive = partial(self.degrade, profile=profile)
        elif action == FaultKind.SLOW:
            if factor is None or factor <= 1:
                raise TestbedError("slow needs a factor above 1 (how many times slower the node runs)")
            primitive = partial(self.slow, factor=factor)
        elif action == FaultKind.CLOCK_SKEW:
            if offset_ms is None:
                raise TestbedError("clock_skew needs offset_ms")
            primitive = partial(self.clock_skew, offset_ms=offset_ms)
        elif action in IMPAIRMENTS:
            if action in PCT_FAULTS and not (pct is not None and 0 < pct <= 100):
                raise TestbedError(f"{action.value} needs pct, the share of frames it touches, in (0, 100]")
            primitive = partial(self.impair, kind=action, pct=pct or 100.0)
        else:
            primitive = {FaultKind.KILL: self.kill, FaultKind.PAUSE: self.pause, FaultKind.RESUME: self.resume,
                         FaultKind.LINK_DOWN: self.link_down, FaultKind.LINK_UP: self.link_up}[action]
        if len(hosts) <= 1:
            return [primitive(h) for h in hosts]
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            return list(pool.map(primitive, hosts))

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

    def one_way_partition(self, sources: list[HostInfo], sinks: list[HostInfo]) -> FaultResult:
        raise TestbedError(f"the {self.kind} testbed cannot partition one way")

    def impair(self, host: HostInfo, kind: FaultKind, pct: float) -> FaultResult:
        """Put a blackhole, corruption, duplication or reordering (``pct`` of frames) on ``host``'s link."""
        raise TestbedError(f"the {self.kind} testbed cannot {kind.value} frames")

    def clock_skew(self, host: HostInfo, offset_ms: float) -> FaultResult:
        """Set ``host``'s node clock ``offset_ms`` off (the node applies it to every wall stamp it logs)."""
        raise TestbedError(f"the {self.kind} testbed cannot skew clocks")

    def slow(self, host: HostInfo, factor: float) -> FaultResult:
        """Make ``host``'s node a straggler, ``factor`` times slower until healed (testbed/straggler.py)."""
        raise TestbedError(f"the {self.kind} testbed cannot slow nodes down")

    def heal(self, hosts: list[HostInfo]) -> FaultResult:
        """End every impairment (and one-way partition) on ``hosts``' links, their clock skews and slowdowns."""
        raise TestbedError(f"the {self.kind} testbed cannot heal impairments")
