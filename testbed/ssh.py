"""The one SSH shell over Fabric that every SSH-reached testbed uses (emu namespaces, Colosseum SRNs, Pis).

How to log in is data (:class:`SshAccess`).  Hosts JARVIS does not own
(SRNs through the Colosseum gateway, Raspberry Pis) are reached the way the
user's ``ssh`` reaches them: host names, users, ports, keys, jump hosts and
host-key policy from the user's ssh config, keys from the agent or ~/.ssh,
and a password (for images that have one) from an environment variable the
inventory names.  ``StrictHostKeyChecking no`` is honoured because
Colosseum's documented ssh config uses it for SRNs (containers get new host
keys every reservation); otherwise unknown host keys are refused.  The emu
testbed, which makes its own keys, reads no ssh config and checks host keys
strictly against its own known_hosts file (``SshAccess.known_hosts``).
Every connection, the gateway hop included, has a connect timeout.

Relative remote paths are relative to the host's work directory.  Every
command run is reported to a ``record`` callback (host, command, exit code)
so a testbed can keep a transcript of exactly what it did.
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import paramiko
from fabric import Config, Connection
from invoke.exceptions import CommandTimedOut

from testbed.interface import CommandResult, TestbedError

CONNECT_TIMEOUT_S = 15
SSH_ERRORS = (paramiko.SSHException, socket.error, EOFError)
Recorder = Callable[[str, str, int], None]


@dataclass(frozen=True)
class SshAccess:
    """How to log in: an ssh config file (or none), agent and default keys, a key file, a password env var.

    ``known_hosts`` names a file of the testbed's own: host keys are then
    checked strictly against it alone, whatever any ssh config says.
    """

    ssh_config: str | None = "~/.ssh/config"
    agent: bool = True
    password_env: str | None = None
    key: str | None = None
    known_hosts: str | None = None

    def config(self) -> tuple[Config, paramiko.SSHConfig]:
        """A Fabric config reading only ``ssh_config`` (as ``ssh -F``), and the parsed file for lookups."""
        if self.ssh_config is None:
            parsed = paramiko.SSHConfig()
        else:
            path = Path(self.ssh_config).expanduser()
            if not path.is_file():
                raise TestbedError(f"ssh config {path} (named in the inventory) does not exist")
            parsed = paramiko.SSHConfig.from_path(str(path))
        return Config(ssh_config=parsed), parsed

    def password(self) -> str | None:
        if self.password_env is None:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise TestbedError(f"the inventory says the login password is in ${self.password_env}, "
                               "but that environment variable is not set")
        return value


def _apply_host_key_policy(connection: Connection, parsed: paramiko.SSHConfig, alias: str) -> None:
    """Check host keys as OpenSSH would with this config: strict unless ``StrictHostKeyChecking no``."""
    options = parsed.lookup(alias)
    if options.get("stricthostkeychecking", "ask").lower() in ("no", "off"):
        return  # Fabric's default: accept and remember for this session
    files = options.get("userknownhostsfile", "~/.ssh/known_hosts ~/.ssh/known_hosts2").split()
    for name in files:
        path = Path(name).expanduser()
        if path.is_file():
            connection.client.load_host_keys(str(path))
    connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())


def ssh_config_unmatched(access: SshAccess, names: Sequence[str]) -> list[str]:
    """Host names that no ``Host`` pattern of the ssh config names (``Host *`` aside): for them the user,
    host-key policy and jump settings the user wrote for these hosts would silently not apply."""
    if access.ssh_config is None:
        return list(names)
    _, parsed = access.config()
    patterns = [p for p in parsed.get_hostnames() if p != "*" and not p.startswith("!")]
    return [name for name in names if not any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def _bound_gateway_channel(gateway: Connection) -> None:
    """Fabric opens the channel through a gateway with paramiko's default timeout (1 h): an SRN that is down
    would hang its connection that long.  Bound it by the connect timeout once the gateway is open."""
    opened = gateway.open

    def open_bounded(*args, **kwargs):
        result = opened(*args, **kwargs)
        if gateway.transport is not None:
            gateway.transport.channel_timeout = CONNECT_TIMEOUT_S
        return result

    gateway.open = open_bounded


def _strict(connection: Connection, known_hosts: str) -> None:
    connection.client.load_host_keys(str(Path(known_hosts).expanduser()))
    connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())


def connect(alias: str, access: SshAccess, *, user: str | None = None, port: int | None = None,
            gateway: Connection | None = None, with_password: bool = False) -> Connection:
    """A Fabric Connection to ``alias`` as ``access`` describes it (optionally through ``gateway``)."""
    config, parsed = access.config()
    kwargs: dict = {"allow_agent": access.agent, "look_for_keys": access.agent}
    if access.key is not None:
        key = Path(access.key).expanduser()
        if not key.is_file():
            raise TestbedError(f"ssh key {key} (named in the inventory) does not exist")
        kwargs["key_filename"] = [str(key)]
    password = access.password() if with_password else None
    if password is not None:
        kwargs["password"] = password
    connection = Connection(alias, user=user, port=port, gateway=gateway, config=config,
                            connect_timeout=CONNECT_TIMEOUT_S, connect_kwargs=kwargs)
    if isinstance(connection.gateway, Connection):
        _bound_gateway_channel(connection.gateway)
    if access.known_hosts is not None:
        _strict(connection, access.known_hosts)
        return connection
    _apply_host_key_policy(connection, parsed, alias)
    if isinstance(connection.gateway, Connection) and gateway is None:  # a ProxyJump from the ssh config
        _apply_host_key_policy(connection.gateway, parsed, connection.gateway.original_host)
    return connection


def describe_ssh_error(exc: BaseException) -> str:
    """A short cause for a failed login, with the usual fix."""
    if isinstance(exc, paramiko.AuthenticationException):
        return f"login refused ({exc}); check the key in your ssh config/agent or the password variable"
    if isinstance(exc, paramiko.ChannelException):
        return (f"the jump host could not open a connection to it ({exc.text}); is it up (on Colosseum: part of "
                "the reservation)?")
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return f"unknown host key ({exc}); ssh to it once to check and record its key"
    return f"{type(exc).__name__}: {exc}"


def in_workdir(workdir: str, command: str) -> str:
    """``command`` run in ``workdir`` unchanged: a separate line, so ``cd X && cmd &`` can't background the cd too."""
    return f"cd {shlex.quote(workdir)} || exit 1\n{command}"


def _split(text: str, marker: str) -> dict[int, tuple[str, int]]:
    """Cut a batch's output at its markers: command index -> (its output, its exit code)."""
    parts, start = {}, 0
    for match in re.finditer(rf"\n{re.escape(marker)} (\d+) (\d+)\n", text):
        parts[int(match.group(1))] = (text[start:match.start()], int(match.group(2)))
        start = match.end()
    return parts


class SshShell:
    """Run commands and move files on one host; relative paths are relative to ``workdir``."""

    def __init__(self, name: str, connection: Connection, workdir: str, *, path_prepend: Sequence[str] = (),
                 record: Recorder | None = None) -> None:
        self.name = name
        self.connection = connection
        self.workdir = workdir
        self.path_prepend = tuple(path_prepend)
        self.record = record
        self._open_lock = threading.Lock()

    def _open(self) -> None:
        with self._open_lock:
            if self.connection.is_connected:
                return
            try:
                self.connection.open()
            except SSH_ERRORS as exc:
                raise TestbedError(f"{self.name}: cannot log in: {describe_ssh_error(exc)}") from None

    def wrap(self, command: str, cwd: str | None = None) -> str:
        """The text sent to the remote shell: PATH additions, ``cd``, then the command on its own line.

        This text is the remote shell's argv (visible in ``ps`` there): never put a secret in it; pass one
        as ``stdin`` to :meth:`run`.
        """
        lines = []
        if self.path_prepend:
            lines.append(f"export PATH={':'.join(shlex.quote(d) for d in self.path_prepend)}:\"$PATH\"")
        lines.append(in_workdir(cwd or self.workdir, command))
        return "\n".join(lines)

    def run(self, command: str, *, timeout: float = 60.0, check: bool = True, cwd: str | None = None,
            stdin: str | None = None) -> CommandResult:
        """Run ``command`` (in ``cwd``, default the workdir).

        ``stdin`` is written to the command's standard input over the SSH channel: the way to hand it a secret
        (``IFS= read -r VAR`` is a shell builtin, so the secret never appears in any process's argv, nor in the
        transcript, which records only ``command``).
        """
        self._open()
        try:
            out = self.connection.run(self.wrap(command, cwd), hide=True, warn=True, timeout=timeout,
                                      in_stream=io.StringIO(stdin) if stdin is not None else False)
        except CommandTimedOut:
            raise TestbedError(f"{self.name}: `{command}` did not finish within {timeout:.0f}s") from None
        except SSH_ERRORS as exc:
            raise TestbedError(f"{self.name}: ssh failed during `{command}`: {describe_ssh_error(exc)}") from None
        if self.record is not None:
            self.record(self.name, command, out.exited)
        result = CommandResult(self.name, command, out.exited, out.stdout, out.stderr)
        if check and not result.ok:
            detail = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise TestbedError(f"{self.name}: `{command}` exited {result.exit_code}: {detail}")
        return result

    def run_many(self, commands: Sequence[str], *, timeout: float = 120.0, cwd: str | None = None,
                 keep_going: bool = False) -> list[CommandResult]:
        """Run ``commands`` one after another in one SSH round trip; each is recorded and reported on its own.

        Each command runs in its own subshell from ``cwd``; without
        ``keep_going`` the batch stops at the first failure, which raises.
        Returns the results of the commands that ran.
        """
        if not commands:
            return []
        marker = f"__jv_{uuid.uuid4().hex}"
        parts = []
        for i, command in enumerate(commands):
            parts.append(f"(\n{command}\n)\nrc=$?; echo; echo '{marker}' {i} $rc; "
                         f"echo >&2; echo '{marker}' {i} $rc >&2")
            if not keep_going:
                parts.append("[ $rc -eq 0 ] || exit $rc")
        self._open()
        try:
            out = self.connection.run(self.wrap("\n".join(parts), cwd), hide=True, warn=True, timeout=timeout,
                                      in_stream=False)
        except CommandTimedOut:
            raise TestbedError(f"{self.name}: `{commands[0]}` and {len(commands) - 1} more did not finish "
                               f"within {timeout:.0f}s") from None
        except SSH_ERRORS as exc:
            raise TestbedError(f"{self.name}: ssh failed during `{commands[0]}`...: "
                               f"{describe_ssh_error(exc)}") from None
        stdout, stderr = _split(out.stdout, marker), _split(out.stderr, marker)
        results = []
        for i, (text, code) in stdout.items():
            result = CommandResult(self.name, commands[i], code, text, stderr.get(i, ("", code))[0])
            if self.record is not None:
                self.record(self.name, commands[i], code)
            results.append(result)
        if not keep_going and (not results or not results[-1].ok):
            failed = results[-1] if results else CommandResult(self.name, commands[0], out.exited, "", out.stderr)
            detail = (failed.stderr.strip() or failed.stdout.strip())[-2000:]
            raise TestbedError(f"{self.name}: `{failed.command}` exited {failed.exit_code}: {detail}")
        return results

    def _path(self, remote: str) -> str:
        return str(PurePosixPath(self.workdir) / remote)

    def put(self, local: Path, remote: str) -> None:
        target = self._path(remote)
        self.run(f"mkdir -p {shlex.quote(str(PurePosixPath(target).parent))}")
        try:
            self.connection.put(str(local), target)
        except (OSError, *SSH_ERRORS) as exc:
            raise TestbedError(f"{self.name}: put {local} -> {target} failed: {exc}") from exc

    def get(self, remote: str, local: Path) -> None:
        self._open()
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection.get(self._path(remote), str(local))
        except (OSError, *SSH_ERRORS) as exc:
            raise TestbedError(f"{self.name}: get {remote} -> {local} failed: {exc}") from exc

    def channel(self, command: str, *, timeout: float | None = None) -> paramiko.Channel:
        """A session channel running ``command`` (wrapped as :meth:`wrap` says), to talk to it directly."""
        self._open()
        try:
            channel = self.connection.client.get_transport().open_session()
            channel.settimeout(timeout)
            channel.exec_command(self.wrap(command))
        except SSH_ERRORS as exc:
            raise TestbedError(f"{self.name}: ssh failed starting `{command}`: {describe_ssh_error(exc)}") from None
        return channel

    def popen(self, argv: Sequence[str], *, stderr: bool = True) -> "RemoteProcess":
        """Start ``argv`` in the workdir with its stdout streamed back line by line (its stderr copied to ours,
        or discarded when ``stderr`` is false)."""
        discard = "" if stderr else " 2>/dev/null"
        return RemoteProcess(self, f"echo $$; PYTHONUNBUFFERED=1 exec {shlex.join(argv)}{discard}", " ".join(argv))

    def close(self) -> None:
        """Close the connection and the jump host under it; nothing open is fine."""
        gateway = self.connection.gateway
        self.connection.close()
        if isinstance(gateway, Connection):
            gateway.close()


class RemoteProcess:
    """The part of ``subprocess.Popen`` that run_job uses, for a command on an SSH host.

    The remote shell prints its pid and then ``exec``s the command, so
    ``terminate`` can signal exactly that process.  stderr is copied to this
    process's stderr as it arrives (as a local Popen with ``stderr=None`` would).
    """

    def __init__(self, shell: SshShell, command: str, label: str) -> None:
        self.shell = shell
        self.label = label
        self.channel = shell.channel(command)
        self.stdout = self.channel.makefile("r")
        first = self.stdout.readline().strip()
        if not first.isdigit():
            self.channel.close()
            raise TestbedError(f"{shell.name}: could not start `{label}`: {first or 'no output'}")
        self.pid = int(first)
        self.returncode: int | None = None
        self._stderr = threading.Thread(target=self._copy_stderr, daemon=True)
        self._stderr.start()

    def _copy_stderr(self) -> None:
        for line in self.channel.makefile_stderr("r"):
            sys.stderr.write(line)

    def wait(self, timeout: float | None = None) -> int:
        if not self.channel.status_event.wait(timeout):
            raise subprocess.TimeoutExpired(self.label, timeout)
        self.returncode = self.channel.recv_exit_status()
        self._stderr.join(timeout=5)
        self.channel.close()
        return self.returncode

    def send_signal(self, signame: str) -> None:
        self.shell.run(f"kill -{signame} {self.pid} 2>/dev/null || true", check=False)

    def terminate(self) -> None:
        self.send_signal("TERM")

    def kill(self) -> None:
        self.send_signal("KILL")
