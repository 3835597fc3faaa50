"""The Raspberry Pi inventory: which Pis, how to log in, which Wi-Fi they join, where JARVIS lives on them.

Ansible-style (hosts with a user) and secret-free: the SSH key is a path
on the control machine, the Wi-Fi passphrase is read from the environment
variable the inventory names.  Paths may contain ``{host}`` (replaced by the
Pi's inventory name) for setups where several Pis share one filesystem,
like the emulated Pis of the test suite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import paramiko
from pydantic import BaseModel, ConfigDict, Field, model_validator

from testbed.interface import TestbedError
from testbed.yamlfile import load_validated

DEFAULT_PACKAGES = ["python3-venv", "python3-pip", "chrony", "network-manager", "iputils-ping"]
USER = r"^[a-z_][a-z0-9_-]{0,31}$"
SUPPORTED_PYTHON = ("3.11", "3.12", "3.13")  # Bookworm ships 3.11, Trixie 3.13: PyTorch has aarch64 wheels for both


class Pi(BaseModel):
    """One Pi: its inventory name, how SSH reaches it, and whether it is the end-user node."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$")
    host: str | None = Field(default=None, description="SSH host (ssh config alias, DNS name or IP; default: name)")
    role: Literal["user", "layer"] = "layer"

    @property
    def ssh_host(self) -> str:
        return self.host or self.name


class Wifi(BaseModel):
    """The network the Pis' data plane uses; NetworkManager (Bookworm) joins it."""

    model_config = ConfigDict(extra="forbid")
    ssid: str = Field(pattern=r"^[^\n\r\x00]{1,32}$", description="network name (1-32 characters, one line)")
    psk_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                description="environment variable holding the passphrase (none: open network)")
    interface: str = Field(default="wlan0", pattern=r"^[A-Za-z0-9_.-]{1,15}$", description="Linux interface name")
    connection: str = Field(default="jarvis-wifi", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                            description="NetworkManager connection name")
    keyfile_dir: str = Field(default="/etc/NetworkManager/system-connections",
                             description="where NetworkManager reads connection keyfiles ({host}: the Pi's name)")
    country: str = Field(pattern=r"^[A-Z]{2}$", description="regulatory country (ISO 3166, e.g. US, DE): Wi-Fi "
                                                              "stays rfkill-blocked on Raspberry Pi OS until it is set")


class Clock(BaseModel):
    """Time sync: chrony on every Pi, with a local server when the lab Wi-Fi has no internet."""

    model_config = ConfigDict(extra="forbid")
    server: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.:-]*$",
                               description="NTP server the Pis use (e.g. the control host; it must serve time)")
    conf_dir: str = Field(default="/etc/chrony/conf.d", description="chrony's drop-in directory ({host}: the Pi)")


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wifi_s: float = Field(default=60.0, gt=0, description="wait for the Wi-Fi interface to get an address")
    install_s: float = Field(default=3600.0, gt=0, description="apt and pip installs")


class RpiInventory(BaseModel):
    """The Pis of one testbed."""

    model_config = ConfigDict(extra="forbid")
    user: str | None = Field(default=None, pattern=USER,
                             description="login user on the Pis (default: the User your ssh config gives them; "
                                         "Raspberry Pi OS has had no default `pi` user since 2022)")
    key: str | None = Field(default="~/.ssh/id_ed25519", description="private key on this machine (a path)")
    ssh_config: str | None = Field(default=None, description="ssh config file (ports, jump hosts, known hosts)")
    agent: bool = True
    wifi: Wifi
    base_dir: str | None = Field(default=None, description="runs and model on the Pi (default: ~user/jarvis)")
    venv: str | None = Field(default=None, description="the payload's venv (default: <base_dir>/venv)")
    clock: Clock = Clock()
    system_python: str = "python3"
    apt_packages: list[str] = Field(default_factory=lambda: list(DEFAULT_PACKAGES))
    torch_index: str = "https://download.pytorch.org/whl/cpu"
    timeouts: Timeouts = Timeouts()
    path_prepend: list[str] = Field(default_factory=list, description="directories put in front of PATH on the Pis")
    hosts: list[Pi] = Field(min_length=2)

    @model_validator(mode="after")
    def _check(self) -> "RpiInventory":
        names = [p.name for p in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError(f"Pi names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
        users = [p.name for p in self.hosts if p.role == "user"]
        if len(users) != 1:
            raise ValueError(f"exactly one Pi needs role user (the end-user node), found {len(users)}")
        return self

    @property
    def user_pi(self) -> Pi:
        return next(p for p in self.hosts if p.role == "user")

    @property
    def layer_pis(self) -> list[Pi]:
        return [p for p in self.hosts if p.role == "layer"]

    def by_name(self, name: str) -> Pi:
        return next(p for p in self.hosts if p.name == name)

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

    @property
    def sudo(self) -> str:
        """Prefix for commands that need root: none when logging in as root."""
        return "" if self.login == "root" else "sudo -n "


def load_inventory(path: Path | str) -> RpiInventory:
    """Read and validate a Raspberry Pi inventory; every problem is reported with its field and line.

    Without ``user``, the login user is what the ssh config says for the Pis (one user for all of them).
    """
    inv = load_validated(path, RpiInventory, what="Raspberry Pi inventory", error=TestbedError,
                         forbid_secrets=True)
    if inv.user is None:
        inv = inv.model_copy(update={"user": user_from_ssh_config(inv)})
    return inv


def user_from_ssh_config(inv: RpiInventory) -> str:
    config = Path(inv.ssh_config or "~/.ssh/config").expanduser()
    parsed = paramiko.SSHConfig.from_path(str(config)) if config.is_file() else paramiko.SSHConfig()
    users = {p.name: parsed.lookup(p.ssh_host).get("user") for p in inv.hosts}
    found = set(users.values())
    if found == {None} or None in found:
        missing = sorted(n for n, u in users.items() if u is None)
        raise TestbedError(f"no login user for {', '.join(missing)}: Raspberry Pi OS has no default `pi` user "
                           f"since 2022; set `user:` in the inventory or `User` for these hosts in {config}")
    if len(found) > 1:
        raise TestbedError(f"the ssh config gives the Pis different users ({users}); JARVIS logs in to all of "
                           "them as one user: set `user:` in the inventory")
    user = found.pop()
    if not re.match(USER, user):
        raise TestbedError(f"the ssh config's User {user!r} is not a Linux user name")
    return user
