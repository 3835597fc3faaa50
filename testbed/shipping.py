"""The node payload as a host receives and runs it.

Every testbed whose nodes run from their own directory (emu namespaces, Colosseum
SRNs, Raspberry Pis) ships one archive of ``payload/*.py`` the same way, unpacked
into ``code/``, so a node always runs the code that was shipped to it, never the
checkout it happens to share a disk with.  A node service is started by the same
command line everywhere (:func:`service_argv`): the host's interpreter on the
host's copy of the payload.
"""

from __future__ import annotations

import importlib.metadata
import shlex
import sys
import tarfile
from pathlib import Path

import payload
from testbed.interface import HostInfo

SOURCE_TREE = Path(payload.__file__).resolve().parent.parent  # the checkout the local testbed runs in place

CODE_ARCHIVE = "payload.tar.gz"


def payload_archive(directory: Path) -> Path:
    """The node payload's modules as ``payload/*.py`` in one tar.gz: all a remote host needs of JARVIS
    besides its interpreter, sent in one transfer instead of a dozen."""
    archive = directory / CODE_ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(Path(payload.__file__).parent.glob("*.py")):
            tar.add(path, arcname=f"payload/{path.name}")
    return archive


def unpack_command(code_dir: str) -> str:
    """Unpack the archive put into ``code_dir``, then remove it."""
    archive = shlex.quote(f"{code_dir}/{CODE_ARCHIVE}")
    return f"tar -xzf {archive} -C {shlex.quote(code_dir)} && rm {archive}"


def python_for(host: HostInfo) -> str:
    """Interpreter that runs the payload on ``host`` (the same machine: this venv's)."""
    return host.extra.get("python", sys.executable)


def payload_path(host: HostInfo) -> str:
    """Where ``host`` imports the payload from: its shipped ``code/``, or this checkout on the local testbed."""
    return host.extra.get("payload_path", str(SOURCE_TREE))


def service_argv(host: HostInfo, module: str, *args: str) -> list[str]:
    """``env PYTHONPATH=... python -m <module> args``: a payload program as ``host`` runs it."""
    return ["env", f"PYTHONPATH={payload_path(host)}", "HF_HUB_OFFLINE=1", python_for(host), "-m", module, *args]


def payload_pins() -> dict[str, str]:
    """What a node's Python needs, pinned: JARVIS's own dependencies, not its extras (torch first: it comes
    from its own wheel index).  Read from this installation's metadata, i.e. pyproject.toml."""
    pins = {}
    for requirement in importlib.metadata.requires("jarvis-edge") or []:
        if ";" in requirement:
            continue  # an extra (control, test, ...): not what nodes run
        name, _, version = requirement.partition("==")
        pins[name.strip()] = version.strip()
    return dict(sorted(pins.items(), key=lambda kv: kv[0] != "torch"))
