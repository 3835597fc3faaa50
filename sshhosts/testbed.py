"""SshTestbed: any Linux hosts as JARVIS nodes, reached over SSH the way the user's ssh config says.

``up`` checks every chosen host first (login, sudo where shaping needs it,
``tc``, ``ip``, ``setsid``, the Python) and stops before changing anything
if one fails; then it makes sure of the payload's venv (given, or created
and filled with JARVIS's pins when ``provision: true``), makes the run
directory ``<base_dir>/runs/<run>`` with the shipped payload, reads each
host's data address (or takes it from the inventory), checks that every
host pings every other one, and puts the link profiles in force with
``tc netem`` (:mod:`sshhosts.links`).  Node services run detached in their
own process group; faults signal the group (kill, pause, resume) or change
the data plane (link down/up, degrade, partition: filters and netem on the
hosts, SSH itself untouched).  Each host's clock offset from this machine
is measured over SSH when the run starts and when it ends (testbed.json).

The Raspberry Pi testbed (:mod:`rpi.testbed`) is this class with Pi
provisioning, systemd units and the real Wi-Fi; the hooks it overrides are
the methods under "per-kind steps".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sshhosts import clock, plan, provision
from sshhosts.inventory import SshInventory, load_inventory
from sshhosts.links import BareLinks, LinkControl, LinkState, NetemLinks, ifb_name
from testbed import services
from testbed.addresses import Address, parse_address
from testbed.fanout import on_each
from testbed.interface import SHAPING_FAULTS, FaultKind, FaultResult, HostInfo, TestbedError
from testbed.plan import Check, CommandPlan, failed_checks
from testbed.profiles import LinkProfile, load_profiles
from testbed.remote import InventoryTestbed
from testbed.shipping import CODE_ARCHIVE, payload_archive, payload_pins, service_argv
from testbed.ssh import RemoteProcess, SshShell, connect

LinkControlFactory = Callable[["SshTestbed", SshInventory], LinkControl]


class SshTestbed(InventoryTestbed):
    """The hosts of one inventory; ``inventory`` is needed for ``up`` (later calls find it in the state).

    ``link_control`` replaces how the data plane is shaped (default: from the
    inventory's ``shaping``); the test suite passes one that drives its
    emulated lab network.
    """

    kind = "ssh"
    title = "SSH hosts"
    guide = "inventories/ssh.example.yaml and docs/ssh.md"

    def __init__(self, prefix: str = "jv-ssh", *, inventory: str | Path | None = None,
                 progress: Callable[[str], None] = print, link_control: LinkControlFactory | None = None) -> None:
        super().__init__(prefix, inventory=inventory, progress=progress)
        self._link_control = link_control
        self._links_lock = threading.Lock()

    def load_inventory(self, path: Path) -> SshInventory:
        return load_inventory(path)

    def capacity(self) -> int:
        return len(self.inventory().layer_hosts)

    faults = SHAPING_FAULTS  # with `shaping: netem`; `shaping: none` leaves the process faults only

    def supported_faults(self) -> frozenset[FaultKind]:
        return self.links(self.inventory()).faults

    def links(self, inv: SshInventory) -> LinkControl:
        if self._link_control is not None:
            return self._link_control(self, inv)
        if inv.shaping == "none":
            return BareLinks()
        return NetemLinks(lambda name: self._shell(inv, name, self._run()), interface_of=inv.interface_of,
                          ifb=ifb_name(self.prefix), sudo=inv.sudo)

    def _run(self) -> str:
        return (self.state.load() or {})["run"]

    def _shell(self, inv: SshInventory, name: str, run: str) -> SshShell:
        def make() -> SshShell:
            connection = connect(inv.by_name(name).ssh_host, inv.access, user=inv.user)
            return SshShell(name, connection, plan.workdir(inv, name, run), path_prepend=inv.path_prepend,
                            record=self.state.record)

        return self._cached_shell(name, make)

    def _on_chain(self, inv: SshInventory, data: dict, work: Callable[[SshShell, str], object], *, what: str
                  ) -> dict:
        return on_each({name: (lambda n=name: work(self._shell(inv, n, data["run"]), n)) for name in data["chain"]},
                       what=what)

    # -- per-kind steps (the Raspberry Pi testbed overrides these) ------------------------------------

    def checks(self, inv: SshInventory, name: str) -> list[Check]:
        return plan.check_commands(inv, name)

    def check_problems(self, inv: SshInventory, name: str, outputs: dict[str, str]) -> list[str]:
        """Problems that the checks' outputs show (``outputs``: command -> stdout of the checks that passed)."""
        check = plan.python_check(inv, name)
        version = outputs.get(check.command, "").strip()
        problem = plan.python_problem(version, plan.checked_python(inv, name)) if version else None
        return [problem] if problem else []

    def before_up(self, inv: SshInventory) -> None:
        """What must be settled on this machine before any host is touched (a secret from the environment)."""

    def provision_plan(self, inv: SshInventory, name: str) -> list[str]:
        """The provisioning commands of ``name`` as the dry run shows them (the probes decide which run)."""
        pins = payload_pins()
        lines = provision.venv_commands(inv, name) if inv.provision else []
        lines.append(provision.versions_probe(inv, name, list(pins)))
        if inv.provision:
            lines.append(f"# only if the versions differ from {pins}:")
            lines += provision.pip_commands(inv, name, pins)
        else:
            lines.append(f"# the venv must have {pins} (or set `provision: true`)")
        return lines

    def provision(self, inv: SshInventory, shell: SshShell, name: str) -> dict[str, str]:
        """The venv with JARVIS's pins; return the payload packages' versions on this host."""
        pins = payload_pins()
        packages = list(pins)
        if inv.provision:
            shell.run_many(provision.venv_commands(inv, name), cwd="/", timeout=300)
        probe = provision.versions_probe(inv, name, packages)
        installed = provision.installed_versions(shell.run(probe, cwd="/", check=False, timeout=300).stdout, packages)
        if installed == pins:
            return installed
        if not inv.provision:
            raise TestbedError(f"{name}: the venv {inv.venv_of(name)} has {installed or 'not all of them'}; JARVIS "
                               f"needs {pins}: install them there, or set `provision: true`")
        self.progress(f"[{self.kind}] {name}: installing {pins} (found {installed or 'none'})")
        shell.run_many(provision.pip_commands(inv, name, pins), cwd="/", timeout=inv.timeouts.install_s)
        installed = provision.installed_versions(shell.run(probe, cwd="/", timeout=300).stdout, packages)
        if installed != pins:
            raise TestbedError(f"{name}: after installing, the venv has {installed}, not {pins}")
        return installed

    def address_plan(self, inv: SshInventory, name: str) -> list[str]:
        commands = plan.address_commands(inv, name)
        return commands or [f"# data address from the inventory: {plan.placeholder_address(inv, name)}"]

    def address(self, inv: SshInventory, shell: SshShell, name: str) -> Address:
        """The host's data-plane address: the inventory's, or the first IPv4 of its interface."""
        given = getattr(inv.by_name(name), "address", None)
        if given:
            return Address(given, 32)
        found = parse_address(shell.run(plan.address_commands(inv, name)[0], check=False).stdout)
        if found is None:
            raise TestbedError(f"{name}: {inv.interface_of(name)} has no IPv4 address (set `interface:` or "
                               "`address:` for this host)")
        return found

    def profiles(self, inv: SshInventory, chain: list[str], links: Mapping[int, LinkProfile] | None
                 ) -> dict[str, LinkProfile | None]:
        """Each host's link profile: the scenario's for its node index, else the inventory's (None: bare)."""
        known = load_profiles()
        chosen = {}
        for index, name in enumerate(chain):
            named = inv.profile_of(name)
            chosen[name] = (links or {}).get(index) or (known[named] if named else None)
        return chosen

    def service_plan(self, inv: SshInventory, host: HostInfo, argv: list[str]) -> list[str]:
        return [services.service_command(argv, "service.out")]

    def teardown_commands(self, inv: SshInventory, data: dict, name: str) -> list[str]:
        """Undo on ``name`` what the state records, links aside; each command may find it gone."""
        return [services.stop_service_command(s["pid"]) for s in data["services"].values() if s["host"] == name]

    def teardown_plan(self, inv: SshInventory, name: str) -> list[str]:
        return [services.stop_service_command("<service pid>")]

    def clock_plan(self, inv: SshInventory, name: str) -> list[str]:
        return [f"# clock offset, {clock.ROUNDS} exchanges before and after the run: "
                f"{clock.probe_command(inv.python_of(name))}"]

    def read_clock(self, inv: SshInventory, shell: SshShell, name: str) -> dict:
        return clock.measure_offset(shell, inv.python_of(name))

    # -- up --------------------------------------------------------------------------------------

    def up(self, nodes: int, links: Mapping[int, LinkProfile] | None = None) -> list[HostInfo]:
        inventory_file = self.inventory_file()
        inv = self.inventory()
        if self.state.exists():
            self.progress(f"[{self.kind}] {self.prefix}: tearing down the previous run first")
            self.down()
        chain = plan.chain_of(inv, nodes)
        profiles = self.profiles(inv, chain, links)
        control = self.links(inv)
        control.check(profiles)  # a profile the data plane cannot give is refused before anything starts
        self.before_up(inv)
        data = {"inventory": str(inventory_file), "run": f"{self.prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
                "chain": chain, "ready": False, "services": {}, "addresses": {}, "versions": {}, "links": None,
                "shaped": [], "clock": {"before": {}, "after": {}}}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state.transcript.unlink(missing_ok=True)
        self.state.save(data)
        with self.torn_down_on_failure():
            self.progress(f"[{self.kind}] checking {len(chain)} {inv.noun}s")
            self._on_chain(inv, data, lambda s, n: self._check(inv, s, n), what=f"checking the {inv.noun}s")
            self.progress(f"[{self.kind}] provisioning")
            versions = self._on_chain(inv, data, lambda s, n: self.provision(inv, s, n), what="provisioning")
            self.state.update(lambda d: d.update(versions=versions))
            archive = payload_archive(self.state_dir)
            self._on_chain(inv, data, lambda s, n: self._prepare(inv, s, n, data["run"], archive),
                           what="preparing the run directories")
            addresses = self._on_chain(inv, data, lambda s, n: self.address(inv, s, n).ip,
                                       what="reading the data addresses")
            self.state.update(lambda d: d.update(addresses=addresses))
            self._on_chain(inv, data, lambda s, n: self._reach(addresses, s, n), what="the reachability check")
            state = LinkState(addresses, profiles)
            self.state.update(lambda d: d.update(links=state.to_dict(), shaped=chain))  # before: down undoes it
            self.progress(f"[{self.kind}] links: {control.describe()}")
            control.apply(state, set(chain))
        self.state.update(lambda d: d.update(ready=True))
        return self.hosts()

    def _check(self, inv: SshInventory, shell: SshShell, name: str) -> None:
        checks = self.checks(inv, name)
        results = shell.run_many([c.command for c in checks], cwd="/", keep_going=True)
        outputs = {c.command: r.stdout for c, r in zip(checks, results) if r.ok}
        problems = failed_checks(checks, results) + self.check_problems(inv, name, outputs)
        if problems:
            raise TestbedError(f"{name}: " + "; ".join(problems))

    def _prepare(self, inv: SshInventory, shell: SshShell, name: str, run: str, archive: Path) -> None:
        shell.run_many(plan.prepare_commands(inv, name, run), cwd="/")
        shell.put(archive, f"code/{CODE_ARCHIVE}")
        shell.run_many(plan.code_commands(inv, name, run))

    @staticmethod
    def _reach(addresses: dict[str, str], shell: SshShell, name: str) -> None:
        commands = plan.reach_commands(addresses, name)
        peers = [p for p in addresses if p != name]
        results = shell.run_many(commands, keep_going=True, timeout=30 + 6 * len(peers))
        failed = [p for p, r in zip(peers, results) if not r.ok]
        if failed:
            raise TestbedError(f"{name}: cannot reach {', '.join(failed)} on the data plane")

    # -- the dry run -----------------------------------------------------------------------------

    def dry_run(self, nodes: int, links: Mapping[int, LinkProfile] | None = None) -> str:
        """Every remote command up, deploy, faults and down would run for ``nodes`` layer nodes, per host."""
        return self.command_plan(nodes, links).render()

    def command_plan(self, nodes: int, links: Mapping[int, LinkProfile] | None = None, *, run: str = "<run>"
                     ) -> CommandPlan:
        """The commands of :meth:`dry_run` as data (addresses not in the inventory are ``<iface of host>``)."""
        inv = self.inventory()
        chain = plan.chain_of(inv, nodes)
        profiles = self.profiles(inv, chain, links)
        control = self.links(inv)
        control.check(profiles)
        addresses = {name: plan.placeholder_address(inv, name) for name in chain}
        state = LinkState(addresses, profiles)
        _, ssh_config = inv.access.config()
        out = CommandPlan([f"{self.title} dry run: {len(chain)} {inv.noun}s (run {run}); nothing below was executed.",
                           f"SSH as {inv.access.ssh_config or 'no ssh config (agent and default keys)'} says, "
                           f"agent {'on' if inv.agent else 'off'}, logging in as {inv.login}; every host is checked "
                           "before anything changes.",
                           f"Links: {control.describe()}.",
                           "<...> values are read from the hosts when the testbed comes up."])
        for index, name in enumerate(chain):
            profile = profiles[name]
            alias = inv.by_name(name).ssh_host
            jump = ssh_config.lookup(alias).get("proxyjump")
            out.titles[name] = (f"{plan.node_name(index)}, ssh {alias}{f' via {jump}' if jump else ''}, "
                                f"link {profile.name if profile else 'unshaped'}, logs in {plan.workdir(inv, name, run)}")
        for name in chain:
            out.add(name, "check", [c.command for c in self.checks(inv, name)])
        for name in chain:
            out.add(name, "provision", self.provision_plan(inv, name))
            out.add(name, "prepare", [*plan.prepare_commands(inv, name, run),
                                      f"# put {CODE_ARCHIVE} (the payload package) -> "
                                      f"{plan.workdir(inv, name, run)}/code/", *plan.code_commands(inv, name, run)])
            out.add(name, "address", self.address_plan(inv, name))
        for name in chain:
            out.add(name, "reach", plan.reach_commands(addresses, name))
            out.add(name, "shape", control.plan(state, name))
            out.add(name, "clock", self.clock_plan(inv, name))
        for index, name in enumerate(chain):
            host = self._host_info(inv, run, index, name, addresses[name])
            out.add(name, "deploy", ["# sha256sum of the model files there, put the missing ones and the node config"])
            if index == 0:
                out.add(name, "run", [f"# the user node, its output streamed back: "
                                      f"{' '.join(service_argv(host, 'payload.user', '--config', 'user.json'))} ..."])
            else:
                out.add(name, "deploy", self.service_plan(inv, host, service_argv(host, "payload.node", "--config",
                                                                                  "node.json")))
        for name in chain:
            out.add(name, "faults", self.fault_plan(inv, control, state, name))
            out.add(name, "teardown", [*self.teardown_plan(inv, name), *control.clear_plan(name)])
        return out

    def fault_plan(self, inv: SshInventory, control: LinkControl, state: LinkState, name: str) -> list[str]:
        lines = [f"# {action}: {services.signal_command('<service pid>', signal, until)}"
                 for action, (signal, until) in services.PROCESS_SIGNALS.items()]
        if FaultKind.LINK_DOWN in control.faults:
            shaped = set(control.plan(state, name))
            lines.append("# link down / up, degrade, partition: the [shape] commands again for the changed state; "
                         "link down changes these:")
            lines += [c for c in control.plan(state.replace(down=frozenset({name})), name) if c not in shaped]
        return lines

    # -- hosts, services -------------------------------------------------------------------------

    def _host_info(self, inv: SshInventory, run: str, index: int, name: str, address: str) -> HostInfo:
        workdir = plan.workdir(inv, name, run)
        return HostInfo(name=plan.node_name(index), index=index, address=address, workdir=workdir, ssh_host=name,
                        ssh_user=inv.user, profile=inv.profile_of(name),
                        extra={"host": name, "interface": inv.interface_of(name), "python": inv.python_of(name),
                               "payload_path": f"{workdir}/code"})

    def hosts(self) -> list[HostInfo]:
        data = self._ready()
        inv = self.inventory()
        links = LinkState.from_dict(data["links"])
        hosts = []
        for index, name in enumerate(data["chain"]):
            host = self._host_info(inv, data["run"], index, name, data["addresses"][name])
            profile = links.profiles.get(name)
            hosts.append(HostInfo(**{**host.to_dict(), "profile": profile.name if profile else host.profile}))
        return hosts

    def shell(self, host: HostInfo) -> SshShell:
        data = self._ready()
        return self._shell(self.inventory(), host.ssh_host, data["run"])

    def popen(self, host: HostInfo, argv: list[str]) -> RemoteProcess:
        """Stream the user node's output; first read every host's clock (the run starts now)."""
        clocks = self._read_clocks()
        self.state.update(lambda d: d["clock"].update(before=clocks))
        return self.shell(host).popen(argv)

    def _read_clocks(self) -> dict:
        data = self._ready()
        inv = self.inventory()
        return self._on_chain(inv, data, lambda s, n: self.read_clock(inv, s, n), what="reading the clocks")

    def describe(self) -> dict:
        """The testbed for the run directory; reads every host's clock again (the run has ended)."""
        clocks = self._read_clocks()
        data = self.state.update(lambda d: d["clock"].update(after=clocks))
        inv = self.inventory()
        return {"kind": self.kind, "prefix": self.prefix, "run": data["run"],
                "shaping": self.links(inv).describe(), "links": data["links"],
                "clock": data["clock"], "versions": data["versions"],
                "logs": {name: plan.workdir(inv, name, data["run"]) for name in data["chain"]},
                "hosts": [h.to_dict() for h in self.hosts()]}

    # -- link faults: a new LinkState, put in force on the hosts it changes -------------------------

    def _change_links(self, change: Callable[[LinkState], LinkState]) -> tuple[int, int]:
        with self._links_lock:
            data = self._ready()
            inv = self.inventory()
            before = LinkState.from_dict(data["links"])
            after = change(before)
            touched = {n for n in data["chain"] if after.profiles.get(n) != before.profiles.get(n)
                       or set(after.dropped(n)) != set(before.dropped(n))}
            self.links(inv).apply(after, touched)
            times = time.time_ns(), time.monotonic_ns()
            self.state.update(lambda d: d.update(links=after.to_dict()))
        return times

    def _require(self, kind: FaultKind) -> None:
        if kind not in self.supported_faults():
            raise TestbedError(f"the {self.kind} testbed cannot {kind.value.replace('_', ' ')} with this inventory "
                               "(`shaping: none`: the links are left as they are)")

    def _name(self, host: HostInfo) -> str:
        return host.ssh_host or host.name

    def link_down(self, host: HostInfo) -> FaultResult:
        self._require(FaultKind.LINK_DOWN)
        name = self._name(host)
        wall, mono = self._change_links(lambda s: s.replace(down=s.down | {name}))
        return FaultResult("link_down", host.name, wall, mono, f"{name}: chain traffic dropped both ways")

    def link_up(self, host: HostInfo) -> FaultResult:
        self._require(FaultKind.LINK_UP)
        name = self._name(host)
        wall, mono = self._change_links(lambda s: s.replace(down=s.down - {name}))
        return FaultResult("link_up", host.name, wall, mono, f"{name}: chain traffic restored")

    def degrade(self, host: HostInfo, profile: LinkProfile) -> FaultResult:
        self._require(FaultKind.DEGRADE)
        name = self._name(host)
        old: list[str] = []

        def change(s: LinkState) -> LinkState:
            old.append(s.profiles[name].name if s.profiles.get(name) else "bare")
            return s.replace(profiles={**s.profiles, name: profile})

        wall, mono = self._change_links(change)
        return FaultResult("degrade", host.name, wall, mono, f"profile {old[0]} -> {profile.name}")

    def partition(self, hosts: list[HostInfo]) -> FaultResult:
        """Cut ``hosts`` from the other nodes (they still reach each other); an empty list heals."""
        self._require(FaultKind.PARTITION)
        names = [self._name(h) for h in hosts]
        wall, mono = self._change_links(lambda s: s.replace(groups={n: 1 for n in names}))
        shown = " ".join(h.name for h in hosts)
        return FaultResult("partition", shown or "-", wall, mono,
                           f"cut {{{shown}}} from the rest" if hosts else "healed: one network again")

    # -- down ------------------------------------------------------------------------------------

    def _teardown(self, data: dict) -> list[str]:
        """Stop every service recorded and take the shaping off.  The venv, the model store and logs stay."""
        inv = self.inventory()
        work = {name: commands for name in data["chain"] if (commands := self.teardown_commands(inv, data, name))}
        problems = []
        try:
            on_each({n: (lambda n=n, c=c: self._shell(inv, n, data["run"]).run_many(c, keep_going=True, cwd="/"))
                     for n, c in work.items()}, what="stopping the node services")
        except TestbedError as exc:
            problems.append(str(exc))
        if data.get("shaped"):
            problems += self.links(inv).clear(data["shaped"])
        return problems
