"""Every remote command the Colosseum testbed runs, as data: per host, per phase, in order.

The testbed executes exactly these lists, ``--dry-run`` prints them without
connecting, and the tests compare them with what the stand-in tools logged.
Commands follow Colosseum's documentation and the published projects that
use it: ``colosseumcli rf start <id> -m radiomap.json -c`` / ``rf info`` /
``rf radiomap`` / ``rf stop``, the Wi-Fi image's ``~/interactive_scripts``
(``route_setup.sh <peer SRN>`` once per Wi-Fi peer), SCOPE's
``scope_start.py`` in tmux with JARVIS's SCOPE config,
``su srn-user -c 'cp -r /share/...'`` for the team NAS, logs under /logs.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from colosseum.inventory import ROLE_LINK, WIRED_INTERFACE, Inventory, Srn
from testbed.addresses import Address, address_command, reach_command
from colosseum.network import DataPlane, SrnAddresses, needs_wired, plan_routes
from testbed.services import service_command, stop_service_command
from testbed.plan import Check, CommandPlan
from testbed.shipping import CODE_ARCHIVE, payload_pins, unpack_command

q = shlex.quote


@dataclass(frozen=True)
class Layout:
    """The SRNs of one run: names in node order (user first), plus every SRN's paths for this run."""

    inventory: Inventory
    prefix: str
    run: str
    chain: list[str]

    @classmethod
    def choose(cls, inventory: Inventory, prefix: str, run: str, nodes: int) -> "Layout":
        """The end-user SRN and the first ``nodes`` other SRNs in inventory order."""
        layers = inventory.layer_srns
        if nodes < 1 or nodes > len(layers):
            raise ValueError(f"the inventory has {len(layers)} SRNs besides the end-user SRN; "
                             f"cannot run {nodes} layer nodes")
        chain = [inventory.name_of(inventory.user_srn)] + [inventory.name_of(s) for s in layers[:nodes]]
        return cls(inventory, prefix, run, chain)

    @property
    def names(self) -> list[str]:
        """Every SRN of the inventory: all of them run their radio, even those holding no layers."""
        return [self.inventory.name_of(s) for s in self.inventory.srns]

    def srn(self, name: str) -> Srn:
        return self.inventory.by_name(name)

    def workdir(self, name: str) -> str:
        """``/logs/<run>``: Colosseum copies /logs to the team NAS after the reservation."""
        return f"{self.inventory.paths.on(name).logs}/{self.run}"

    def tmux_socket(self, name: str) -> str:
        """A tmux server of our own per SRN, so teardown kills exactly what we started."""
        return f"{self.prefix}-{name}"

    def node_name(self, name: str) -> str:
        index = self.chain.index(name)
        return "user" if index == 0 else f"node{index}"


LINKS_HELP = ("on Colosseum the RF scenario and each SRN's role make the links; reorder the SRNs in the inventory "
              "or change the scenario's links:\n")


def link_mismatches(layout: Layout, links: dict[int, str]) -> list[str]:
    """Scenario link names (node index -> profile name) that do not match the SRN a node runs on."""
    wrong = []
    for index, profile in sorted(links.items()):
        if index >= len(layout.chain):
            wrong.append(f"  node {index}: not part of this run ({len(layout.chain) - 1} layer nodes)")
            continue
        srn = layout.srn(layout.chain[index])
        if profile != ROLE_LINK[srn.radio_role]:
            wrong.append(f"  node {index} ({layout.chain[index]}) is a {srn.radio_role} SRN: its link is "
                         f"'{ROLE_LINK[srn.radio_role]}', the scenario asks for '{profile}'")
    return wrong


def check_commands(layout: Layout, name: str) -> list[Check]:
    """What must hold on SRN ``name`` before the RF scenario starts (each failure names its cause)."""
    inv, srn = layout.inventory, layout.srn(name)
    paths = inv.paths.on(name)
    checks = [Check("true", "log in through the gateway")]
    if srn is inv.rf_node:
        checks.append(Check("command -v colosseumcli", "colosseumcli is installed (it starts the RF scenario)"))
    radio = srn.radio_role
    if radio in ("wifi", "cellular-ue", "cellular-bs"):
        checks.append(Check("command -v tmux", "tmux is installed (the radio runs in it)"))
    if radio == "wifi":
        for script in ("tap_setup.sh", "route_setup.sh", "modem_start.sh"):
            checks.append(Check(f"test -x {q(paths.wifi_scripts + '/' + script)}",
                                f"the Wi-Fi image script {paths.wifi_scripts}/{script} exists"))
    if radio.startswith("cellular"):
        checks.append(Check(f"test -f {q(paths.scope + '/scope_start.py')}",
                            f"SCOPE's {paths.scope}/scope_start.py exists"))
        if not inv.ships_scope_config(srn):
            config = inv.scope_config_of(srn)
            checks.append(Check(f"test -f {q(paths.scope + '/' + config)}",
                                f"SCOPE config {paths.scope}/{config} exists"))
    if needs_wired(srn):
        checks.append(Check(f"ip link show {WIRED_INTERFACE}", f"the wired interface {WIRED_INTERFACE} exists"))
    if name in layout.chain:
        modules = tuple(payload_pins())
        probe = f"import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in {modules!r}))"
        checks.append(Check(f"{q(inv.python)} -c {q(probe)}",
                            f"{inv.python} has {', '.join(modules)} (see docs/colosseum.md: the image)"))
    return checks


def prepare_commands(layout: Layout, name: str) -> list[str]:
    """The run's log directory; on JARVIS nodes a model directory outside /logs (not copied to the NAS
    after the reservation, kept between runs), linked as ``<workdir>/model``."""
    workdir = layout.workdir(name)
    commands = [f"mkdir -p {q(workdir)}"]
    if name in layout.chain:
        model = layout.inventory.paths.on(name).model
        commands.append(f"mkdir -p {q(model)} && ln -sfn {q(model)} {q(workdir + '/model')}")
    return commands


def code_commands(layout: Layout, name: str) -> list[str]:
    """Unpack the payload code (shipped as one archive) next to the run's logs."""
    return [unpack_command(f"{layout.workdir(name)}/code")]


RADIO_MAP = "radiomap.json"  # in the RF SRN's run directory


def radio_map_path(layout: Layout) -> str:
    return f"{layout.workdir(layout.inventory.name_of(layout.inventory.rf_node))}/{RADIO_MAP}"


def rf_start_commands(layout: Layout) -> list[str]:
    """Start the scenario with the radio map pinning each SRN's RF node; ``rf info`` and ``rf radiomap`` then
    confirm it (``rf start`` exits 0 whether or not it worked)."""
    start = f"colosseumcli rf start {layout.inventory.rf_scenario} -m {q(radio_map_path(layout))} -c"
    return [start, "colosseumcli rf info", "colosseumcli rf radiomap"]


def scope_config_path(layout: Layout, name: str) -> str | None:
    """Where JARVIS's SCOPE config goes on SRN ``name`` (None: it runs no SCOPE, or the user's own config)."""
    srn = layout.srn(name)
    if not layout.inventory.ships_scope_config(srn):
        return None
    return f"{layout.inventory.paths.on(name).scope}/{layout.inventory.scope_config_of(srn)}"


def rf_stop_commands() -> list[str]:
    """``rf info`` is then polled until the emulator reports the scenario cleared."""
    return ["colosseumcli rf stop", "colosseumcli rf info"]


def _tmux(layout: Layout, name: str, command: str) -> str:
    log = f"{layout.workdir(name)}/radio.log"
    return (f"tmux -L {q(layout.tmux_socket(name))} new-session -d -s radio "
            f"{q(f'{command} 2>&1 | tee -a {q(log)}')}")


def radio_commands(layout: Layout, name: str) -> list[str]:
    """Bring up the SRN's radio stack; long-running parts go into tmux, their output into radio.log."""
    srn = layout.srn(name)
    paths = layout.inventory.paths.on(name)
    radio = srn.radio_role
    if radio == "wifi":
        scripts = q(paths.wifi_scripts)
        return [f"cd {scripts} && ./tap_setup.sh",
                *(f"cd {scripts} && ./route_setup.sh {peer}" for peer in wifi_peers(layout, name)),
                _tmux(layout, name, f"cd {scripts} && ./modem_start.sh")]
    if radio.startswith("cellular"):
        config = q(layout.inventory.scope_config_of(srn))
        return [_tmux(layout, name, f"cd {q(paths.scope)} && python3 scope_start.py --config-file {config}")]
    return []


def wifi_peers(layout: Layout, name: str) -> list[int]:
    """The other Wi-Fi SRNs: the image's ``route_setup.sh`` takes one peer's SRN id per call."""
    return [s.id for s in layout.inventory.srns if s.radio_role == "wifi" and layout.inventory.name_of(s) != name]


def radio_order(layout: Layout) -> list[list[str]]:
    """Waves of SRNs whose radios start together: the base station first, since UEs attach to it."""
    first = [n for n in layout.names if layout.srn(n).radio_role == "cellular-bs"]
    rest = [n for n in layout.names if n not in first and radio_commands(layout, n)]
    return [wave for wave in (first, rest) if wave]


def address_commands(layout: Layout, name: str) -> list[str]:
    """Read the role's interface (polled until it has an address) and, where routes need it, col0."""
    srn = layout.srn(name)
    commands = [address_command(srn.interface)]
    if needs_wired(srn) and srn.interface != WIRED_INTERFACE:
        commands.append(address_command(WIRED_INTERFACE))
    return commands


def placeholder_addresses(layout: Layout) -> dict[str, SrnAddresses]:
    """Stand-in addresses for a dry run, which cannot read the real ones."""
    out = {}
    for name in layout.names:
        srn = layout.srn(name)
        wired = Address.placeholder(WIRED_INTERFACE, name) if needs_wired(srn) else None
        out[name] = SrnAddresses(Address.placeholder(srn.interface, name), wired)
    return out


def data_plane(layout: Layout, addresses: dict[str, SrnAddresses]) -> DataPlane:
    return plan_routes(layout.inventory, layout.chain, addresses)


def forwarding_commands() -> list[str]:
    """Read the current setting (restored at teardown), then enable forwarding."""
    return ["sysctl -n net.ipv4.ip_forward", "sysctl -w net.ipv4.ip_forward=1"]


def route_commands(plane: DataPlane, name: str) -> list[str]:
    commands = forwarding_commands() if name in plane.forwarders else []
    return commands + [f"ip route replace {route.spec()}" for route in plane.routes.get(name, [])]


def reach_commands(layout: Layout, addresses: dict[str, SrnAddresses], name: str) -> list[str]:
    """Every JARVIS node pings every other one: skipped layers and replicas may connect any pair."""
    if name not in layout.chain:
        return []
    return [reach_command(addresses[peer].data.ip) for peer in layout.chain if peer != name]


def nas_paths(layout: Layout, name: str) -> tuple[str, str]:
    """The model on the team NAS as the SRN sees it (``/share/<nas_model>``) and the copy in /tmp."""
    paths = layout.inventory.paths.on(name)
    return f"{paths.share}/{layout.inventory.nas_model}", f"/tmp/{layout.run}-{name}-model"


def nas_probe_command(layout: Layout, name: str) -> str:
    """Only srn-user reads /share, so even the check runs as srn-user."""
    source, _ = nas_paths(layout, name)
    return f"su srn-user -c {q(f'test -d {q(source)}')}"


def nas_copy_commands(layout: Layout, name: str) -> list[str]:
    """Copy the prepared model from the NAS as srn-user, then into the model directory as root."""
    source, tmp = nas_paths(layout, name)
    model = layout.inventory.paths.on(name).model
    return [f"su srn-user -c {q(f'cp -r {q(source)} {q(tmp)}')}",
            f"cp -r {q(tmp)}/. {q(model)}/ && rm -rf {q(tmp)}"]


def stage_commands(layout: Layout, name: str, *, nas_has_model: bool) -> list[str]:
    if name not in layout.chain or layout.inventory.nas_model is None:
        return []
    return [nas_probe_command(layout, name)] + (nas_copy_commands(layout, name) if nas_has_model else [])


def teardown_commands(layout: Layout, name: str, *, radio: bool, routes: list[str], forwarding: str | None,
                      pid: int | str | None) -> list[str]:
    """Undo exactly what was recorded: the node service, the radio's tmux server, routes, forwarding."""
    commands = []
    if pid is not None:
        commands.append(stop_service_command(pid))
    if radio:
        commands.append(f"tmux -L {q(layout.tmux_socket(name))} kill-server")
    commands += [f"ip route del {spec}" for spec in routes]
    if forwarding is not None:
        commands.append(f"sysctl -w net.ipv4.ip_forward={forwarding}")
    return commands


# -- the node service and faults ------------------------------------------------------------------

def link_command(interface: str, state: str) -> str:
    return f"ip link set {interface} {state}"


def dry_run(layout: Layout, *, service_argv: dict[str, list[str]],
            addresses: dict[str, SrnAddresses] | None = None) -> CommandPlan:
    """Every command for ``layout`` in the order the testbed runs them.

    ``service_argv`` maps each layer SRN to its node service's argv;
    ``addresses`` are the SRNs' (placeholders when not given: a dry run
    cannot read them).
    """
    inv = layout.inventory
    plan = CommandPlan([f"Colosseum dry run: team {inv.team}, RF scenario {inv.rf_scenario}, run {layout.run}",
                        f"SSH through {inv.gateway.host}; nothing below was executed.",
                        "Every SRN is checked first; <...> addresses are read from the SRNs when the testbed comes up."])
    for name in layout.names:
        srn = layout.srn(name)
        role = srn.role if srn.role != "user" else f"user on {srn.radio}"
        node = layout.node_name(name) if name in layout.chain else "radio only"
        plan.titles[name] = f"{role}, {node}, logs in {layout.workdir(name)}"
    addresses = addresses or placeholder_addresses(layout)
    plane = data_plane(layout, addresses)
    rf = layout.inventory.name_of(layout.inventory.rf_node)
    for name in layout.names:
        plan.add(name, "check", [c.command for c in check_commands(layout, name)])
    for name in layout.names:
        plan.add(name, "prepare", prepare_commands(layout, name))
        if name in layout.chain:
            plan.add(name, "prepare", [f"# put {CODE_ARCHIVE} (the payload package) -> {layout.workdir(name)}/code/",
                                       *code_commands(layout, name)])
    for name in layout.names:
        target = scope_config_path(layout, name)
        if target is not None:
            plan.add(name, "prepare", [f"# put JARVIS's SCOPE config (iperf off, slicing off, users-bs "
                                       f"{layout.inventory.users_bs}) -> {target}"])
    plan.add(rf, "rf", [f"# put the radio map -> {radio_map_path(layout)}: {json.dumps(layout.inventory.radio_map)}",
                        *rf_start_commands(layout)])
    for wave in radio_order(layout):
        for name in wave:
            plan.add(name, "radio", radio_commands(layout, name))
    for name in layout.names:
        plan.add(name, "address", address_commands(layout, name))
        plan.add(name, "route", route_commands(plane, name))
    for name in layout.chain:
        plan.add(name, "reach", reach_commands(layout, addresses, name))
        plan.add(name, "stage", stage_commands(layout, name, nas_has_model=True))
        plan.add(name, "stage", ["# put network.json (addresses and routes of this run)"])
        plan.add(name, "service", ["# deploy: sha256sum of model files, put the missing ones and the node config"])
        if name in service_argv:
            plan.add(name, "service", [service_command(service_argv[name], "service.out")])
    for name in layout.names:
        forwarding = "<saved value>" if name in plane.forwarders else None
        pid = "<service pid>" if name in service_argv else None
        plan.add(name, "teardown", teardown_commands(
            layout, name, radio=bool(radio_commands(layout, name)),
            routes=[r.spec() for r in plane.routes.get(name, [])], forwarding=forwarding, pid=pid))
    plan.add(rf, "teardown", rf_stop_commands())
    return plan
