"""ColosseumTestbed: the SRNs of a reservation, reached through the gateway, as JARVIS nodes over emulated RF.

``up`` runs the phases of :mod:`colosseum.plan` in order and records each
action before taking it (:mod:`colosseum.state`):

1. check every SRN of the inventory (login through the gateway, tools, radio
   scripts, the interpreter) and stop before changing anything if one fails;
2. make ``/logs/<run>`` and push the payload code;
3. start the RF scenario with a radio map built from the SRNs' roles
   (``colosseumcli rf start <id> -m radiomap.json -c``: the base station is
   RF node 1, its UEs follow), confirm it with ``rf info`` and ``rf radiomap``;
4. bring up the radios (base station first), read the addresses of each
   role's interface, add the routes that make RF carry the traffic, and
   check that every JARVIS node pings every other one;
5. copy the model from the team NAS where it is there (deploy then ships
   only what is missing).

Any failure tears down what was recorded (node services, tmux radio servers,
routes, forwarding, the RF scenario, respecting Colosseum's >15 s between
``rf stop`` and the next ``rf start``), so nothing is left running.  Faults:
``kill -9`` / SIGSTOP / SIGCONT of the node service's process group, and
``ip link set <radio interface> down|up``.  The channel itself is the RF
scenario's: link shaping, degrade and partition are not available here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from colosseum import image, plan, rf
from colosseum.inventory import ROLE_LINK, WIRED_INTERFACE, Inventory, load_inventory
from colosseum.network import DataPlane, SrnAddresses
from colosseum.plan import Layout
from colosseum.scope import scope_config_text
from testbed.addresses import Address, parse_address
from testbed.fanout import on_each
from testbed.interface import LINK_FAULTS, PROCESS_FAULTS, FaultResult, HostInfo, TestbedError
from testbed.profiles import LinkProfile
from testbed.plan import failed_checks
from testbed.remote import InventoryTestbed
from testbed.shipping import CODE_ARCHIVE, payload_archive, service_argv
from testbed.ssh import RemoteProcess, SshAccess, SshShell, connect, ssh_config_unmatched

RADIO_POLL_S = 0.5


def reservation_path(team: str, reservation: int | str, srn_id: int, run: str) -> str:
    """Where Colosseum puts an SRN's /logs/<run> after the reservation (on file-proxy)."""
    return f"/share/nas/{team}/RESERVATION-{reservation}/--srn-{srn_id}/{run}"


class ColosseumTestbed(InventoryTestbed):
    """SRNs of one reservation; ``inventory`` is needed for ``up`` (later calls find it in the state)."""

    kind = "colosseum"
    title = "Colosseum"
    guide = "inventories/colosseum.example.yaml and docs/colosseum.md"
    faults = PROCESS_FAULTS | LINK_FAULTS  # the channel is the RF scenario's: no shaping, degrade or partition

    def __init__(self, prefix: str = "jv-colosseum", *, inventory: str | Path | None = None,
                 progress: Callable[[str], None] = print) -> None:
        super().__init__(prefix, inventory=inventory, progress=progress)

    def load_inventory(self, path: Path) -> Inventory:
        return load_inventory(path)

    def capacity(self) -> int:
        return len(self.inventory().layer_srns)

    def _layout(self, data: dict) -> Layout:
        return Layout(self.inventory(), self.prefix, data["run"], data["chain"])

    def _access(self, inv: Inventory, srn: str | None = None) -> SshAccess:
        """How to log in to the gateway (no password) or to SRN ``srn`` (its own, its image's or the common
        password variable: images have different root passwords)."""
        creds = inv.credentials
        password_env = inv.password_env_of(inv.by_name(srn)) if srn is not None else None
        return SshAccess(creds.ssh_config, creds.agent, password_env)

    def _srn_shell(self, layout: Layout, name: str) -> SshShell:
        """One shell per SRN, each through its own gateway connection (as Colosseum documents)."""
        return self._cached_shell(name, lambda: self._connect_srn(layout.inventory, name, layout.workdir(name)))

    def _connect_srn(self, inv: Inventory, name: str, workdir: str) -> SshShell:
        gateway = connect(inv.gateway.host, self._access(inv), user=inv.gateway.user)
        connection = connect(name, self._access(inv, name), user="root", gateway=gateway, with_password=True)
        return SshShell(name, connection, workdir, path_prepend=inv.path_prepend, record=self.state.record)

    # -- the image -------------------------------------------------------------------------------

    def build_image(self, srn: int, name: str, wheels: str, *, dry_run: bool = False) -> str:
        """Build JARVIS's SRN image on SRN ``srn`` from wheels on the team NAS (``/share/<wheels>``) and snapshot
        it as ``name``; with ``dry_run`` only return the commands.  See :mod:`colosseum.image`."""
        inv = self.inventory()
        if srn not in [s.id for s in inv.srns]:
            raise TestbedError(f"SRN {srn} is not in the inventory ({[s.id for s in inv.srns]})")
        host = inv.name_of(next(s for s in inv.srns if s.id == srn))
        build = image.ImagePlan(host, name, f"{inv.paths.on(host).share}/{wheels}")
        requirements = image.payload_requirements()
        text = image.render(build, requirements)
        if dry_run:
            return text
        self._check_ssh_config(inv)
        shell = self._connect_srn(inv, host, "/root")
        try:
            for command in image.build_commands(build, requirements):
                self.progress(f"[colosseum] {host}: {command}")
                shell.run(command, timeout=1800)
        finally:
            shell.close()
        return text

    # -- dry run ---------------------------------------------------------------------------------

    def dry_run(self, nodes: int, links: Mapping[int, LinkProfile] | None = None) -> str:
        """Every remote command up, deploy and down would run for ``nodes`` layer nodes, per SRN, without connecting
        (links that the RF scenario and the SRNs' roles do not give are refused, as ``up`` would)."""
        inv = self.inventory()
        layout = self._choose(inv, "<run>", nodes)
        self._check_links(layout, links or {})
        argv = {}
        for index, name in enumerate(layout.chain[1:], start=1):
            host = self._host_info(layout, index, name, Address.placeholder(layout.srn(name).interface, name))
            argv[name] = service_argv(host, "payload.node", "--config", "node.json")
        return plan.dry_run(layout, service_argv=argv).render()

    def _choose(self, inv: Inventory, run: str, nodes: int) -> Layout:
        try:
            return Layout.choose(inv, self.prefix, run, nodes)
        except ValueError as exc:
            raise TestbedError(str(exc)) from None

    # -- up --------------------------------------------------------------------------------------

    def up(self, nodes: int, links: Mapping[int, LinkProfile] | None = None) -> list[HostInfo]:
        inventory_file = self.inventory_file()
        inv = load_inventory(inventory_file)
        for srn in inv.srns:  # a missing password variable stops us before any SRN is touched
            self._access(inv, inv.name_of(srn)).password()
        self._check_ssh_config(inv)
        if self.state.exists():
            self.progress(f"[colosseum] {self.prefix}: tearing down the previous run first")
            self.down()
        layout = self._choose(inv, f"{self.prefix}-{time.strftime('%Y%m%d-%H%M%S')}", nodes)
        self._check_links(layout, links or {})
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state.transcript.unlink(missing_ok=True)
        self.state.save({"inventory": str(inventory_file), "run": layout.run, "chain": layout.chain,
                         "ready": False, "rf": None, "radios": [], "routes": {}, "forwarding": {},
                         "services": {}, "addresses": {}, "nas": {}, "network": {}})
        with self.torn_down_on_failure():
            self._check(layout)
            self._prepare(layout)
            self._start_rf(layout)
            self._start_radios(layout)
            addresses = self._read_addresses(layout)
            plane = self._route(layout, addresses)
            self._check_reach(layout, addresses)
            self._stage(layout)
            self._write_network(layout, addresses, plane)
        self.state.update(lambda d: d.update(ready=True))
        hosts = self.hosts()
        self.progress(f"[colosseum] {len(hosts) - 1} layer nodes up; logs in {inv.paths.logs}/{layout.run} on each SRN")
        return hosts

    def _check_ssh_config(self, inv: Inventory) -> None:
        """Each SRN name must match a Host pattern of the ssh config (a pattern copied from an example that
        does not fit ``<team>-NNN`` leaves the SRNs without their user and host-key settings: every login
        would fail on an unknown host key, one SRN at a time)."""
        unmatched = ssh_config_unmatched(self._access(inv), [inv.name_of(s) for s in inv.srns])
        if unmatched:
            raise TestbedError(
                f"your ssh config ({inv.credentials.ssh_config}) has no `Host` pattern matching "
                f"{', '.join(unmatched)}; SRNs are <team>-NNN, e.g. add\n"
                f"  Host {inv.team}-*\n    User root\n    StrictHostKeyChecking no\n"
                "    UserKnownHostsFile /dev/null\n(see docs/colosseum.md)")

    @staticmethod
    def _check_links(layout: Layout, links: Mapping[int, LinkProfile]) -> None:
        """Scenario links must match the SRN roles: here the RF scenario, not JARVIS, makes the channel."""
        wrong = plan.link_mismatches(layout, {index: profile.name for index, profile in links.items()})
        if wrong:
            raise TestbedError(plan.LINKS_HELP + "\n".join(wrong))

    def _check(self, layout: Layout) -> None:
        self.progress(f"[colosseum] checking {len(layout.names)} SRNs through {layout.inventory.gateway.host}")

        def one(name: str) -> None:
            checks = plan.check_commands(layout, name)
            results = self._srn_shell(layout, name).run_many([c.command for c in checks], cwd="/", keep_going=True)
            failed = failed_checks(checks, results)
            if failed:
                raise TestbedError(f"{name}: " + "; ".join(failed))

        on_each({name: (lambda n=name: one(n)) for name in layout.names}, what="checking the SRNs")

    def _prepare(self, layout: Layout) -> None:
        archive = payload_archive(self.state_dir)

        def one(name: str) -> None:
            shell = self._srn_shell(layout, name)
            shell.run_many(plan.prepare_commands(layout, name), cwd="/")
            scope_target = plan.scope_config_path(layout, name)
            if scope_target is not None:
                shell.put(self._local_file(f"scope-{name}.conf", scope_config_text(
                    layout.inventory.users_bs, colosseumcli=True)), scope_target)
            if name in layout.chain:
                shell.put(archive, f"code/{CODE_ARCHIVE}")
                shell.run_many(plan.code_commands(layout, name))

        on_each({name: (lambda n=name: one(n)) for name in layout.names}, what="preparing the run directories")

    def _rf_stop_file(self, team: str) -> Path:
        return self.state_dir.parent / f"rf-last-stop-{team}.json"

    def _start_rf(self, layout: Layout) -> None:
        inv = layout.inventory
        name = inv.name_of(inv.rf_node)
        stop_file = self._rf_stop_file(inv.team)
        if stop_file.exists():
            since = time.time() - json.loads(stop_file.read_text())["stopped_wall"]
            wait = inv.timeouts.rf_stop_settle_s - since
            if wait > 0:
                self.progress(f"[colosseum] waiting {wait:.0f} s: Colosseum needs >{inv.timeouts.rf_stop_settle_s:.0f}"
                              " s between rf stop and rf start")
                time.sleep(wait)
        start, info_command, map_command = plan.rf_start_commands(layout)
        shell = self._srn_shell(layout, name)
        shell.put(self._local_file(plan.RADIO_MAP, json.dumps(inv.radio_map, indent=2)), plan.radio_map_path(layout))
        self.progress(f"[colosseum] {name}: {start}")
        self.state.update(lambda d: d.update(rf={"srn": name, "started": True, "info": {}}))
        output = shell.run(start, timeout=600)
        if not rf.started(output.stdout):
            text = (output.stdout + output.stderr).strip() or "no output"
            raise TestbedError(f"{name}: RF scenario {inv.rf_scenario} did not start: {text}")
        info = rf.parse_info(shell.run(info_command).stdout)
        problem = rf.confirm_running(info, inv.rf_scenario)
        if problem:
            raise TestbedError(f"{name}: {problem}")
        wrong = rf.radiomap_mismatches(inv.radio_map, rf.parse_radiomap(shell.run(map_command).stdout))
        if wrong:  # SCOPE would elect the wrong base station: stop before any radio starts
            raise TestbedError(f"{name}: the running scenario's radio map is not the one JARVIS passed: "
                               + "; ".join(wrong))
        self.state.update(lambda d: d["rf"].update(info=info))

    def _local_file(self, name: str, text: str) -> Path:
        """A file to put on an SRN, written in this testbed's state directory first."""
        path = self.state_dir / name
        path.write_text(text)
        return path

    def _start_radios(self, layout: Layout) -> None:
        for wave in plan.radio_order(layout):
            self.progress(f"[colosseum] starting radios on {', '.join(wave)}")
            self.state.update(lambda d: d["radios"].extend(wave))

            def one(name: str) -> None:
                self._srn_shell(layout, name).run_many(plan.radio_commands(layout, name), timeout=300)
                self._wait_address(layout, name, layout.srn(name).interface)

            on_each({name: (lambda n=name: one(n)) for name in wave}, what="starting the radios")

    def _wait_address(self, layout: Layout, name: str, interface: str) -> Address:
        """Poll the interface until the radio stack has given it an address."""
        shell = self._srn_shell(layout, name)
        command = plan.address_command(interface)
        deadline = time.monotonic() + layout.inventory.timeouts.radio_s
        while True:
            address = parse_address(shell.run(command, check=False).stdout)
            if address is not None:
                return address
            if time.monotonic() > deadline:
                raise TestbedError(f"{name}: {interface} has no IPv4 address after "
                                   f"{layout.inventory.timeouts.radio_s:.0f} s (see {layout.workdir(name)}/radio.log)")
            time.sleep(RADIO_POLL_S)

    def _read_addresses(self, layout: Layout) -> dict[str, SrnAddresses]:
        def one(name: str) -> SrnAddresses:
            srn = layout.srn(name)
            data = self._wait_address(layout, name, srn.interface)
            wired = data if srn.interface == WIRED_INTERFACE else None
            if srn.bridge:
                wired = self._wait_address(layout, name, WIRED_INTERFACE)
            return SrnAddresses(data, wired)

        addresses = on_each({name: (lambda n=name: one(n)) for name in layout.names}, what="reading addresses")
        self.state.update(lambda d: d.update(addresses={n: {"data": str(a.data), "wired": str(a.wired) if a.wired
                                                            else None} for n, a in addresses.items()}))
        return addresses

    def _route(self, layout: Layout, addresses: dict[str, SrnAddresses]) -> DataPlane:
        plane = plan.data_plane(layout, addresses)

        def one(name: str) -> None:
            shell = self._srn_shell(layout, name)
            if name in plane.forwarders:
                read, enable = plan.forwarding_commands()
                before = shell.run(read).stdout.strip()
                self.state.update(lambda d: d["forwarding"].update({name: before}))
                shell.run(enable)
            specs = [route.spec() for route in plane.routes.get(name, [])]
            self.state.update(lambda d: d["routes"].setdefault(name, []).extend(specs))
            shell.run_many([f"ip route replace {spec}" for spec in specs])

        hosts = sorted(set(plane.routes) | set(plane.forwarders))
        on_each({name: (lambda n=name: one(n)) for name in hosts}, what="adding routes")
        return plane

    def _check_reach(self, layout: Layout, addresses: dict[str, SrnAddresses]) -> None:
        self.progress(f"[colosseum] checking that the {len(layout.chain)} JARVIS nodes reach each other")

        def one(name: str) -> None:
            peers = [p for p in layout.chain if p != name]
            results = self._srn_shell(layout, name).run_many(plan.reach_commands(layout, addresses, name),
                                                             keep_going=True, timeout=30 + 6 * len(peers))
            failed = [f"{layout.node_name(p)} {p} ({addresses[p].data.ip})"
                      for p, result in zip(peers, results) if not result.ok]
            if failed:
                raise TestbedError(f"{name}: cannot reach {', '.join(failed)}")

        on_each({name: (lambda n=name: one(n)) for name in layout.chain}, what="the reachability check")

    def _stage(self, layout: Layout) -> None:
        if layout.inventory.nas_model is None:
            return

        def one(name: str) -> bool:
            shell = self._srn_shell(layout, name)
            probe, *_ = plan.stage_commands(layout, name, nas_has_model=False)
            present = shell.run(probe, check=False).ok
            shell.run_many(plan.stage_commands(layout, name, nas_has_model=present)[1:], timeout=3600)
            return present

        found = on_each({name: (lambda n=name: one(n)) for name in layout.chain}, what="staging from the NAS")
        self.state.update(lambda d: d.update(nas=found))
        where = ", ".join(n for n, ok in found.items() if ok) or "none"
        self.progress(f"[colosseum] model copied from the team NAS ({layout.inventory.nas_model}) on: {where}; "
                      "deploy pushes whatever is missing")

    def _write_network(self, layout: Layout, addresses: dict[str, SrnAddresses], plane: DataPlane) -> None:
        """The run's IP map and routes, kept in the state and in every SRN's log directory."""
        network = {
            "run": layout.run, "rf_scenario": layout.inventory.rf_scenario,
            "srns": {name: {"srn": layout.srn(name).id, "role": layout.srn(name).role,
                            "radio": layout.srn(name).radio_role, "network": layout.srn(name).network,
                            "interface": layout.srn(name).interface, "address": str(addresses[name].data),
                            "col0": str(addresses[name].wired) if addresses[name].wired else None,
                            "node": layout.node_name(name) if name in layout.chain else None}
                     for name in layout.names},
            "routes": {name: [r.spec() for r in routes] for name, routes in plane.routes.items()},
            "forwarders": plane.forwarders,
        }
        self.state.update(lambda d: d.update(network=network))
        local = self.state_dir / "network.json"
        local.write_text(json.dumps(network, indent=2))
        on_each({name: (lambda n=name: self._srn_shell(layout, n).put(local, "network.json"))
                 for name in layout.names}, what="writing network.json")

    # -- hosts -----------------------------------------------------------------------------------

    def _host_info(self, layout: Layout, index: int, name: str, address: Address) -> HostInfo:
        srn = layout.srn(name)
        workdir = layout.workdir(name)
        return HostInfo(name="user" if index == 0 else f"node{index}", index=index, address=address.ip,
                        workdir=workdir, ssh_host=name, ssh_user="root", profile=ROLE_LINK[srn.radio_role],
                        extra={"srn": srn.id, "role": srn.role, "radio": srn.radio_role, "interface": srn.interface,
                               "python": layout.inventory.python, "payload_path": f"{workdir}/code",
                               "secrets_dir": layout.inventory.paths.on(name).secrets})

    def hosts(self) -> list[HostInfo]:
        data = self._ready()
        layout = self._layout(data)
        return [self._host_info(layout, i, name, Address.from_text(data["addresses"][name]["data"]))
                for i, name in enumerate(layout.chain)]

    def shell(self, host: HostInfo) -> SshShell:
        return self._srn_shell(self._layout(self._ready()), host.ssh_host)

    def popen(self, host: HostInfo, argv: list[str]) -> RemoteProcess:
        return self.shell(host).popen(argv)

    def describe(self) -> dict:
        data = self._ready()
        inv = self.inventory()
        layout = self._layout(data)
        return {
            "kind": self.kind, "prefix": self.prefix, "team": inv.team, "run": layout.run, "image": inv.image,
            "gateway": inv.gateway.host, "rf_scenario": inv.rf_scenario, "rf_info": (data.get("rf") or {}).get("info"),
            "shaping": f"RF scenario {inv.rf_scenario} on Colosseum's channel emulator; no host-side shaping",
            "network": data["network"], "nas_model": {"path": inv.nas_model, "staged_on": data["nas"]},
            "logs": {name: layout.workdir(name) for name in layout.names},
            "after_reservation": {name: reservation_path(inv.team, "<id>", layout.srn(name).id, layout.run)
                                  for name in layout.names},
            "hosts": [h.to_dict() for h in self.hosts()],
        }

    # -- faults ----------------------------------------------------------------------------------

    def link_down(self, host: HostInfo) -> FaultResult:
        interface = host.extra["interface"]
        self.shell(host).run(plan.link_command(interface, "down"))
        return FaultResult.now("link_down", host.name, f"{interface} down on {host.ssh_host}")

    def link_up(self, host: HostInfo) -> FaultResult:
        """Bring the interface up and restore the routes through it (the kernel dropped them with the link)."""
        interface = host.extra["interface"]
        shell = self.shell(host)
        routes = [spec for spec in self._ready()["routes"].get(host.ssh_host, [])
                  if spec.split(" dev ")[1].split()[0] == interface]
        shell.run_many([plan.link_command(interface, "up"), *(f"ip route replace {spec}" for spec in routes)])
        return FaultResult.now("link_up", host.name, f"{interface} up on {host.ssh_host}, routes restored")

    # -- down ------------------------------------------------------------------------------------

    def _teardown(self, data: dict) -> list[str]:
        """Undo everything recorded: services, radios, routes, forwarding, the RF scenario."""
        layout = self._layout(data)
        pids = {s["host"]: s["pid"] for s in data["services"].values()}
        work = {}
        for name in layout.names:
            commands = plan.teardown_commands(layout, name, radio=name in data["radios"],
                                              routes=data["routes"].get(name, []),
                                              forwarding=data["forwarding"].get(name), pid=pids.get(name))
            if commands:
                work[name] = (lambda n=name, c=commands: self._run_all(layout, n, c))
        problems = []
        try:
            on_each(work, what="teardown")
        except TestbedError as exc:
            problems.append(str(exc))
        if (data.get("rf") or {}).get("started"):
            try:
                self._stop_rf(layout, data["rf"]["srn"])
            except TestbedError as exc:
                problems.append(str(exc))
        return problems

    def _run_all(self, layout: Layout, name: str, commands: list[str]) -> None:
        """Teardown commands: a non-zero exit means "already gone"; only a lost connection is a failure."""
        self._srn_shell(layout, name).run_many(commands, keep_going=True, cwd="/")

    def _stop_rf(self, layout: Layout, name: str) -> None:
        """``rf stop``, then ``rf info`` until the emulator reports the scenario cleared (it can take 15 s)."""
        inv = layout.inventory
        stop, info = plan.rf_stop_commands()
        shell = self._srn_shell(layout, name)
        self.progress(f"[colosseum] {name}: {stop}")
        shell.run(stop, check=False, timeout=120, cwd="/")
        deadline = time.monotonic() + inv.timeouts.rf_stop_s
        while not rf.stop_complete(rf.parse_info(shell.run(info, check=False, cwd="/").stdout)):
            if time.monotonic() > deadline:
                self.progress("[colosseum] rf info does not show the scenario cleared after "
                              f"{inv.timeouts.rf_stop_s:.0f} s; carrying on")
                break
            time.sleep(1.0)
        stop_file = self._rf_stop_file(inv.team)
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.write_text(json.dumps({"stopped_wall": time.time()}))
