"""The emu Shell: Fabric over SSH through the testbed's gateway, the same path as on Colosseum.

``Connection(node, gateway=Connection(gw))`` is how Colosseum's documentation
reaches SRNs; using it here means orchestration that works on emu works there.
Host keys are checked strictly against the testbed's own known_hosts file, and
the user's ssh config files are not read, so nothing outside the testbed leaks in.
Relative remote paths are relative to the host's work directory, as in the
local testbed's Shell.
"""

from __future__ import annotations

import shlex
import socket
from pathlib import Path, PurePosixPath

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from experiment.testbed import CommandResult, HostInfo, TestbedError

CONNECT_TIMEOUT_S = 10
_SSH_ERRORS = (paramiko.SSHException, socket.error, EOFError)


def in_workdir(workdir: str, command: str) -> str:
    """``command`` run in ``workdir`` unchanged: a separate line, so ``cd X && cmd &`` can't background the cd too."""
    return f"cd {shlex.quote(workdir)} || exit 1\n{command}"


def _strict(connection: Connection, known_hosts: Path) -> Connection:
    connection.client.load_host_keys(str(known_hosts))
    connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return connection


def connect(address: str, port: int, *, user: str, identity: Path, known_hosts: Path,
            gateway: Connection | None = None) -> Connection:
    """A Fabric Connection with strict host keys, this testbed's key only, and no user ssh config."""
    return _strict(Connection(address, user=user, port=port, gateway=gateway, connect_timeout=CONNECT_TIMEOUT_S,
                              config=Config(ssh_config=paramiko.SSHConfig()),
                              connect_kwargs={"key_filename": str(identity), "look_for_keys": False,
                                              "allow_agent": False}), known_hosts)


class FabricShell:
    """Run commands and move files on one emu node over SSH via the gateway."""

    def __init__(self, host: HostInfo, *, gateway: tuple[str, int], identity: Path, known_hosts: Path):
        if host.ssh_host is None or host.ssh_port is None or host.ssh_user is None:
            raise TestbedError(f"{host.name} has no SSH endpoint")
        self.host = host
        jump = connect(gateway[0], gateway[1], user=host.ssh_user, identity=identity, known_hosts=known_hosts)
        self.connection = connect(host.ssh_host, host.ssh_port, user=host.ssh_user, identity=identity,
                                  known_hosts=known_hosts, gateway=jump)

    def _path(self, remote: str) -> str:
        return str(PurePosixPath(self.host.workdir) / remote)

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True) -> CommandResult:
        full = in_workdir(self.host.workdir, command)
        try:
            out = self.connection.run(full, hide=True, warn=True, timeout=timeout, in_stream=False)
        except CommandTimedOut:
            raise TestbedError(f"{self.host.name}: `{command}` did not finish within {timeout:.0f}s") from None
        except _SSH_ERRORS as exc:
            raise TestbedError(f"{self.host.name}: ssh failed: {exc}") from exc
        result = CommandResult(self.host.name, command, out.exited, out.stdout, out.stderr)
        if check and not result.ok:
            raise TestbedError(f"{self.host.name}: `{command}` exited {result.exit_code}: {result.stderr.strip()}")
        return result

    def put(self, local: Path, remote: str) -> None:
        target = self._path(remote)
        self.run(f"mkdir -p {shlex.quote(str(PurePosixPath(target).parent))}")
        try:
            self.connection.put(str(local), target)
        except (OSError, *_SSH_ERRORS) as exc:
            raise TestbedError(f"{self.host.name}: put {local} -> {target} failed: {exc}") from exc

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection.get(self._path(remote), str(local))
        except (OSError, *_SSH_ERRORS) as exc:
            raise TestbedError(f"{self.host.name}: get {remote} -> {local} failed: {exc}") from exc

    def close(self) -> None:
        """Close the node connection and the gateway hop under it; nothing open is fine."""
        gateway = self.connection.gateway
        self.connection.close()
        if isinstance(gateway, Connection):
            gateway.close()
