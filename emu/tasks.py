"""Plain functions behind the fab tasks for ``--testbed emu`` (the fabfile only parses flags and maps errors).

All raise :class:`experiment.testbed.TestbedError` (or its subclass
``ProfileError``) with a message fit for the user.
"""

from __future__ import annotations

from pathlib import Path

from testbed.interface import HostInfo

from emu import linkcheck
from testbed.profiles import load_profiles, parse_links_spec
from emu.testbed import EmuTestbed

DEFAULT_PREFIX = "jv-emu"


def up(nodes: int, links_spec: str | None = None, prefix: str = DEFAULT_PREFIX, *,
       profiles_file: Path | str | None = None, backend: str = "auto") -> list[HostInfo]:
    """``fab up --testbed emu --nodes N [--links SPEC]``: create (or re-create) the testbed."""
    links = parse_links_spec(links_spec, nodes, load_profiles(profiles_file))
    return EmuTestbed(prefix, backend=backend, profiles_file=profiles_file).up(nodes, links)


def hosts(prefix: str = DEFAULT_PREFIX) -> list[dict]:
    """``fab hosts --testbed emu --json``: one entry per node, in index order."""
    return [{"name": h.name, "index": h.index, "namespace": h.namespace, "ip": h.address, "ssh_host": h.ssh_host,
             "ssh_port": h.ssh_port, "ssh_user": h.ssh_user, "ssh_alias": h.extra["ssh_alias"],
             "ssh_config": h.extra["ssh_config"], "profile": h.profile}
            for h in EmuTestbed(prefix).hosts()]


def down(prefix: str = DEFAULT_PREFIX) -> None:
    """``fab down --testbed emu``: remove everything the prefix made; fine if nothing is up."""
    EmuTestbed(prefix).down()


def links_check(prefix: str = "jv-linkcheck", profiles: str | None = None, duration: float = 5.0,
                count: int = 200, *, profiles_file: Path | str | None = None, backend: str = "auto",
                show: bool = True, trace_seconds: int | None = None) -> list[dict]:
    """``fab links-check --testbed emu``: measure profiles (comma-separated names; default all) and print a table."""
    names = [p.strip() for p in profiles.split(",") if p.strip()] if profiles else None
    rows = linkcheck.links_check(prefix, names, duration, count, profiles_file=profiles_file, backend=backend,
                                 trace_seconds=trace_seconds)
    if show:
        linkcheck.print_rows(rows)
    return rows
