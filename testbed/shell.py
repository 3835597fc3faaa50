"""A Shell on this machine: commands run in a host's work directory, files copied (or hard-linked).

The local testbed's hosts are directories on this machine, and a finished
Colosseum batch run is read from the reservation's copy of each SRN's /logs,
also directories here: both need the Shell interface without SSH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from testbed.interface import CommandResult, HostInfo, TestbedError


class LocalShell:
    """Run commands in a host's work directory on this machine; put/get are plain copies."""

    def __init__(self, host: HostInfo):
        self.host = host

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True) -> CommandResult:
        proc = subprocess.run(command, shell=True, cwd=self.host.workdir, capture_output=True, text=True,
                              timeout=timeout)
        result = CommandResult(self.host.name, command, proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise TestbedError(f"{self.host.name}: `{command}` exited {proc.returncode}: {proc.stderr.strip()}")
        return result

    def put(self, local: Path, remote: str) -> None:
        target = Path(self.host.workdir) / remote
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(local, target)  # same machine: a hard link ships a GB model in no time
        except OSError:
            shutil.copy2(local, target)  # keeps the mode: a private file stays private

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(self.host.workdir) / remote, local)
