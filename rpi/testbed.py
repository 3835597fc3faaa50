"""RpiTestbed: Raspberry Pis on Wi-Fi as JARVIS nodes, over SSH, each node service a systemd unit.

``up`` checks every chosen Pi first (login, sudo, NetworkManager, systemd)
and stops before changing anything if one is unreachable; then it
provisions (:mod:`rpi.provision`, idempotent), makes the run directory
``<base_dir>/runs/<run>`` with the payload code, reads each Pi's Wi-Fi
address and checks that every Pi pings every other one.  Node services run
as systemd units with ``Restart=no`` (:mod:`rpi.units`).  ``chronyc
tracking`` is read on every Pi when the run starts (``popen`` of the user
node) and when the run directory is written (``describe``), and both
readings go into ``testbed.json``.  Faults: ``systemctl kill`` with
SIGKILL / SIGSTOP / SIGCONT, and ``ip link set <wlan> down|up``.  The links
are the real Wi-Fi: shaping, degrade and partition are not available.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rpi import clock, provision, units
from rpi.inventory import SUPPORTED_PYTHON, RpiInventory, load_inventory
from testbed.addresses import Address, address_command, parse_address, reach_command
from testbed.fanout import on_each
from testbed.interface import LINK_FAULTS, PROCESS_FAULTS, FaultResult, HostInfo, TestbedError
from testbed.profiles import LinkProfile
from testbed.remote import InventoryTestbed
from testbed.shipping import CODE_ARCHIVE, payload_archive, payload_pins, unpack_command
from testbed.ssh import RemoteProcess, SshAccess, SshShell, connect

ADDRESS_POLL_S = 1.0
LINK = "wifi"


PYTHON_VERSION = 'import sys; print("%d.%d" % sys.version_info[:2])'


class RpiTestbed(InventoryTestbed):
    """Pis of one inventory; ``inventory`` is needed for ``up`` (later calls find it in the state)."""

    kind = "rpi"
    title = "Raspberry Pi"
    guide = "inventories/rpi.example.yaml and docs/rpi.md"
    faults = PROCESS_FAULTS | LINK_FAULTS  # the links are the real Wi-Fi: no shaping, degrade or partition

    def __init__(self, prefix: str = "jv-rpi", *, inventory: str | Path | None = None,
                 progress: Callable[[str], None] = print) -> None:
        super().__init__(prefix, inventory=inventory, progress=progress)

    def capacity(self) -> int:
        return len(self.inventory().layer_pis)

    def load_inventory(self, path: Path) -> RpiInventory:
        return load_inventory(path)

    @staticmethod
    def workdir(inv: RpiInventory, name: str, run: str) -> str:
        return f"{inv.base_of(name)}/runs/{run}"

    def _shell(self, inv: RpiInventory, name: str, run: str) -> SshShell:
        def make() -> SshShell:
            access = SshAccess(inv.ssh_config, inv.agent, None, inv.key)
            connection = connect(inv.by_name(name).ssh_host, access, user=inv.user)
            return SshShell(name, connection, self.workdir(inv, name, run), path_prepend=inv.path_prepend,
                            record=self.state.record)

        return self._cached_shell(name, make)

    def _on_chain(self, inv: RpiInventory, data: dict, work: Callable[[SshShell, str], object], *, what: str) -> dict:
        return on_each({name: (lambda n=name: work(self._shell(inv, n, data["run"]), n)) for name in data["chain"]},
                       what=what)

    # -- up --------------------------------------------------------------------------------------

    def up(self, nodes: int, links: Mapping[int, LinkProfile] | None = None) -> list[HostInfo]:
        inventory_file = self.inventory_file()
        inv = load_inventory(inventory_file)
        if self.state.exists():
            self.progress(f"[rpi] {self.prefix}: tearing down the previous run first")
            self.down()
        layers = inv.layer_pis
        if not 1 <= nodes <= len(layers):
            raise TestbedError(f"the inventory has {len(layers)} layer Pis; cannot run {nodes} layer nodes")
        wrong = sorted(i for i, p in (links or {}).items() if p.name != LINK)
        if wrong:
            raise TestbedError(f"the Pis' links are their real Wi-Fi; nodes {wrong} ask for other profiles "
                               "(use `wifi` in the scenario's links, or the emu testbed to emulate others)")
        wifi_secret = self._wifi_secret(inv)  # a missing passphrase stops us before any Pi is touched
        data = {"inventory": str(inventory_file), "run": f"{self.prefix}-{time.strftime('%Y%m%d-%H%M%S')}",
                "chain": [inv.user_pi.name] + [p.name for p in layers[:nodes]], "ready": False, "units": {},
                "addresses": {}, "versions": {}, "clock": {"before": {}, "after": {}}}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state.transcript.unlink(missing_ok=True)
        self.state.save(data)
        with self.torn_down_on_failure():
            self.progress(f"[rpi] checking {len(data['chain'])} Pis")
            self._on_chain(inv, data, lambda s, n: self._check(inv, s), what="checking the Pis")
            self.progress("[rpi] provisioning (packages, chrony, Wi-Fi, venv)")
            versions = self._on_chain(inv, data, lambda s, n: self._provision(inv, s, n, wifi_secret),
                                      what="provisioning")
            self.state.update(lambda d: d.update(versions=versions))
            archive = payload_archive(self.state_dir)
            self._on_chain(inv, data, lambda s, n: self._prepare(inv, s, n, data["run"], archive),
                           what="preparing the run directories")
            addresses = self._on_chain(inv, data, lambda s, n: str(self._wait_address(inv, s)),
                                       what="reading Wi-Fi addresses")
            self.state.update(lambda d: d.update(addresses=addresses))
            self._on_chain(inv, data, lambda s, n: self._reach(data["chain"], addresses, s, n),
                           what="the reachability check")
        self.state.update(lambda d: d.update(ready=True))
        return self.hosts()

    def _check(self, inv: RpiInventory, shell: SshShell) -> None:
        """What must hold before anything is installed, each failure with its reason."""
        checks = [("true", "log in"), ("command -v nmcli", "NetworkManager's nmcli is installed (Bookworm has it)"),
                  ("command -v systemctl", "systemd runs the node services"), ("uname -m", "the machine"),
                  (f"{shlex.quote(inv.system_python)} -c {shlex.quote(PYTHON_VERSION)}", "Python")]
        if inv.sudo:
            checks.insert(1, (f"{inv.sudo}true", f"{inv.user} may sudo without a password"))
        results = shell.run_many([c for c, _ in checks], cwd="/", keep_going=True)
        failed = [f"{meaning}: no" for (_, meaning), r in zip(checks, results) if not r.ok]
        machine, python = (r.stdout.strip() for r in results[-2:])
        if machine and machine != "aarch64":
            failed.append(f"uname -m is {machine}, not aarch64: PyTorch publishes ARM wheels for 64-bit only, "
                          "install the 64-bit Raspberry Pi OS")
        if python and python not in SUPPORTED_PYTHON:
            failed.append(f"{inv.system_python} is Python {python}; JARVIS needs one of {', '.join(SUPPORTED_PYTHON)} "
                          "(Bookworm has 3.11, Trixie 3.13): set `system_python`")
        if failed:
            raise TestbedError(f"{shell.name}: " + "; ".join(failed))

    def _provision(self, inv: RpiInventory, shell: SshShell, name: str, wifi_secret: str | None) -> dict[str, str]:
        """Packages, chrony, Wi-Fi and the venv; return the payload packages' versions on this Pi."""
        shell.run_many([provision.apt_command(inv), *provision.chrony_commands(inv, name),
                        provision.country_command(inv)], cwd="/", timeout=inv.timeouts.install_s)
        _, state = (r.stdout for r in shell.run_many(provision.wifi_probe_commands(inv), cwd="/", keep_going=True))
        shell.run(provision.wifi_command(inv, name, active="activated" in state), cwd="/", timeout=120,
                  stdin=wifi_secret)
        shell.run_many(provision.venv_commands(inv, name), cwd="/", timeout=300)
        pins = payload_pins()
        packages = list(pins)
        probe = provision.versions_probe(inv, name, packages)
        installed = provision.installed_versions(shell.run(probe, cwd="/", check=False, timeout=300).stdout, packages)
        if installed != pins:
            self.progress(f"[rpi] {name}: installing {pins} (found {installed or 'none'})")
            shell.run_many(provision.pip_commands(inv, name, pins), cwd="/", timeout=inv.timeouts.install_s)
            installed = provision.installed_versions(shell.run(probe, cwd="/", timeout=300).stdout, packages)
        return installed

    @staticmethod
    def _wifi_secret(inv: RpiInventory) -> str | None:
        """The passphrase as a line for the provisioning command's standard input (None: an open network)."""
        if inv.wifi.psk_env is None:
            return None
        value = os.environ.get(inv.wifi.psk_env)
        if value is None:
            raise TestbedError(f"the inventory says the Wi-Fi passphrase is in ${inv.wifi.psk_env}, "
                               "but that environment variable is not set")
        if "\n" in value:
            raise TestbedError(f"${inv.wifi.psk_env} holds a line break; a Wi-Fi passphrase cannot")
        return value + "\n"

    def _prepare(self, inv: RpiInventory, shell: SshShell, name: str, run: str, archive: Path) -> None:
        """``<base>/runs/<run>`` with the payload code, and ``model`` linked to ``<base>/model`` (kept between runs)."""
        workdir, model = self.workdir(inv, name, run), shlex.quote(f"{inv.base_of(name)}/model")
        code, link = shlex.quote(f"{workdir}/code"), shlex.quote(f"{workdir}/model")
        shell.run(f"mkdir -p {code} {model} && ln -sfn {model} {link}", cwd="/")
        shell.put(archive, f"code/{CODE_ARCHIVE}")
        shell.run(unpack_command(f"{workdir}/code"))

    def _wait_address(self, inv: RpiInventory, shell: SshShell) -> Address:
        deadline = time.monotonic() + inv.timeouts.wifi_s
        while True:
            address = parse_address(shell.run(address_command(inv.wifi.interface), check=False).stdout)
            if address is not None:
                return address
            if time.monotonic() > deadline:
                raise TestbedError(f"{shell.name}: {inv.wifi.interface} has no IPv4 address after "
                                   f"{inv.timeouts.wifi_s:.0f} s: is it on {inv.wifi.ssid!r}?")
            time.sleep(ADDRESS_POLL_S)

    @staticmethod
    def _reach(chain: list[str], addresses: dict[str, str], shell: SshShell, name: str) -> None:
        peers = [p for p in chain if p != name]
        results = shell.run_many([reach_command(addresses[p].split("/")[0]) for p in peers], keep_going=True,
                                 timeout=30 + 6 * len(peers))
        failed = [p for p, r in zip(peers, results) if not r.ok]
        if failed:
            raise TestbedError(f"{name}: cannot reach {', '.join(failed)} over Wi-Fi")

    # -- hosts, services -------------------------------------------------------------------------

    def hosts(self) -> list[HostInfo]:
        data = self._ready()
        inv = self.inventory()
        hosts = []
        for index, name in enumerate(data["chain"]):
            node = "user" if index == 0 else f"node{index}"
            workdir = self.workdir(inv, name, data["run"])
            hosts.append(HostInfo(
                name=node, index=index, address=data["addresses"][name].split("/")[0], workdir=workdir,
                ssh_host=name, ssh_user=inv.user, profile=LINK,
                extra={"pi": name, "interface": inv.wifi.interface, "unit": units.unit_name(self.prefix, node),
                       "python": f"{inv.venv_of(name)}/bin/python", "payload_path": f"{workdir}/code"}))
        return hosts

    def shell(self, host: HostInfo) -> SshShell:
        data = self._ready()
        return self._shell(self.inventory(), host.ssh_host, data["run"])

    def start_service(self, host: HostInfo, argv: list[str], log_name: str = "service.out") -> int:
        """Run ``argv`` as a systemd unit (Restart=no) from the run directory; return its main pid."""
        inv = self.inventory()
        unit = host.extra["unit"]
        local = self.state_dir / unit
        local.write_text(units.unit_text(description=f"JARVIS {host.name} ({self.prefix})", argv=argv,
                                         workdir=host.workdir, user=inv.user, log_name=log_name))
        shell = self.shell(host)
        shell.put(local, unit)
        self.state.update(lambda d: d["units"].update({host.name: {"pi": host.ssh_host, "unit": unit}}))
        results = shell.run_many(units.start_commands(inv.sudo, f"{host.workdir}/{unit}", unit))
        return int(results[-1].stdout.strip())

    def stop_service(self, host: HostInfo) -> None:
        """Stop (and unlink) the systemd unit this testbed started for ``host``; none started is fine."""
        service = self._ready()["units"].get(host.name)
        if service is None:
            return
        self.shell(host).run_many(units.stop_commands(self.inventory().sudo, service["unit"]), keep_going=True,
                                  cwd="/")
        self.state.update(lambda d: d["units"].pop(host.name, None))

    def popen(self, host: HostInfo, argv: list[str]) -> RemoteProcess:
        """Stream the user node's output; first read every Pi's clock (the run starts now)."""
        clocks = self._read_clocks()
        self.state.update(lambda d: d["clock"].update(before=clocks))
        return self.shell(host).popen(argv)

    def _read_clocks(self) -> dict:
        data = self._ready()
        inv = self.inventory()

        def one(shell: SshShell, name: str) -> dict:
            result = shell.run(clock.TRACKING_COMMAND, check=False)
            return clock.parse_tracking(result.stdout) if result.ok else {"error": result.stderr.strip()}

        return self._on_chain(inv, data, one, what="reading chronyc tracking")

    def describe(self) -> dict:
        """The testbed for the run directory; reads every Pi's clock again (the run has ended)."""
        clocks = self._read_clocks()
        data = self.state.update(lambda d: d["clock"].update(after=clocks))
        inv = self.inventory()
        return {"kind": self.kind, "prefix": self.prefix, "run": data["run"],
                "shaping": f"real Wi-Fi ({inv.wifi.ssid}); no shaping",
                "wifi": {"ssid": inv.wifi.ssid, "interface": inv.wifi.interface},
                "clock": data["clock"], "versions": data["versions"],
                "logs": {name: self.workdir(inv, name, data["run"]) for name in data["chain"]},
                "hosts": [h.to_dict() for h in self.hosts()]}

    # -- faults ----------------------------------------------------------------------------------

    def _signal(self, host: HostInfo, signal: str, until: str, action: str) -> FaultResult:
        unit = host.extra["unit"]
        result = self.shell(host).run(units.signal_command(self.inventory().sudo, unit, f"SIG{signal}", until),
                                      check=False)
        if result.exit_code == units.NOT_RUNNING:
            raise TestbedError(f"{host.name}: {unit} has no running process")
        if not result.ok:
            raise TestbedError(f"{host.name}: {unit} did not take SIG{signal} within 5 s")
        return FaultResult.now(action, host.name, f"systemctl kill --signal=SIG{signal} {unit} on {host.ssh_host}")

    def link_down(self, host: HostInfo) -> FaultResult:
        """The Wi-Fi interface down (SSH must reach the Pi another way, e.g. Ethernet)."""
        sudo, interface = self.inventory().sudo, host.extra["interface"]
        self.shell(host).run(f"{sudo}ip link set {shlex.quote(interface)} down")
        return FaultResult.now("link_down", host.name, f"{interface} down on {host.ssh_host}")

    def link_up(self, host: HostInfo) -> FaultResult:
        """The Wi-Fi interface up, returning once it has its address again (NetworkManager reconnects)."""
        inv = self.inventory()
        shell = self.shell(host)
        interface = host.extra["interface"]
        shell.run(f"{inv.sudo}ip link set {shlex.quote(interface)} up")
        self._wait_address(inv, shell)
        return FaultResult.now("link_up", host.name, f"{interface} up with its address on {host.ssh_host}")

    # -- down ------------------------------------------------------------------------------------

    def _teardown(self, data: dict) -> list[str]:
        """Stop and unlink every unit this testbed started.  Provisioning and logs stay."""
        inv = self.inventory()
        by_pi: dict[str, list[str]] = {}
        for service in data["units"].values():
            by_pi.setdefault(service["pi"], []).extend(units.stop_commands(inv.sudo, service["unit"]))
        try:
            on_each({pi: (lambda p=pi, c=commands: self._shell(inv, p, data["run"]).run_many(c, keep_going=True,
                                                                                               cwd="/"))
                     for pi, commands in by_pi.items()}, what="stopping the node units")
        except TestbedError as exc:
            return [str(exc)]
        return []
