"""Link shaping backends: kernel netem where the kernel has it, the userspace shaper elsewhere.

Both implement one :class:`Shaper` protocol, so the testbed never asks which
backend it has.  Shaping is data first: :func:`shaper_config` returns the userspace shaper's
config and :func:`netem_commands` the ``tc``/``ip`` argv lists, both before
anything is applied, so tests assert on them and the run directory can
record them.  Both give a LinkProfile the same meaning: per direction, random
loss, a rate limiter with a ``queue_pkts`` droptail queue, then delay with
jitter, in FIFO order unless ``preserve_order`` is false.  With netem, FIFO
order under jitter comes from always setting a rate (netem orders packets
behind the previous one only in rate mode), and ``limit`` covers the queue
plus the packets in flight in the delay line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from testbed.profiles import LinkProfile
from testbed.interface import TestbedError

from emu import system
from emu.plan import DATA_IF, Plan
from testbed.netem import netem_argv
from testbed.profiles import directions

PARTITION_GROUP = 1
_DIRECTION_FIELDS = ("delay_ms", "jitter_ms", "distribution", "loss_pct", "rate_mbit", "queue_pkts", "trace")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def direction_dict(direction: LinkProfile) -> dict:
    return {k: getattr(direction, k) for k in _DIRECTION_FIELDS}


@dataclass(frozen=True)
class Impairments:
    """What the userspace switch applies beyond profiles and partition groups (emu/shaper.py): per node, the
    fields of ``emu.shaper.Impairment``; and one-way drops as (from node, to node)."""

    per_node: Mapping[int, Mapping] = field(default_factory=dict)
    one_way: tuple[tuple[int, int], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.per_node or self.one_way)


NO_IMPAIRMENTS = Impairments()
Record = Callable[[list[dict]], None]  # saves processes ({"pid", "what", "match"}) in the testbed's manifest


class Shaper(Protocol):
    """A way to give every access link its profile, and every node its partition group."""

    name: str

    def describe(self) -> str:
        """One line for testbed.json: what shapes the links."""

    def links(self) -> list[str]:
        """Root-namespace links the backend creates besides the testbed's own (recorded before creation)."""

    def wiring(self) -> list[str]:
        """``ip -batch`` lines that create :meth:`links`."""

    def start(self, profiles: dict[int, LinkProfile], groups: dict[int, int], generation: int, record: Record
              ) -> None:
        """Put the first profiles in force; a process it starts is passed to ``record`` before it is waited for."""

    def apply(self, profiles: dict[int, LinkProfile], groups: dict[int, int], generation: int, only: set[int],
              impairments: Impairments = NO_IMPAIRMENTS) -> tuple[int, int]:
        """Put changed profiles, groups and impairments in force (``only``: the nodes that changed); return
        (wall ns, mono ns) at which they took effect."""


# -- userspace ------------------------------------------------------------------------------


def shaper_config(plan: Plan, profiles: dict[int, LinkProfile], groups: dict[int, int], *, generation: int,
                  preserve_order: bool = True, seed: int | None = None,
                  impairments: Impairments = NO_IMPAIRMENTS) -> dict:
    """The userspace shaper's full config: one port per node with its uplink, downlink, group and impairment."""
    ports = []
    for node in plan.nodes:
        up, down = directions(profiles[node.index])
        ports.append({"node": node.index, "ifname": node.root_if, "mac": node.mac, "profile": profiles[node.index].name,
                      "uplink": direction_dict(up), "downlink": direction_dict(down),
                      "group": groups.get(node.index, 0),
                      "impairment": dict(impairments.per_node.get(node.index, {}))})
    return {"generation": generation, "preserve_order": preserve_order, "seed": seed,
            "status_file": str(Path(plan.state_dir) / "shaper.status.json"), "ports": ports,
            "one_way": [list(pair) for pair in impairments.one_way]}


class UserspaceShaper:
    """Runs ``python -m emu.shaper`` for one testbed and reconfigures it live with SIGHUP.

    ``pid`` is the running shaper's (from the manifest) once it has started.
    """

    name = "userspace"

    def __init__(self, plan: Plan, *, preserve_order: bool = True, seed: int | None = None, pid: int | None = None):
        self.plan = plan
        self.preserve_order = preserve_order
        self.seed = seed
        self.pid = pid
        root = Path(plan.state_dir)
        self.config_path = root / "shaper.json"
        self.status_path = root / "shaper.status.json"
        self.log_path = root / "shaper.log"

    def describe(self) -> str:
        return ("userspace (python -m emu.shaper: AF_PACKET switch with per-direction loss, "
                "rate + droptail queue, delay + jitter; used where the kernel has no netem)")

    def links(self) -> list[str]:
        return []

    def wiring(self) -> list[str]:
        return []

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "emu.shaper", "--config", str(self.config_path)]

    def start(self, profiles: dict[int, LinkProfile], groups: dict[int, int], generation: int, record: Record
              ) -> None:
        proc = self.launch(profiles, groups, generation)
        self.pid = proc.pid
        record([{"pid": proc.pid, "what": "shaper", "match": str(self.config_path)}])
        self.wait_applied(generation, proc)

    def _write(self, config: dict) -> None:
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        os.replace(tmp, self.config_path)

    def launch(self, profiles: dict[int, LinkProfile], groups: dict[int, int], generation: int
               ) -> subprocess.Popen:
        """Start the shaper process (the caller records its pid, then calls :meth:`wait_applied`)."""
        self._write(shaper_config(self.plan, profiles, groups, generation=generation,
                                  preserve_order=self.preserve_order, seed=self.seed))
        self.status_path.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                                          os.environ.get("PYTHONPATH")]))}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, cwd=PROJECT_ROOT)

    def wait_applied(self, generation: int, proc: subprocess.Popen | None = None, timeout: float = 10.0) -> dict:
        """Wait until the shaper reports ``generation`` in force; return its status (with the apply time)."""
        status: dict = {}

        def applied() -> bool:
            nonlocal status
            if proc is not None and proc.poll() is not None:
                raise TestbedError(f"the shaper exited with {proc.returncode}: {self._log_tail()}")
            try:
                status = json.loads(self.status_path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return False
            return status.get("generation") == generation or bool(status.get("error"))

        if not system.wait_until(applied, timeout=timeout, interval=0.002):
            raise TestbedError(f"the shaper did not apply config generation {generation} within {timeout:.0f}s: "
                               f"{self._log_tail()}")
        if status.get("error"):
            raise TestbedError(f"the shaper rejected config generation {generation}: {status['error']}")
        return status

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text()[-2000:].strip() or "(no output)"
        except OSError:
            return "(no log)"

    def apply(self, profiles: dict[int, LinkProfile], groups: dict[int, int], generation: int,
              only: set[int] | None = None, impairments: Impairments = NO_IMPAIRMENTS) -> tuple[int, int]:
        """Reconfigure the running shaper (every port at once); return (wall ns, mono ns) at which it took effect."""
        if self.pid is None:
            raise TestbedError("the shaper has not been started")
        self._write(shaper_config(self.plan, profiles, groups, generation=generation,
                                  preserve_order=self.preserve_order, seed=self.seed, impairments=impairments))
        self.status_path.unlink(missing_ok=True)  # so an old status (or an old error) is never read as the answer
        try:
            os.kill(self.pid, signal.SIGHUP)
        except ProcessLookupError:
            raise TestbedError(f"the shaper (pid {self.pid}) is not running: {self._log_tail()}") from None
        status = self.wait_applied(generation)
        return int(status["applied_wall_ns"]), int(status["applied_mono_ns"])


# -- netem ------------------------------------------------------------------------------------


def netem_bridges(plan: Plan) -> tuple[str, str]:
    """The data-plane bridge and the one partitioned nodes are moved to."""
    return f"{plan.tag}br", f"{plan.tag}pb"


def netem_commands(plan: Plan, profiles: dict[int, LinkProfile], groups: dict[int, int], *,
                   preserve_order: bool = True, only: set[int] | None = None) -> list[list[str]]:
    """The argv lists that put ``profiles`` and ``groups`` in force (for nodes ``only``, default all).

    Uplink is netem on the node-side end, downlink on the root-side end.
    """
    main, cut = netem_bridges(plan)
    commands = []
    for node in plan.nodes:
        if only is not None and node.index not in only:
            continue
        up, down = directions(profiles[node.index])
        commands.append(netem_argv(DATA_IF, up, netns=node.namespace, preserve_order=preserve_order))
        commands.append(netem_argv(node.root_if, down, preserve_order=preserve_order))
        bridge = cut if groups.get(node.index, 0) == PARTITION_GROUP else main
        commands.append(["ip", "link", "set", node.root_if, "master", bridge])
    return commands


def probe_netem(namespace: str) -> bool:
    """Whether this kernel has netem: try it on the loopback of a throwaway namespace (caller records the name)."""
    system.run(["ip", "netns", "add", namespace])
    try:
        probe = ["tc", "-n", namespace, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]
        return system.run(probe, check=False).returncode == 0
    finally:
        system.run(["ip", "netns", "del", namespace], check=False)


class NetemShaper:
    """Kernel netem on both ends of every access link, joined by a Linux bridge."""

    name = "netem"

    def __init__(self, plan: Plan, *, preserve_order: bool = True):
        self.plan = plan
        self.preserve_order = preserve_order

    def describe(self) -> str:
        return "netem (kernel qdisc on both ends of each access link, Linux bridge as the switch)"

    def links(self) -> list[str]:
        return list(netem_bridges(self.plan))

    def wiring(self) -> list[str]:
        """``ip -batch`` lines that create both bridges (the caller records them first)."""
        lines = []
        for bridge in self.links():
            lines += [f"link add {bridge} type bridge", f"link set {bridge} up"]
        return lines

    def start(self, profiles: dict[int, LinkProfile], groups: dict[int, int], generation: int, record: Record
              ) -> None:
        self.apply(profiles, groups, generation)

    def apply(self, profiles: dict[int, LinkProfile], groups: dict[int, int], generation: int = 0,
              only: set[int] | None = None, impairments: Impairments = NO_IMPAIRMENTS) -> tuple[int, int]:
        """Run the commands; return (wall ns, mono ns) right after the last one took effect."""
        if impairments:
            raise TestbedError("the netem backend does not emulate blackholes, one-way partitions, corruption, "
                               "duplication or reordering: use backend 'userspace'")
        for argv in netem_commands(self.plan, profiles, groups, preserve_order=self.preserve_order, only=only):
            system.run(argv)
        return time.time_ns(), time.monotonic_ns()
