"""OpenSSH for emu nodes: keys, per-namespace sshd configs, and the client-side files.

Every namespace runs the system's OpenSSH sshd with its own config, host key
and port; the orchestrator logs in as root with a key pair made for this
testbed.  Host keys are known in advance, so both the system ``ssh`` client
(through ``ProxyJump``) and Fabric/paramiko check them strictly against a
``known_hosts`` file of the testbed: no trust-on-first-use, no stale entries
in the user's own ``~/.ssh``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from emu.plan import Plan

SSH_USER = "root"


@dataclass(frozen=True)
class Endpoint:
    """One sshd: the namespace it runs in, where it listens, and its files."""

    alias: str
    namespace: str
    address: str
    port: int
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def pid_file(self) -> Path:
        return self.directory / "sshd.pid"

    @property
    def log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def known_host(self) -> str:
        return f"[{self.address}]:{self.port}"


def endpoints(plan: Plan) -> list[Endpoint]:
    """The gateway's sshd first, then one per node."""
    root = Path(plan.state_dir) / "ssh"
    gateway = Endpoint(plan.gateway_namespace, plan.gateway_namespace, plan.gateway_ip, plan.gateway_port,
                       root / "gw")
    return [gateway, *(Endpoint(n.namespace, n.namespace, n.mgmt_ip, n.ssh_port, root / n.name)
                       for n in plan.nodes)]


def write_key_pair(private_path: Path) -> str:
    """Write an ed25519 private key (mode 600) and its ``.pub``; return the public line."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private)
    private_path.with_name(private_path.name + ".pub").write_text(public + "\n")
    return public


def sshd_config(endpoint: Endpoint, authorized_keys: Path) -> str:
    """A self-contained sshd config: key login for root only, SFTP for Fabric's put/get."""
    return "\n".join([
        f"Port {endpoint.port}",
        f"ListenAddress {endpoint.address}",
        f"HostKey {endpoint.host_key}",
        f"PidFile {endpoint.pid_file}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        "PrintLastLog no",
        "AllowTcpForwarding yes",
        "MaxStartups 200:30:400",
        "MaxSessions 200",
        "Subsystem sftp internal-sftp",
        "LogLevel ERROR",
        "",
    ])


def client_config(plan: Plan, identity: Path, known_hosts: Path) -> str:
    """An ``ssh -F`` file: the gateway by its uplink address, every node through it with ProxyJump."""
    gateway, *nodes = endpoints(plan)
    common = [f"  User {SSH_USER}", f"  IdentityFile {identity}", "  IdentitiesOnly yes",
              f"  UserKnownHostsFile {known_hosts}", "  StrictHostKeyChecking yes", "  BatchMode yes",
              "  LogLevel ERROR"]
    blocks = [[f"Host {gateway.alias}", f"  HostName {gateway.address}", f"  Port {gateway.port}", *common]]
    for node in nodes:
        blocks.append([f"Host {node.alias}", f"  HostName {node.address}", f"  Port {node.port}",
                       f"  ProxyJump {gateway.alias}", *common])
    return "\n\n".join("\n".join(block) for block in blocks) + "\n"


def prepare(plan: Plan) -> tuple[Path, Path, Path]:
    """Make every key and config file of the testbed; return (identity, known_hosts, ssh_config)."""
    ssh_dir = Path(plan.state_dir) / "ssh"
    identity = ssh_dir / "id_ed25519"
    authorized = ssh_dir / "authorized_keys"
    authorized.parent.mkdir(parents=True, exist_ok=True)
    authorized.write_text(write_key_pair(identity) + "\n")
    known_lines = []
    for endpoint in endpoints(plan):
        public = write_key_pair(endpoint.host_key)
        endpoint.config.write_text(sshd_config(endpoint, authorized))
        known_lines.append(f"{endpoint.known_host} {public}")
    known_hosts = ssh_dir / "known_hosts"
    known_hosts.write_text("\n".join(known_lines) + "\n")
    ssh_config = ssh_dir / "ssh_config"
    ssh_config.write_text(client_config(plan, identity, known_hosts))
    return identity, known_hosts, ssh_config


def start_argv(endpoint: Endpoint) -> list[str]:
    """sshd daemonises itself inside the namespace and writes its pid file once listening."""
    return ["ip", "netns", "exec", endpoint.namespace, "/usr/sbin/sshd", "-f", str(endpoint.config),
            "-E", str(endpoint.log)]
