"""RpiTestbed: the SSH testbed on Raspberry Pis, plus Pi provisioning, systemd units and the real Wi-Fi.

What differs from any SSH host (:mod:`sshhosts.testbed`): the checks (64-bit
OS, NetworkManager, systemd, a Python PyTorch has wheels for); provisioning
(:mod:`rpi.provision`: packages, chrony, the Wi-Fi country, the Wi-Fi through
NetworkManager, then the venv as on any host); the data address, read from
the Wi-Fi interface once it has joined; node services as systemd units with
``Restart=no`` (:mod:`rpi.units`), signalled through systemd; link faults as
``ip link set <wlan> down|up``; and ``chronyc tracking`` read beside the
measured clock offsets.  The links are the real Wi-Fi: no shaping, degrade
or partition.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from rpi import clock, provision, units
from rpi.inventory import SUPPORTED_PYTHON, RpiInventory, load_inventory
from sshhosts import plan
from sshhosts.links import BareLinks, LinkControl
from sshhosts.testbed import SshTestbed
from testbed import services
from testbed.addresses import Address, address_command, parse_address
from testbed.interface import LINK_FAULTS, PROCESS_FAULTS, FaultKind, FaultResult, HostInfo, Testbed, TestbedError
from testbed.plan import Check
from testbed.profiles import LinkProfile
from testbed.ssh import SshShell

ADDRESS_POLL_S = 1.0
LINK = "wifi"


class RpiTestbed(SshTestbed):
    """Pis of one inventory; ``inventory`` is needed for ``up`` (later calls find it in the state)."""

    kind = "rpi"
    title = "Raspberry Pi"
    guide = "inventories/rpi.example.yaml and docs/rpi.md"

    def __init__(self, prefix: str = "jv-rpi", *, inventory: str | Path | None = None,
                 progress: Callable[[str], None] = print) -> None:
        super().__init__(prefix, inventory=inventory, progress=progress)
        self._wifi_secret: str | None = None

    def load_inventory(self, path: Path) -> RpiInventory:
        return load_inventory(path)

    faults = PROCESS_FAULTS | LINK_FAULTS  # the links are the real Wi-Fi: no shaping, degrade or partition

    def supported_faults(self) -> frozenset[FaultKind]:
        return self.faults  # link faults on the Wi-Fi interface, not through the (bare) data plane

    degrade = Testbed.degrade  # the real Wi-Fi cannot be shaped: refused, as on any testbed without shaping
    partition = Testbed.partition

    def links(self, inv: RpiInventory) -> LinkControl:
        return BareLinks(f"the Pis' real Wi-Fi ({inv.wifi.ssid}), unshaped")

    # -- checks and provisioning -----------------------------------------------------------------

    def checks(self, inv: RpiInventory, name: str) -> list[Check]:
        checks = [Check("true", "log in"),
                  Check("command -v nmcli", "NetworkManager's nmcli is installed (Bookworm has it)"),
                  Check("command -v systemctl", "systemd runs the node services"), Check("uname -m", "the machine"),
                  Check(f"{shlex.quote(inv.system_python)} -c {shlex.quote(plan.PYTHON_VERSION)}", "Python")]
        if inv.sudo:
            checks.insert(1, Check(f"{inv.sudo}true", f"{inv.user} may sudo without a password"))
        return checks

    def check_problems(self, inv: RpiInventory, name: str, outputs: dict[str, str]) -> list[str]:
        problems = []
        machine = outputs.get("uname -m", "").strip()
        if machine and machine != "aarch64":
            problems.append(f"uname -m is {machine}, not aarch64: PyTorch publishes ARM wheels for 64-bit only, "
                            "install the 64-bit Raspberry Pi OS")
        python = self.checks(inv, name)[-1].command
        version = outputs.get(python, "").strip()
        problem = plan.python_problem(version, inv.system_python, SUPPORTED_PYTHON) if version else None
        if problem:
            problems.append(f"{problem} (Bookworm has 3.11, Trixie 3.13): set `system_python`")
        return problems

    def before_up(self, inv: RpiInventory) -> None:
        """The Wi-Fi passphrase, as a line for the provisioning command's standard input (None: an open network);
        a missing one stops us before any Pi is touched."""
        self._wifi_secret = None
        if inv.wifi.psk_env is None:
            return
        value = os.environ.get(inv.wifi.psk_env)
        if value is None:
            raise TestbedError(f"the inventory says the Wi-Fi passphrase is in ${inv.wifi.psk_env}, "
                               "but that environment variable is not set")
        if "\n" in value:
            raise TestbedError(f"${inv.wifi.psk_env} holds a line break; a Wi-Fi passphrase cannot")
        self._wifi_secret = value + "\n"

    def _system_commands(self, inv: RpiInventory, name: str) -> list[str]:
        return [provision.apt_command(inv), *provision.chrony_commands(inv, name), provision.country_command(inv)]

    def provision_plan(self, inv: RpiInventory, name: str) -> list[str]:
        return [*self._system_commands(inv, name), *provision.wifi_probe_commands(inv),
                "# the passphrase arrives on standard input; `nmcli connection up` only if not already activated:",
                provision.wifi_command(inv, name, active=False), *super().provision_plan(inv, name)]

    def provision(self, inv: RpiInventory, shell: SshShell, name: str) -> dict[str, str]:
        """Packages, chrony, Wi-Fi, then the venv; return the payload packages' versions on this Pi."""
        shell.run_many(self._system_commands(inv, name), cwd="/", timeout=inv.timeouts.install_s)
        _, state = (r.stdout for r in shell.run_many(provision.wifi_probe_commands(inv), cwd="/", keep_going=True))
        shell.run(provision.wifi_command(inv, name, active="activated" in state), cwd="/", timeout=120,
                  stdin=self._wifi_secret)
        return super().provision(inv, shell, name)

    def address_plan(self, inv: RpiInventory, name: str) -> list[str]:
        return [address_command(inv.wifi.interface),
                f"# repeated until {inv.wifi.interface} has an address (up to {inv.timeouts.wifi_s:.0f} s)"]

    def address(self, inv: RpiInventory, shell: SshShell, name: str) -> Address:
        """The Wi-Fi address, once NetworkManager has joined (DHCP may take a while)."""
        deadline = time.monotonic() + inv.timeouts.wifi_s
        while True:
            address = parse_address(shell.run(address_command(inv.wifi.interface), check=False).stdout)
            if address is not None:
                return address
            if time.monotonic() > deadline:
                raise TestbedError(f"{shell.name}: {inv.wifi.interface} has no IPv4 address after "
                                   f"{inv.timeouts.wifi_s:.0f} s: is it on {inv.wifi.ssid!r}?")
            time.sleep(ADDRESS_POLL_S)

    def profiles(self, inv: RpiInventory, chain: list[str], links: Mapping[int, LinkProfile] | None
                 ) -> dict[str, LinkProfile | None]:
        """Every Pi's link is its real Wi-Fi: the scenario may only say `wifi`."""
        wrong = sorted(i for i, p in (links or {}).items() if p.name != LINK)
        if wrong:
            raise TestbedError(f"the Pis' links are their real Wi-Fi; nodes {wrong} ask for other profiles "
                               "(use `wifi` in the scenario's links, or the emu testbed to emulate others)")
        return {name: None for name in chain}

    def _host_info(self, inv: RpiInventory, run: str, index: int, name: str, address: str) -> HostInfo:
        host = super()._host_info(inv, run, index, name, address)
        extra = {**host.extra, "pi": name, "unit": units.unit_name(self.prefix, host.name)}
        return HostInfo(**{**host.to_dict(), "profile": LINK, "extra": extra})

    # -- node services as systemd units ----------------------------------------------------------

    def service_plan(self, inv: RpiInventory, host: HostInfo, argv: list[str]) -> list[str]:
        unit = host.extra["unit"]
        return [f"# put the unit {unit} (Restart=no) -> {host.workdir}/{unit}",
                *units.start_commands(inv.sudo, f"{host.workdir}/{unit}", unit)]

    def start_service(self, host: HostInfo, argv: list[str], log_name: str = "service.out") -> int:
        """Run ``argv`` as a systemd unit (Restart=no) from the run directory; return its main pid."""
        inv = self.inventory()
        unit = host.extra["unit"]
        local = self.state_dir / unit
        local.write_text(units.unit_text(description=f"JARVIS {host.name} ({self.prefix})", argv=argv,
                                         workdir=host.workdir, user=inv.login, log_name=log_name))
        shell = self.shell(host)
        shell.put(local, unit)
        self.state.update(lambda d: d["services"].update({host.name: {"host": host.ssh_host, "unit": unit}}))
        results = shell.run_many(units.start_commands(inv.sudo, f"{host.workdir}/{unit}", unit))
        return int(results[-1].stdout.strip())

    def stop_service(self, host: HostInfo) -> None:
        """Stop (and unlink) the systemd unit this testbed started for ``host``; none started is fine."""
        service = self._ready()["services"].get(host.name)
        if service is None:
            return
        self.shell(host).run_many(units.stop_commands(self.inventory().sudo, service["unit"]), keep_going=True,
                                  cwd="/")
        self.state.update(lambda d: d["services"].pop(host.name, None))

    def teardown_commands(self, inv: RpiInventory, data: dict, name: str) -> list[str]:
        return [c for s in data["services"].values() if s["host"] == name
                for c in units.stop_commands(inv.sudo, s["unit"])]

    def teardown_plan(self, inv: RpiInventory, name: str) -> list[str]:
        return units.stop_commands(inv.sudo, "<unit>")

    def fault_plan(self, inv: RpiInventory, control: LinkControl, state, name: str) -> list[str]:
        iface = shlex.quote(inv.wifi.interface)
        return [*(f"# {action}: {units.signal_command(inv.sudo, '<unit>', 'SIG' + signal, until)}"
                  for action, (signal, until) in services.PROCESS_SIGNALS.items()),
                f"# link down / up: {inv.sudo}ip link set {iface} down|up (SSH must reach the Pi another way)"]

    def _signal(self, host: HostInfo, signal: str, until: str, action: str) -> FaultResult:
        unit = host.extra["unit"]
        result = self.shell(host).run(units.signal_command(self.inventory().sudo, unit, f"SIG{signal}", until),
                                      check=False)
        if result.exit_code == units.NOT_RUNNING:
            raise TestbedError(f"{host.name}: {unit} has no running process")
        if not result.ok:
            raise TestbedError(f"{host.name}: {unit} did not take SIG{signal} within 5 s")
        return FaultResult.now(action, host.name, f"systemctl kill --signal=SIG{signal} {unit} on {host.ssh_host}")

    # -- link faults on the Wi-Fi interface ------------------------------------------------------

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
        self.address(inv, shell, host.ssh_host)
        return FaultResult.now("link_up", host.name, f"{interface} up with its address on {host.ssh_host}")

    # -- clocks ----------------------------------------------------------------------------------

    def clock_plan(self, inv: RpiInventory, name: str) -> list[str]:
        return [*super().clock_plan(inv, name), clock.TRACKING_COMMAND]

    def read_clock(self, inv: RpiInventory, shell: SshShell, name: str) -> dict:
        """The measured offset, and chrony's own account of the clock."""
        result = shell.run(clock.TRACKING_COMMAND, check=False)
        chrony = clock.parse_tracking(result.stdout) if result.ok else {"error": result.stderr.strip()}
        return {**super().read_clock(inv, shell, name), "chrony": chrony}

    def describe(self) -> dict:
        described = super().describe()
        inv = self.inventory()
        return {**described, "wifi": {"ssid": inv.wifi.ssid, "interface": inv.wifi.interface}}
