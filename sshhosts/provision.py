"""The payload's venv on a host, as data: create it, read what it has, install JARVIS's pins into it.

Decided from what the host reports, so ``up`` can check on every run and a
ready host costs one quick probe: the installed versions are read from
package metadata (milliseconds; importing torch on a small board takes many
seconds).  torch comes from its own wheel index (PyTorch's CPU index has
x86-64 and aarch64 wheels), the rest from PyPI, or everything from a wheel
directory on the host (``find_links``) where the hosts have no internet.
"""

from __future__ import annotations

import shlex

from sshhosts.inventory import SshInventory

q = shlex.quote


def venv_commands(inv: SshInventory, name: str) -> list[str]:
    venv = inv.venv_of(name)
    return [f"test -x {q(inv.python_of(name))} || {q(inv.system_python)} -m venv {q(venv)}"]


def versions_probe(inv: SshInventory, name: str, packages: list[str]) -> str:
    """Print the installed ``packages``' versions from their metadata (fails if one is missing)."""
    code = f"from importlib.metadata import version; print(*(version(p) for p in {tuple(packages)!r}))"
    return f"{q(inv.python_of(name))} -c {q(code)}"


def installed_versions(output: str, packages: list[str]) -> dict[str, str] | None:
    """Parse the probe's output; local version labels (``2.13.0+cpu``) are dropped."""
    parts = output.split()
    if len(parts) != len(packages):
        return None
    return {name: version.split("+")[0] for name, version in zip(packages, parts)}


def pip_commands(inv: SshInventory, name: str, pins: dict[str, str]) -> list[str]:
    """torch from its wheel index, the rest from PyPI; or all of them from the hosts' wheel directory."""
    pip = q(inv.venv_of(name) + "/bin/pip")
    if inv.find_links is not None:
        everything = " ".join(f"{pkg}=={version}" for pkg, version in pins.items())
        return [f"{pip} install --no-index --find-links {q(inv.find_links.replace('{host}', name))} {everything}"]
    others = " ".join(f"{pkg}=={version}" for pkg, version in pins.items() if pkg != "torch")
    return [f"{pip} install --index-url {q(inv.torch_index)} torch=={pins['torch']}", f"{pip} install {others}"]
