"""The node payload as a remote host receives it: one archive of ``payload/*.py``, unpacked into ``code/``.

Every testbed whose nodes run from their own directory (emu namespaces, Colosseum
SRNs, Raspberry Pis) ships the same archive the same way, so a node always runs
the code that was shipped to it, never the checkout it happens to share a disk with.
"""

from __future__ import annotations

import shlex
import tarfile
from pathlib import Path

import payload

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
