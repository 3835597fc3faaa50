"""Every remote command the SSH testbed runs, as functions of the inventory: executed by ``up``, printed by
``--dry-run``.

The chain is the end-user host and then the first N layer hosts in
inventory order; each host's run directory is ``<base_dir>/runs/<run>``
(logs, the shipped payload in ``code/``, ``model`` linked to
``<base_dir>/model``, which is kept between runs).
"""

from __future__ import annotations

import shlex

from sshhosts.inventory import SshInventory
from testbed.addresses import address_command, reach_command
from testbed.interface import TestbedError
from testbed.plan import Check
from testbed.shipping import unpack_command

q = shlex.quote
PYTHON_VERSION = 'import sys; print("%d.%d" % sys.version_info[:2])'
MIN_PYTHON = (3, 11)  # the payload uses asyncio.timeout


def chain_of(inv: SshInventory, nodes: int) -> list[str]:
    """Host names in node order: the end-user host, then ``nodes`` layer hosts."""
    layers = inv.layer_hosts
    if not 1 <= nodes <= len(layers):
        raise TestbedError(f"the inventory has {len(layers)} layer {inv.noun}s; cannot run {nodes} layer nodes")
    return [inv.user_host.name] + [h.name for h in layers[:nodes]]


def node_name(index: int) -> str:
    return "user" if index == 0 else f"node{index}"


def workdir(inv: SshInventory, name: str, run: str) -> str:
    return f"{inv.base_of(name)}/runs/{run}"


def checked_python(inv: SshInventory, name: str) -> str:
    """The interpreter that matters: the system one that will make the venv, or the venv's own."""
    return inv.system_python if inv.provision else inv.python_of(name)


def python_check(inv: SshInventory, name: str) -> Check:
    python = checked_python(inv, name)
    return Check(f"{q(python)} -c {q(PYTHON_VERSION)}", f"{python} runs (Python 3.11 or newer)")


def python_problem(version: str, python: str, supported: tuple[str, ...] | None = None) -> str | None:
    """Why ``version`` (as the check printed it) cannot run the payload, or None."""
    try:
        major, minor = (int(part) for part in version.split("."))
    except ValueError:
        return None  # the check itself failed; its failure says why
    if supported is not None and version not in supported:
        return f"{python} is Python {version}; JARVIS needs one of {', '.join(supported)}"
    if (major, minor) < MIN_PYTHON:
        return f"{python} is Python {version}; the payload needs 3.11 or newer"
    return None


def check_commands(inv: SshInventory, name: str) -> list[Check]:
    """What must hold on ``name`` before anything is changed (each failure names its cause)."""
    checks = [Check("true", "log in")]
    if inv.sudo and inv.shaping == "netem":
        checks.append(Check(f"{inv.sudo}true", f"{inv.login} may sudo without a password (tc needs root)"))
    if inv.shaping == "netem":
        checks.append(Check("command -v tc", "tc (iproute2) is installed: it shapes the links"))
    checks += [Check("command -v ip", "ip (iproute2) is installed"),
               Check("command -v setsid", "setsid (util-linux) is installed: it starts the node services"),
               python_check(inv, name)]
    if not inv.provision:
        checks.append(Check(f"test -x {q(inv.python_of(name))}",
                            f"the venv {inv.venv_of(name)} exists (or set `provision: true`)"))
    return checks


def prepare_commands(inv: SshInventory, name: str, run: str) -> list[str]:
    """The run directory, its ``code/``, and ``model`` linked to the host's model store (kept between runs)."""
    work, model = workdir(inv, name, run), f"{inv.base_of(name)}/model"
    return [f"mkdir -p {q(work + '/code')} {q(model)} && ln -sfn {q(model)} {q(work + '/model')}"]


def code_commands(inv: SshInventory, name: str, run: str) -> list[str]:
    return [unpack_command(f"{workdir(inv, name, run)}/code")]


def address_commands(inv: SshInventory, name: str) -> list[str]:
    """Read the data address from the interface, unless the inventory gives it."""
    if getattr(inv.by_name(name), "address", None):
        return []
    return [address_command(inv.interface_of(name))]


def placeholder_address(inv: SshInventory, name: str) -> str:
    return getattr(inv.by_name(name), "address", None) or f"<{inv.interface_of(name)} of {name}>"


def reach_commands(addresses: dict[str, str], name: str) -> list[str]:
    return [reach_command(ip) for peer, ip in addresses.items() if peer != name]
