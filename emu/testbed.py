"""EmuTestbed: N+1 network namespaces with real sshd, a jump-host gateway and shaped access links.

Layout (names and addresses in :mod:`emu.plan`)::

    orchestrator (root ns) --10.215.K.0/30--> gateway ns (sshd :2222, bridge mgmtbr)
                                                 |  management 10.214.K.0/24, unshaped
             +-----------------+-----------------+----------------+
          user ns           node1 ns          node2 ns   ...   (sshd :22000+i, workdir)
             |  data 10.213.K.0/24: access links, shaped per direction
             +---- root-side veth ends ---- switch: userspace shaper (or bridge + netem)

SSH rides the management network, so the orchestrator keeps control of a node
(and can collect its logs) while that node's data link is down, degraded or
partitioned, as Colosseum's ``can0`` stays up whatever the RF does.

Everything is named with the prefix (root-side interfaces with its tag),
recorded in the manifest before it is created, and removed by ``down``
exactly; ``up`` over a crashed run cleans the leftovers first.

Fault semantics: ``kill``/``pause``/``resume`` signal every process in the
node's namespace except sshd (the daemon and its sessions), so the services
die or stop while log collection over SSH still works.  ``link_down``/``up``
set the switch-side end of the node's access link down/up.  ``degrade`` swaps
the node's profile live.  ``partition(hosts)`` cuts those nodes from the rest
(they still reach each other); ``partition([])`` heals.  With the userspace
shaper (the switch), ``one_way_partition``, ``blackhole``, ``corrupt``,
``duplicate`` and ``reorder`` act on frames as emu/shaper.py describes, and
``heal`` ends them on the nodes named; netem backends do not offer these.
``clock_skew`` sets a node's wall clock off (the namespaces share the host's
clock, so the node applies the offset itself: payload/clock.py); heal resets it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path

from emu import sshd, state, system
from emu.plan import DATA_IF, MGMT_BRIDGE, MGMT_IF, UPLINK_IF, NodePlan, Plan, check_prefix, make_plan
from emu.shaping import PARTITION_GROUP, Impairments, NetemShaper, Shaper, UserspaceShaper, probe_netem
from testbed.fanout import on_each
from payload.clock import write_skew
from testbed.straggler import SLOW_PERIOD_S, Stragglers
from testbed.interface import ALL_FAULTS, CLOCK_FAULTS, FOLLOW_ARGV, SHAPING_FAULTS, FaultKind, FaultResult, HostInfo, \
    Testbed, TestbedError
from testbed.profiles import DEFAULT_PROFILE, LinkProfile, load_profiles, profile_from_dict, profile_to_dict
from testbed.shipping import CODE_ARCHIVE, payload_archive, unpack_command
from testbed.ssh import SshAccess, SshShell, connect, in_workdir

BACKENDS = ("auto", "userspace", "netem")
# rx off too: a veth trusts the checksum of a frame that no NIC checked, so a corrupted frame would reach TCP intact
OFFLOADS = ["tso", "off", "gso", "off", "gro", "off", "tx", "off", "rx", "off"]


class EmuTestbed(Testbed):
    """The emulated testbed on this machine (root required)."""

    kind = "emu"
    faults = ALL_FAULTS

    def __init__(self, prefix: str = "jv-emu", *, backend: str = "auto", preserve_order: bool = True,
                 seed: int | None = None, profiles_file: Path | str | None = None):
        if backend not in BACKENDS:
            raise TestbedError(f"unknown shaping backend {backend!r}; choose one of {BACKENDS}")
        self.prefix = check_prefix(prefix)
        self.state_dir = state.state_dir(prefix)
        self.backend = backend
        self.preserve_order = preserve_order
        self.seed = seed
        self.profiles_file = profiles_file
        self._lock = threading.Lock()
        self._shells: dict[str, SshShell] = {}
        self._stragglers = Stragglers()

    # -- manifest ----------------------------------------------------------------------------

    def _manifest(self) -> dict:
        manifest = state.load(self.prefix)
        if manifest is None or not manifest.get("ready"):
            raise TestbedError(f"emu testbed {self.prefix!r} is not up: run `fab up --testbed emu --nodes N`")
        return manifest

    def _plan(self, manifest: dict) -> Plan:
        return Plan.from_dict(manifest["plan"])

    @staticmethod
    def _profiles(manifest: dict) -> dict[int, LinkProfile]:
        return {int(i): profile_from_dict(p["name"], p) for i, p in manifest["profiles"].items()}

    @staticmethod
    def _groups(manifest: dict) -> dict[int, int]:
        return {int(i): int(g) for i, g in manifest["groups"].items()}

    @staticmethod
    def _impairments(manifest: dict) -> Impairments:
        return Impairments({int(i): d for i, d in manifest.get("impairments", {}).items()},
                           tuple((int(a), int(b)) for a, b in manifest.get("one_way", [])))

    def supported_faults(self) -> frozenset[FaultKind]:
        """All faults with the userspace switch; what netem shaping gives with the netem backend."""
        manifest = state.load(self.prefix)
        netem = manifest is not None and manifest.get("backend") == "netem"
        return SHAPING_FAULTS | CLOCK_FAULTS if netem else self.faults

    # -- up ------------------------------------------------------------------------------------

    def up(self, nodes: int, links: Mapping[int, LinkProfile] | None = None) -> list[HostInfo]:
        """Create the testbed; nodes without an entry in ``links`` get the ``wifi`` profile."""
        system.require_root()
        system.require_tools()
        stray = sorted(set(links or {}) - set(range(nodes + 1)))
        if stray:
            raise TestbedError(f"link profiles given for nodes {stray}, but the testbed has nodes 0..{nodes}")
        default = load_profiles(self.profiles_file)[DEFAULT_PROFILE]
        profiles = {i: (links or {}).get(i, default) for i in range(nodes + 1)}
        with state.registry_lock():
            if state.load(self.prefix) is not None:
                self._teardown()
            plan = make_plan(self.prefix, state.allocate_slot(self.prefix), nodes, self.state_dir)
            self._check_free(plan)
            manifest = {"prefix": self.prefix, "slot": plan.slot, "plan": plan.to_dict(), "ready": False,
                        "backend": None, "namespaces": [], "links": [], "processes": [],
                        "profiles": {str(i): profile_to_dict(p) for i, p in profiles.items()},
                        "groups": {}, "generation": 1, "created_wall_ns": time.time_ns(),
                        "options": {"preserve_order": self.preserve_order, "seed": self.seed}}
            state.save(self.prefix, manifest)
        try:
            self._build(plan, manifest, profiles)
            self._ship_payload(plan)
        except BaseException:
            self.down()
            raise
        return self.hosts()

    def _ship_payload(self, plan: Plan) -> None:
        """Put the payload archive into every node's ``code/`` over its own sshd, as on SRNs and Pis.

        The node interpreter stays this machine's venv (the namespaces share its
        disk); the code a node runs is the code shipped to it.
        """
        archive = payload_archive(Path(plan.state_dir))

        def one(host: HostInfo) -> None:
            shell = self.shell(host)
            shell.run("mkdir -p code")
            shell.put(archive, f"code/{CODE_ARCHIVE}")
            shell.run(unpack_command(f"{host.workdir}/code"))

        on_each({h.name: partial(one, h) for h in self.hosts()}, what="shipping the payload")

    def _check_free(self, plan: Plan) -> None:
        taken = [ns for ns in plan.namespaces if system.netns_exists(ns)]
        taken += [link for link in plan.root_links if system.link_exists(link)]
        if taken:
            raise TestbedError(f"{taken} already exist but belong to no emu manifest of {self.prefix!r}; "
                               "remove them by hand (ip netns del / ip link del) or choose another prefix")

    def _record(self, manifest: dict, key: str, items: list) -> None:
        manifest[key] += items
        state.save(self.prefix, manifest)

    def _choose_backend(self, plan: Plan, manifest: dict) -> Shaper:
        if self.backend == "userspace":
            return UserspaceShaper(plan, preserve_order=self.preserve_order, seed=self.seed)
        probe = f"{self.prefix}-probe"
        self._record(manifest, "namespaces", [probe])
        has_netem = probe_netem(probe)
        manifest["namespaces"].remove(probe)
        if has_netem:
            return NetemShaper(plan, preserve_order=self.preserve_order)
        if self.backend == "netem":
            raise TestbedError("this kernel has no netem (CONFIG_NET_SCH_NETEM); use backend 'userspace' or 'auto'")
        return UserspaceShaper(plan, preserve_order=self.preserve_order, seed=self.seed)

    def _build(self, plan: Plan, manifest: dict, profiles: dict[int, LinkProfile]) -> None:
        shaper = self._choose_backend(plan, manifest)
        manifest["backend"] = shaper.name
        self._record(manifest, "namespaces", plan.namespaces)
        self._record(manifest, "links", [*plan.root_links, *shaper.links()])
        self._wire(plan, shaper)
        self._start_sshd(plan, manifest)
        self._start_shaping(shaper, manifest, profiles)
        manifest["ready"] = True
        state.save(self.prefix, manifest)

    def _wire(self, plan: Plan, shaper: Shaper) -> None:
        """Namespaces, veth pairs, bridges and addresses: a handful of batched ``ip`` calls."""
        gw = plan.gateway_namespace
        system.ip_batch([f"netns add {ns}" for ns in plan.namespaces])
        system.run_all([["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"] for ns in plan.namespaces])
        system.ip_batch([f"link add {n.root_if} type veth peer name {plan.tag}e{n.index}" for n in plan.nodes]
                        + [f"link add {plan.gateway_root_if} type veth peer name {plan.tag}h"])
        # Offloads off on both ends of every data veth, or 64 KB super-frames reach the emulator.
        system.run_all([["ethtool", "-K", dev, *OFFLOADS] for n in plan.nodes
                        for dev in (n.root_if, f"{plan.tag}e{n.index}")])
        for link in plan.root_links:
            system.disable_ipv6(link)
        lines = []
        for n in plan.nodes:
            lines += [f"link set {plan.tag}e{n.index} netns {n.namespace} name {DATA_IF}",
                      f"link add m{n.index} netns {gw} type veth peer name {MGMT_IF} netns {n.namespace}",
                      f"link set {n.root_if} up promisc on"]
        lines += [f"link set {plan.tag}h netns {gw} name {UPLINK_IF}",
                  f"addr add {plan.gateway_root_ip}/30 dev {plan.gateway_root_if}",
                  f"link set {plan.gateway_root_if} up"]
        system.ip_batch(lines + shaper.wiring())
        system.ip_batch(["link set lo up", f"link add {MGMT_BRIDGE} type bridge", f"link set {MGMT_BRIDGE} up",
                         f"addr add {plan.gateway_mgmt_ip}/24 dev {MGMT_BRIDGE}",
                         f"addr add {plan.gateway_ip}/30 dev {UPLINK_IF}", f"link set {UPLINK_IF} up",
                         *(f"link set m{n.index} master {MGMT_BRIDGE} up" for n in plan.nodes)], netns=gw)
        system.run_all([["ip", "-n", n.namespace, "-batch", self._node_batch_file(plan, n)] for n in plan.nodes])

    def _node_batch_file(self, plan: Plan, node: NodePlan) -> str:
        """Per-node ``ip -batch`` file: addresses, and static neighbours so no ARP crosses the emulator."""
        lines = ["link set lo up", f"link set {DATA_IF} address {node.mac}", f"link set {DATA_IF} up",
                 f"addr add {node.data_ip}/24 dev {DATA_IF}", f"link set {MGMT_IF} up",
                 f"addr add {node.mgmt_ip}/24 dev {MGMT_IF}"]
        lines += [f"neigh replace {peer.data_ip} lladdr {peer.mac} dev {DATA_IF} nud permanent"
                  for peer in plan.nodes if peer.index != node.index]
        path = Path(plan.state_dir) / "ipbatch" / f"{node.name}.ip"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    def _start_sshd(self, plan: Plan, manifest: dict) -> None:
        sshd.prepare(plan)
        for node in plan.nodes:
            Path(node.workdir).mkdir(parents=True, exist_ok=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir Debian's sshd insists on
        endpoints = sshd.endpoints(plan)
        system.run_all([sshd.start_argv(ep) for ep in endpoints])
        # sshd creates its pid file, then writes the pid: wait for the content, not just the name.
        def written(ep) -> bool:
            return ep.pid_file.exists() and ep.pid_file.read_text().strip().isdigit()

        if not system.wait_until(lambda: all(written(ep) for ep in endpoints), timeout=10):
            late = [ep.alias for ep in endpoints if not written(ep)]
            raise TestbedError(f"sshd did not start in {late}; see {endpoints[0].log.parent.parent}/*/sshd.log")
        self._record(manifest, "processes", [{"pid": int(ep.pid_file.read_text()), "what": f"sshd {ep.alias}",
                                              "match": str(ep.config)} for ep in endpoints])

    def _start_shaping(self, shaper: Shaper, manifest: dict, profiles: dict[int, LinkProfile]) -> None:
        shaper.start(profiles, {}, manifest["generation"], lambda procs: self._record(manifest, "processes", procs))

    def _shaper(self, manifest: dict) -> Shaper:
        """The backend as it was set up (options from the manifest: another process may be asking)."""
        plan, options = self._plan(manifest), manifest["options"]
        if manifest["backend"] == "netem":
            return NetemShaper(plan, preserve_order=options["preserve_order"])
        pid = next((p["pid"] for p in manifest["processes"] if p["what"] == "shaper"), None)
        return UserspaceShaper(plan, preserve_order=options["preserve_order"], seed=options["seed"], pid=pid)

    # -- hosts and shells ----------------------------------------------------------------------

    def hosts(self) -> list[HostInfo]:
        manifest = self._manifest()
        plan = self._plan(manifest)
        profiles = manifest["profiles"]
        ssh_dir = Path(plan.state_dir) / "ssh"
        return [HostInfo(name=n.name, index=n.index, address=n.data_ip, workdir=n.workdir, ssh_host=n.mgmt_ip,
                         ssh_port=n.ssh_port, ssh_user=sshd.SSH_USER, namespace=n.namespace,
                         profile=profiles[str(n.index)]["name"],
                         extra={"mgmt_address": n.mgmt_ip, "ssh_alias": n.namespace,
                                "ssh_config": str(ssh_dir / "ssh_config"),
                                "gateway": f"{plan.gateway_ip}:{plan.gateway_port}",
                                "link": profiles[str(n.index)], "payload_path": f"{n.workdir}/code"})
                for n in plan.nodes]

    def shell(self, host: HostInfo) -> SshShell:
        """An SSH shell via the gateway (the testbed's own key and known_hosts, no user ssh config); one per
        host, reused (Fabric connections are thread-safe per channel)."""
        with self._lock:
            if host.name not in self._shells:
                if host.ssh_host is None or host.ssh_port is None or host.ssh_user is None:
                    raise TestbedError(f"{host.name} has no SSH endpoint")
                plan = self._plan(self._manifest())
                ssh_dir = Path(plan.state_dir) / "ssh"
                access = SshAccess(ssh_config=None, agent=False, key=str(ssh_dir / "id_ed25519"),
                                   known_hosts=str(ssh_dir / "known_hosts"))
                jump = connect(plan.gateway_ip, access, user=host.ssh_user, port=plan.gateway_port)
                connection = connect(host.ssh_host, access, user=host.ssh_user, port=host.ssh_port, gateway=jump)
                self._shells[host.name] = SshShell(host.name, connection, host.workdir)
            return self._shells[host.name]

    def ssh_argv(self, host: HostInfo, command: str) -> list[str]:
        """The system ``ssh`` client command that runs ``command`` in the host's workdir via ProxyJump."""
        return ["ssh", "-F", host.extra["ssh_config"], host.extra["ssh_alias"], in_workdir(host.workdir, command)]

    def popen(self, host: HostInfo, argv: list[str]) -> subprocess.Popen:
        """Run ``argv`` on ``host`` over SSH with its stdout streamed back (text lines)."""
        command = f"PYTHONUNBUFFERED=1 exec {shlex.join(argv)}"
        return subprocess.Popen(self.ssh_argv(host, command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                text=True)

    def follow(self, host: HostInfo, name: str) -> subprocess.Popen:
        command = f"exec {shlex.join([*FOLLOW_ARGV, name])} 2>/dev/null"
        return subprocess.Popen(self.ssh_argv(host, command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)

    def describe(self) -> dict:
        manifest = self._manifest()
        plan = self._plan(manifest)
        return {"kind": self.kind, "prefix": self.prefix, "shaping": self._shaper(manifest).describe(),
                "backend": manifest["backend"], "preserve_order": manifest["options"]["preserve_order"],
                "seed": manifest["options"]["seed"],
                "subnets": {"data": plan.data_subnet, "management": plan.mgmt_subnet, "uplink": plan.uplink_subnet},
                "gateway": {"namespace": plan.gateway_namespace, "address": plan.gateway_ip,
                            "port": plan.gateway_port},
                "ssh_config": str(Path(plan.state_dir) / "ssh" / "ssh_config"),
                "hosts": [h.to_dict() for h in self.hosts()]}

    def shaper_status(self) -> dict:
        """The userspace shaper's last status (generation in force, counters, each trace's epoch)."""
        manifest = self._manifest()
        if manifest["backend"] != "userspace":
            raise TestbedError(f"emu testbed {self.prefix!r} shapes with {manifest['backend']}: no shaper status")
        return json.loads((Path(self._plan(manifest).state_dir) / "shaper.status.json").read_text())

    # -- faults --------------------------------------------------------------------------------

    def _node(self, host: HostInfo) -> NodePlan:
        plan = self._plan(self._manifest())
        if not 0 <= host.index < len(plan.nodes) or plan.nodes[host.index].namespace != host.namespace:
            raise TestbedError(f"{host.name} ({host.namespace}) is not a node of emu testbed {self.prefix!r}")
        return plan.nodes[host.index]

    def service_pids(self, host: HostInfo) -> list[int]:
        """The pids a kill/pause/resume of ``host`` would signal right now."""
        return self._service_pids(self._node(host).namespace)

    @staticmethod
    def _service_pids(namespace: str) -> list[int]:
        """Processes of the node's services: all in the namespace but sshd (daemon and sessions) and zombies."""
        return [pid for pid in system.pids_in_netns(namespace)
                if not os.path.basename(system.exe_of(pid)).startswith("sshd") and not system.gone(pid)]

    def _signal_services(self, host: HostInfo, sig: signal.Signals, action: str, done) -> FaultResult:
        """Signal the services until none is left un-``done`` (catches children forked meanwhile)."""
        node = self._node(host)
        pids = self._service_pids(node.namespace)
        if not pids:
            raise TestbedError(f"{host.name}: no service process is running in {node.namespace}")
        system.signal_pids(pids, sig)
        result = FaultResult.now(action, host.name, f"{sig.name} to {len(pids)} processes in {node.namespace} "
                                                    "(sshd spared)")
        if not system.wait_until(lambda: all(done(p) for p in self._signal_again(node.namespace, sig, done)),
                                 timeout=5):
            raise TestbedError(f"{host.name}: processes in {node.namespace} did not take {sig.name} within 5 s")
        return result

    def _signal_again(self, namespace: str, sig: signal.Signals, done) -> list[int]:
        pending = [p for p in self._service_pids(namespace) if not done(p)]
        system.signal_pids(pending, sig)
        return pending

    def kill(self, host: HostInfo) -> FaultResult:
        return self._signal_services(host, signal.SIGKILL, "kill", system.gone)

    def pause(self, host: HostInfo) -> FaultResult:
        return self._signal_services(host, signal.SIGSTOP, "pause", lambda p: system.state_of(p) in "Tt")

    def resume(self, host: HostInfo) -> FaultResult:
        return self._signal_services(host, signal.SIGCONT, "resume", lambda p: system.state_of(p) not in "Tt")

    def _set_link(self, host: HostInfo, updown: str, action: str) -> FaultResult:
        node = self._node(host)
        system.run(["ip", "link", "set", node.root_if, updown])
        return FaultResult.now(action, host.name, f"{node.root_if} (switch end of {host.name}'s access link) {updown}")

    def link_down(self, host: HostInfo) -> FaultResult:
        return self._set_link(host, "down", "link_down")

    def link_up(self, host: HostInfo) -> FaultResult:
        return self._set_link(host, "up", "link_up")

    def _reshape(self, manifest: dict, only: set[int]) -> tuple[int, int]:
        """Put the manifest's profiles, groups and impairments in force; return when they took effect."""
        profiles, groups = self._profiles(manifest), self._groups(manifest)
        manifest["generation"] += 1
        times = self._shaper(manifest).apply(profiles, groups, manifest["generation"], only,
                                             self._impairments(manifest))
        state.save(self.prefix, manifest)
        return times

    def degrade(self, host: HostInfo, profile: LinkProfile) -> FaultResult:
        with self._lock:
            node = self._node(host)
            manifest = self._manifest()
            old = manifest["profiles"][str(node.index)]["name"]
            manifest["profiles"][str(node.index)] = profile_to_dict(profile)
            wall, mono = self._reshape(manifest, {node.index})
        return FaultResult("degrade", host.name, wall, mono, f"profile {old} -> {profile.name}")

    def partition(self, hosts: list[HostInfo]) -> FaultResult:
        """Cut ``hosts`` from the other nodes (they still reach each other); an empty list heals."""
        with self._lock:
            indices = {self._node(h).index for h in hosts}
            manifest = self._manifest()
            before = set(self._groups(manifest))
            manifest["groups"] = {str(i): PARTITION_GROUP for i in sorted(indices)}
            wall, mono = self._reshape(manifest, indices | before)
        names = " ".join(h.name for h in hosts)
        return FaultResult("partition", names or "-", wall, mono,
                           f"cut {{{names}}} from the rest" if hosts else "healed: one network again")

    def one_way_partition(self, sources: list[HostInfo], sinks: list[HostInfo]) -> FaultResult:
        """Drop frames from ``sources`` to ``sinks``; the other way is delivered."""
        with self._lock:
            pairs = {(self._node(a).index, self._node(b).index) for a in sources for b in sinks}
            manifest = self._manifest()
            manifest["one_way"] = sorted({*map(tuple, manifest.get("one_way", [])), *pairs})
            wall, mono = self._reshape(manifest, {i for pair in pairs for i in pair})
        src, dst = " ".join(h.name for h in sources), " ".join(h.name for h in sinks)
        return FaultResult("one_way_partition", f"{src} -> {dst}", wall, mono,
                           f"frames {{{src}}} -> {{{dst}}} dropped, the other way delivered")

    def impair(self, host: HostInfo, kind: FaultKind, pct: float) -> FaultResult:
        with self._lock:
            node = self._node(host)
            manifest = self._manifest()
            impairments = manifest.setdefault("impairments", {})
            mine = impairments.setdefault(str(node.index), {})
            if kind == FaultKind.BLACKHOLE:
                mine["blackhole"] = True
                detail = f"every frame to and from {host.name} dropped (its link stays up)"
            else:
                mine[f"{kind.value}_pct"] = float(pct)
                detail = f"{kind.value} {pct:g}% of frames to and from {host.name}"
            wall, mono = self._reshape(manifest, {node.index})
        return FaultResult(kind.value, host.name, wall, mono, detail)

    def clock_skew(self, host: HostInfo, offset_ms: float) -> FaultResult:
        with self._lock:
            node = self._node(host)
            manifest = self._manifest()
            manifest.setdefault("skews", {})[str(node.index)] = offset_ms
            state.save(self.prefix, manifest)
            return self._skew(host, offset_ms)

    def _skew(self, host: HostInfo, offset_ms: float) -> FaultResult:
        """Write the offset where the node reads it and tell its services (sshd spared) to read it."""
        node = self._node(host)
        pids = self._service_pids(node.namespace)
        if not pids:
            raise TestbedError(f"{host.name}: no service process is running in {node.namespace} to skew")
        write_skew(Path(node.workdir), offset_ms)
        system.signal_pids(pids, signal.SIGUSR1)
        return FaultResult.now("clock_skew", host.name, f"wall clock {offset_ms:+g} ms (SIGUSR1 to {len(pids)} "
                                                       f"processes in {node.namespace})")

    def slow(self, host: HostInfo, factor: float) -> FaultResult:
        node = self._node(host)
        pids = self._service_pids(node.namespace)  # found once: scanning /proc every few ms would cost more
        if not pids:
            raise TestbedError(f"{host.name}: no service process is running in {node.namespace} to slow down")
        self._stragglers.start(host.name, lambda sig: system.signal_pids(pids, sig), factor)
        return FaultResult.now("slow", host.name, f"runs 1/{factor:g} of every {SLOW_PERIOD_S * 1000:g} ms "
                                                 f"(SIGSTOP/SIGCONT to the services in {node.namespace})")

    def heal(self, hosts: list[HostInfo]) -> FaultResult:
        slowed = self._stragglers.stop([h.name for h in hosts])
        with self._lock:
            indices = {self._node(h).index for h in hosts}
            manifest = self._manifest()
            skewed = [h for h in hosts if str(self._node(h).index) in manifest.get("skews", {})]
            for host in skewed:
                self._skew(host, 0)
                del manifest["skews"][str(self._node(host).index)]
            had = {int(i) for i in manifest.get("impairments", {})} & indices
            manifest["impairments"] = {i: d for i, d in manifest.get("impairments", {}).items()
                                       if int(i) not in indices}
            kept = [p for p in manifest.get("one_way", []) if not indices & {int(p[0]), int(p[1])}]
            cut = len(manifest.get("one_way", [])) - len(kept)
            manifest["one_way"] = kept
            wall, mono = self._reshape(manifest, indices)
        return FaultResult("heal", " ".join(h.name for h in hosts), wall, mono,
                           f"impairments ended on {len(had)} node(s), {cut} one-way drop(s) lifted"
                           + (f", clocks of {' '.join(h.name for h in skewed)} reset" if skewed else "")
                           + (f", {' '.join(slowed)} at full speed" if slowed else ""))

    # -- down ----------------------------------------------------------------------------------

    def down(self) -> None:
        """Remove every namespace, link, process and file this prefix made; succeed if already gone."""
        with state.registry_lock():
            self._teardown()

    def _teardown(self) -> None:
        for shell in self._shells.values():
            shell.close()
        self._shells.clear()
        manifest = state.load(self.prefix)
        if manifest is None:
            shutil.rmtree(self.state_dir, ignore_errors=True)
            return
        for record in manifest["processes"]:
            _stop_recorded(record)
        for ns in manifest["namespaces"]:
            pids = system.pids_in_netns(ns)
            system.signal_pids(pids, signal.SIGKILL)
            system.wait_until(lambda: all(system.gone(p) for p in pids), timeout=5)
        system.run(["ip", "-force", "-batch", "-"], check=False,
                   input="".join(f"link del {link}\n" for link in manifest["links"] if system.link_exists(link)))
        system.run(["ip", "-force", "-batch", "-"], check=False,
                   input="".join(f"netns del {ns}\n" for ns in manifest["namespaces"] if system.netns_exists(ns)))
        left = ([ns for ns in manifest["namespaces"] if system.netns_exists(ns)]
                + [link for link in manifest["links"] if system.link_exists(link)])
        if left:
            raise TestbedError(f"emu down could not remove {left}; the manifest {state.manifest_path(self.prefix)} "
                               "is kept so `down` can be retried")
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _stop_recorded(record: dict) -> None:
    """SIGKILL a recorded process only if it is still the one we started (its cmdline names our file)."""
    pid = int(record["pid"])
    if record["match"] not in " ".join(system.cmdline_of(pid)):
        return
    system.signal_pids([pid], signal.SIGKILL)
    system.wait_until(lambda: system.gone(pid), timeout=5)
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if this process started it
    except ChildProcessError:
        pass
