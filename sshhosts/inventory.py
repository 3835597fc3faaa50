"""The SSH-hosts inventory: which hosts, how to log in, where JARVIS lives on them, how their links are shaped.

Ansible-style and secret-free: keys are paths on the control machine or in
the agent, and anything the user's ssh config says (User, Port, ProxyJump,
IdentityFile, known hosts) applies.  Paths may contain ``{host}`` (replaced
by the host's inventory name) for hosts that share one filesystem, like the
emulated hosts of the test suite.  The Raspberry Pi inventory extends this
one (:mod:`rpi.inventory`).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import ClassVar, Literal

import paramiko
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from testbed.interface import TestbedError
from testbed.profiles import load_profiles
from testbed.ssh import SshAccess
from testbed.yamlfile import load_validated, roster_problem

USER = r"^[a-z_][a-z0-9_-]{0,31}$"
NAME = r"^[A-Za-z0-9][A-Za-z0-9-]*$"
INTERFACE = r"^[A-Za-z0-9_.-]{1,15}$"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
DEFAULT_SSH_CONFIG = "~/.ssh/config"


class Host(BaseModel):
    """One host: its inventory name, how SSH reaches it, its data plane, and whether it is the end-user node."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    host: str | None = Field(default=None, description="SSH host (ssh config alias, DNS name or IP; default: name)")
    role: Literal["user", "layer"] = "layer"
    address: str | None = Field(default=None, description="data-plane IPv4 (default: read from the interface)")
    interface: str | None = Field(default=None, pattern=INTERFACE,
                                  description="data-plane interface (default: the inventory's `interface`)")
    profile: str | None = Field(default=None, description="link profile when the scenario names none")

    @field_validator("address")
    @classmethod
    def _ipv4(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.IPv4Address(value)  # raises ValueError with the reason
        return value

    @property
    def ssh_host(self) -> str:
        return self.host or self.name


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    install_s: float = Field(default=3600.0, gt=0, description="venv creation and pip installs")


class SshInventory(BaseModel):
    """The hosts of one SSH testbed, and what they share."""

    model_config = ConfigDict(extra="forbid")
    noun: ClassVar[str] = "host"  # what messages call one host
    user: str | None = Field(default=None, pattern=USER,
                             description="login user on every host (default: the User your ssh config gives them)")
    key: str | None = Field(default=None, description="private key on this machine (default: agent and ssh config)")
    ssh_config: str | None = Field(default=None, description="ssh config file (default: ~/.ssh/config if it exists)")
    agent: bool = True
    known_hosts: str | None = Field(default=None, description="check host keys against this file alone")
    base_dir: str | None = Field(default=None, description="runs and model on each host (default: ~user/jarvis)")
    venv: str | None = Field(default=None, description="the payload's venv (default: <base_dir>/venv)")
    provision: bool = Field(default=False, description="create the venv and install the pinned packages if missing "
                                                       "(off: the venv must already have them)")
    system_python: str = Field(default="python3", description="interpreter that creates the venv")
    torch_index: str = Field(default=TORCH_CPU_INDEX, description="wheel index torch is installed from")
    find_links: str | None = Field(default=None, description="a wheel directory on the hosts: install from it alone "
                                                             "(hosts without internet)")
    interface: str = Field(default="eth0", pattern=INTERFACE, description="data-plane interface of every host")
    shaping: Literal["netem", "none"] = Field(default="netem", description="apply link profiles with tc netem "
                                                                            "(needs sudo), or leave the links as they are")
    profile: str | None = Field(default=None, description="link profile of every host when the scenario names none")
    timeouts: Timeouts = Timeouts()
    path_prepend: list[str] = Field(default_factory=list, description="directories put in front of PATH on the hosts")
    hosts: list[Host] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self) -> "SshInventory":
        problem = roster_problem([h.name for h in self.hosts], [h.role for h in self.hosts], noun=self.noun)
        if problem:
            raise ValueError(problem)
        known = load_profiles()
        unknown = sorted({p for p in [self.profile, *(getattr(h, "profile", None) for h in self.hosts)]
                          if p is not None and p not in known})
        if unknown:
            raise ValueError(f"unknown link profile(s) {unknown}; known: {', '.join(sorted(known))}")
        return self

    @property
    def user_host(self):
        return next(h for h in self.hosts if h.role == "user")

    @property
    def layer_hosts(self) -> list:
        return [h for h in self.hosts if h.role == "layer"]

    def by_name(self, name: str):
        return next(h for h in self.hosts if h.name == name)

    @property
    def access(self) -> SshAccess:
        config = self.ssh_config
        if config is None and Path(DEFAULT_SSH_CONFIG).expanduser().is_file():
            config = DEFAULT_SSH_CONFIG
        return SshAccess(config, self.agent, None, self.key, self.known_hosts)

    @property
    def login(self) -> str:
        """The login user, once :func:`load_inventory` has settled it."""
        if self.user is None:
            raise TestbedError("no login user: name it with `user:` in the inventory or `User` in your ssh config")
        return self.user

    @property
    def home(self) -> str:
        return "/root" if self.login == "root" else f"/home/{self.login}"

    def base_of(self, name: str) -> str:
        return (self.base_dir or f"{self.home}/jarvis").replace("{host}", name)

    def venv_of(self, name: str) -> str:
        return (self.venv or f"{self.base_of(name)}/venv").replace("{host}", name)

    def python_of(self, name: str) -> str:
        return f"{self.venv_of(name)}/bin/python"

    def interface_of(self, name: str) -> str:
        return getattr(self.by_name(name), "interface", None) or self.interface

    def profile_of(self, name: str) -> str | None:
        return getattr(self.by_name(name), "profile", None) or self.profile

    @property
    def sudo(self) -> str:
        """Prefix for commands that need root: none when logging in as root."""
        return "" if self.login == "root" else "sudo -n "


def load_inventory(path: Path | str, model: type[SshInventory] = SshInventory, *, what: str = "SSH-hosts inventory"):
    """Read and validate an inventory of ``model``; every problem is reported with its field and line.

    Without ``user``, the login user is what the ssh config says for the hosts (one user for all of them).
    """
    inv = load_validated(path, model, what=what, error=TestbedError, forbid_secrets=True)
    if inv.user is None:
        inv = inv.model_copy(update={"user": user_from_ssh_config(inv)})
    return inv


def user_from_ssh_config(inv: SshInventory) -> str:
    config = Path(inv.access.ssh_config or DEFAULT_SSH_CONFIG).expanduser()
    parsed = paramiko.SSHConfig.from_path(str(config)) if config.is_file() else paramiko.SSHConfig()
    users = {h.name: parsed.lookup(h.ssh_host).get("user") for h in inv.hosts}
    found = set(users.values())
    if None in found:
        missing = sorted(n for n, u in users.items() if u is None)
        raise TestbedError(f"no login user for {', '.join(missing)}: set `user:` in the inventory or `User` for "
                           f"these hosts in {config} (Raspberry Pi OS has had no default `pi` user since 2022)")
    if len(found) > 1:
        raise TestbedError(f"the ssh config gives the hosts different users ({users}); JARVIS logs in to all of "
                           "them as one user: set `user:` in the inventory")
    user = found.pop()
    if not re.match(USER, user):
        raise TestbedError(f"the ssh config's User {user!r} is not a Linux user name")
    return user
