"""The Raspberry Pi inventory: which Pis, how to log in, which Wi-Fi they join, where JARVIS lives on them.

Ansible-style (hosts with a user) and secret-free: the SSH key is a path
on the control machine, the Wi-Fi passphrase is read from the environment
variable the inventory names.  Paths may contain ``{host}`` (replaced by the
Pi's inventory name) for setups where several Pis share one filesystem,
like the emulated Pis of the test suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from testbed.interface import TestbedError
from testbed.yamlfile import load_validated

DEFAULT_PACKAGES = ["python3-venv", "python3-pip", "chrony", "network-manager", "iputils-ping"]


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
    ssid: str
    psk_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                description="environment variable holding the passphrase (none: open network)")
    interface: str = "wlan0"
    connection: str = Field(default="jarvis-wifi", description="NetworkManager connection name")


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wifi_s: float = Field(default=60.0, gt=0, description="wait for the Wi-Fi interface to get an address")
    install_s: float = Field(default=3600.0, gt=0, description="apt and pip installs")


class RpiInventory(BaseModel):
    """The Pis of one testbed."""

    model_config = ConfigDict(extra="forbid")
    user: str = "pi"
    key: str | None = Field(default="~/.ssh/id_ed25519", description="private key on this machine (a path)")
    ssh_config: str | None = Field(default=None, description="ssh config file (ports, jump hosts, known hosts)")
    agent: bool = True
    wifi: Wifi
    base_dir: str = "/home/pi/jarvis"
    venv: str = "/home/pi/jarvis/venv"
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

    def base_of(self, name: str) -> str:
        return self.base_dir.replace("{host}", name)

    def venv_of(self, name: str) -> str:
        return self.venv.replace("{host}", name)

    @property
    def sudo(self) -> str:
        """Prefix for commands that need root: none when logging in as root."""
        return "" if self.user == "root" else "sudo -n "


def load_inventory(path: Path | str) -> RpiInventory:
    """Read and validate a Raspberry Pi inventory; every problem is reported with its field and line."""
    return load_validated(path, RpiInventory, what="Raspberry Pi inventory", error=TestbedError,
                          forbid_secrets=True)
