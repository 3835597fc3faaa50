"""The Raspberry Pi inventory: the SSH-hosts inventory plus the Wi-Fi the Pis join and their clock source.

Secret-free like every inventory: the SSH key is a path on the control
machine, the Wi-Fi passphrase is read from the environment variable the
inventory names.  The Pis' links are their real Wi-Fi (no shaping), their
data address is read from the Wi-Fi interface, and provisioning always runs
(packages, chrony, Wi-Fi, the venv).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sshhosts.inventory import NAME, INTERFACE, SshInventory, load_inventory as load_hosts

DEFAULT_PACKAGES = ["python3-venv", "python3-pip", "chrony", "network-manager", "iputils-ping"]
SUPPORTED_PYTHON = ("3.11", "3.12", "3.13")  # Bookworm ships 3.11, Trixie 3.13: PyTorch has aarch64 wheels for both


class Pi(BaseModel):
    """One Pi: its inventory name, how SSH reaches it, and whether it is the end-user node."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
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
    interface: str = Field(default="wlan0", pattern=INTERFACE, description="Linux interface name")
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


class RpiInventory(SshInventory):
    """The Pis of one testbed."""

    noun: ClassVar[str] = "Pi"
    key: str | None = Field(default="~/.ssh/id_ed25519", description="private key on this machine (a path)")
    wifi: Wifi
    clock: Clock = Clock()
    apt_packages: list[str] = Field(default_factory=lambda: list(DEFAULT_PACKAGES))
    timeouts: Timeouts = Timeouts()
    provision: Literal[True] = Field(default=True, description="Pis are always provisioned")
    shaping: Literal["none"] = Field(default="none", description="the links are the real Wi-Fi")
    hosts: list[Pi] = Field(min_length=2)

    @model_validator(mode="after")
    def _pi_fields(self) -> "RpiInventory":
        misplaced = sorted({"interface", "profile"} & self.model_fields_set)
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: a Pi's data plane is its Wi-Fi (set `wifi.interface`; "
                             "its link profile is the real Wi-Fi)")
        return self

    @property
    def user_pi(self) -> Pi:
        return self.user_host

    @property
    def layer_pis(self) -> list[Pi]:
        return self.layer_hosts

    def interface_of(self, name: str) -> str:
        return self.wifi.interface


def load_inventory(path) -> RpiInventory:
    """Read and validate a Raspberry Pi inventory; every problem is reported with its field and line."""
    return load_hosts(path, RpiInventory, what="Raspberry Pi inventory")
