"""Where an emu testbed records what it made: a JSON manifest per prefix, and slot allocation.

The manifest is written *before* each resource is created, so a crash at any
point leaves a record of everything that might exist and ``down`` (or the next
``up``) removes exactly that.  Slots (and with them subnets) are handed out
under a lock from the manifests of every live testbed, so two prefixes never
share addresses.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path

from testbed.interface import TestbedError
from testbed.state import StateStore

from emu import system


def state_root() -> Path:
    """All emu state lives here (override with JARVIS_EMU_STATE); each prefix gets its own directory."""
    return Path(os.environ.get("JARVIS_EMU_STATE", "/tmp/jarvis-emu"))


def state_dir(prefix: str) -> Path:
    return state_root() / prefix


def _store(prefix: str) -> StateStore:
    return StateStore(state_dir(prefix) / "manifest.json", what="emu manifest")


def load(prefix: str) -> dict | None:
    """The manifest of testbed ``prefix`` (what it made, or is about to make, by name); None if there is none."""
    return _store(prefix).load()


def save(prefix: str, manifest: dict) -> None:
    _store(prefix).save(manifest)


def manifest_path(prefix: str) -> Path:
    return _store(prefix).path


@contextlib.contextmanager
def registry_lock() -> Iterator[None]:
    """Serialise slot allocation (and teardown) between concurrent ``up``/``down`` calls."""
    root = state_root()
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _root_routes() -> list[ipaddress.IPv4Network]:
    """IPv4 destinations routed in the root namespace (the default route excluded)."""
    out = system.run(["ip", "-j", "-4", "route", "show", "table", "all"], check=False).stdout or "[]"
    nets = []
    for route in json.loads(out):
        with contextlib.suppress(ValueError):
            if route.get("dst", "default") != "default":
                nets.append(ipaddress.ip_network(route["dst"], strict=False))
    return nets


def allocate_slot(prefix: str) -> int:
    """The lowest slot no other live testbed holds whose uplink subnet no root route overlaps.

    Call with :func:`registry_lock` held, and save the manifest before releasing it.
    """
    taken = set()
    root = state_root()
    for path in root.glob("*/manifest.json"):
        if path.parent.name == prefix:
            continue
        with contextlib.suppress(OSError, ValueError, KeyError):
            taken.add(int(json.loads(path.read_text())["slot"]))
    routes = _root_routes()
    for slot in range(256):
        uplink = ipaddress.ip_network(f"10.215.{slot}.0/30")
        if slot not in taken and not any(uplink.overlaps(r) for r in routes):
            return slot
    raise TestbedError("no free emu slot (256 testbeds up, or 10.215.0.0/16 is routed here); "
                       "run `fab down` on old ones")
