"""The Colosseum inventory: which SRNs a reservation holds, what each one runs, and how to reach them.

A YAML file written by the user for each reservation (see ``inventories/``
and docs/colosseum.md).  It never holds a secret: the ssh config, the ssh
agent and, for image passwords, the name of an environment variable say how
to log in.  Paths default to what Colosseum's public images use; each may
contain ``{srn}`` (replaced by the SRN's name) for setups where several SRNs
share one filesystem, like the emulated SRNs of the test suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator


from colosseum.rf import SCOPE_CELLULAR_SCENARIOS, UES_PER_BS, radio_map
from colosseum.scope import CONFIG_NAME as SCOPE_CONFIG_NAME

from testbed.interface import TestbedError
from testbed.yamlfile import load_validated, roster_problem

Role = Literal["user", "wifi", "cellular-ue", "cellular-bs", "server"]
Radio = Literal["wifi", "cellular-ue", "server"]
Network = Literal["wifi", "cellular", "wired"]

# What each radio role is on the data plane: its network and the interface that carries JARVIS traffic.
ROLE_NETWORK: dict[str, Network] = {"wifi": "wifi", "cellular-ue": "cellular", "cellular-bs": "cellular",
                                    "server": "wired"}
ROLE_INTERFACE = {"wifi": "tap0", "cellular-ue": "tun_srsue", "cellular-bs": "srs_spgw_sgi", "server": "col0"}
# The link kind a scenario's ``links`` must name for a node of each role (the RF scenario sets the channel).
ROLE_LINK = {"wifi": "wifi", "cellular-ue": "cellular", "cellular-bs": "cellular", "server": "server"}
WIRED_INTERFACE = "col0"
CIDR = r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Srn(BaseModel):
    """One reserved SRN: its number, its role and, for the end-user node, the radio it uses."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=1, le=999, description="SRN number, as in <team>-NNN")
    role: Role
    radio: Radio | None = Field(default=None, description="the end-user node's radio (role user only)")
    gateway: bool = Field(default=False, description="this Wi-Fi node forwards between tap0 and col0")
    image: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]+$", description="overrides the inventory image")
    address: str | None = Field(default=None, pattern=CIDR,
                                description="data-plane address/prefix its radio gets (batch mode needs it)")
    col0_address: str | None = Field(default=None, pattern=CIDR,
                                     description="a bridge's col0 address/prefix in batch mode (set by JARVIS)")
    scope_config: str | None = Field(default=None, description="SCOPE config file for this SRN (default: JARVIS's)")
    password_env: str | None = Field(default=None, pattern=ENV_NAME,
                                     description="environment variable holding this SRN's root password")

    @model_validator(mode="after")
    def _check(self) -> "Srn":
        if self.role == "user" and self.radio is None:
            raise ValueError("the end-user SRN needs `radio: wifi | cellular-ue | server` (which link it uses)")
        if self.role != "user" and self.radio is not None:
            raise ValueError("`radio` is only for the SRN with role user; the role of this SRN is its radio")
        if self.gateway and self.radio_role != "wifi":
            raise ValueError("`gateway: true` marks a Wi-Fi SRN that forwards between tap0 and col0")
        return self

    @property
    def radio_role(self) -> str:
        """The radio stack this SRN runs: its role, or for the end-user node its ``radio``."""
        return self.radio if self.role == "user" else self.role

    @property
    def network(self) -> Network:
        return ROLE_NETWORK[self.radio_role]

    @property
    def interface(self) -> str:
        """The interface whose address other nodes use to reach this SRN."""
        return ROLE_INTERFACE[self.radio_role]

    @property
    def bridge(self) -> bool:
        """Forwards between its radio network and the wired col0 network (base station, Wi-Fi gateway)."""
        return self.radio_role == "cellular-bs" or self.gateway


class Gateway(BaseModel):
    """The SSH jump host (``gw.colosseum.net`` or its alias in the ssh config) and the user's login there."""

    model_config = ConfigDict(extra="forbid")
    host: str = "colosseum-gw"
    user: str | None = Field(default=None, description="portal user name (default: from the ssh config)")


class Credentials(BaseModel):
    """Where logins come from; the inventory only says where to look."""

    model_config = ConfigDict(extra="forbid")
    ssh_config: str | None = Field(default="~/.ssh/config", description="ssh config with the gateway and SRN hosts")
    agent: bool = Field(default=True, description="offer ssh-agent keys and ~/.ssh/id_* keys")
    srn_password_env: str | None = Field(default=None, pattern=ENV_NAME,
                                         description="environment variable holding the SRNs' root password")
    image_password_env: dict[str, Annotated[str, StringConstraints(pattern=ENV_NAME)]] = Field(
        default_factory=dict, description="image name -> variable holding that image's root password (images "
                                          "differ: SCOPE `scope`, the Wi-Fi webinar image `sunflower`)")


class Paths(BaseModel):
    """Where things live on an SRN (defaults: Colosseum's public images); ``{srn}`` expands to the SRN name."""

    model_config = ConfigDict(extra="forbid")
    logs: str = "/logs"
    share: str = "/share"
    model: str = "/root/jarvis-model"
    wifi_scripts: str = "/root/interactive_scripts"
    scope: str = "/root/radio_api"
    radio_api: str = "/root/radio_api"
    jarvis: str = "/root/jarvis"
    secrets: str = "/root/.jarvis"  # the deployment key lives here, not under /logs (copied to the team NAS)

    def on(self, srn: str) -> "Paths":
        """These paths as seen on SRN ``srn``."""
        return Paths(**{k: v.replace("{srn}", srn) for k, v in self.model_dump().items()})


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    radio_s: float = Field(default=180.0, gt=0, description="wait for a radio interface to get its address")
    rf_stop_settle_s: float = Field(default=15.0, ge=0, description="Colosseum: leave >15 s between rf stop and start")
    rf_stop_s: float = Field(default=30.0, ge=0, description="wait for `rf info` to report the scenario cleared")


class Inventory(BaseModel):
    """One Colosseum reservation as JARVIS uses it."""

    model_config = ConfigDict(extra="forbid")
    team: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    gateway: Gateway = Gateway()
    image: str = Field(pattern=r"^[A-Za-z0-9-]+$", description="container image the SRNs run")
    rf_scenario: int = Field(ge=1)
    rf_srn: int | None = Field(default=None, description="SRN that runs colosseumcli (default: the first)")
    rf_nodes: int | None = Field(default=None, ge=1,
                                 description="nodes of the RF scenario (`rf scenario list`); the radio map names "
                                             "every one, unused ones as None (default: the number of SRNs)")
    credentials: Credentials = Credentials()
    srns: list[Srn] = Field(min_length=2)
    python: str = Field(default="/usr/bin/python3", description="interpreter with torch on the image")
    scope_config: str | None = Field(default=None, description="a SCOPE config on the image instead of "
                                                                "JARVIS's (iperf and slicing off)")
    nas_model: str | None = Field(default=None, description="prepared model directory on the team NAS")
    paths: Paths = Paths()
    timeouts: Timeouts = Timeouts()
    path_prepend: list[str] = Field(default_factory=list, description="directories put in front of PATH on SRNs")

    @model_validator(mode="after")
    def _check(self) -> "Inventory":
        ids = [s.id for s in self.srns]
        problem = roster_problem(ids, [s.role for s in self.srns], noun="SRN", key="ids")
        if problem:
            raise ValueError(problem)
        if self.rf_srn is not None and self.rf_srn not in ids:
            raise ValueError(f"rf_srn {self.rf_srn} is not one of the SRNs {ids}")
        networks = {s.network for s in self.srns}
        bs = [s.id for s in self.srns if s.radio_role == "cellular-bs"]
        if "cellular" in networks and len(bs) != 1:
            raise ValueError(f"cellular SRNs need exactly one role cellular-bs (base station), found {len(bs)}")
        ues = [s.id for s in self.srns if s.radio_role == "cellular-ue"]
        if self.rf_scenario in SCOPE_CELLULAR_SCENARIOS and len(ues) > UES_PER_BS:
            raise ValueError(f"RF scenario {self.rf_scenario} is a SCOPE cellular scenario: RF node 1 is a base "
                             f"station with {UES_PER_BS} UEs (nodes 2-{UES_PER_BS + 1}); the inventory has "
                             f"{len(ues)} cellular-ue SRNs {ues}")
        if self.rf_nodes is not None and self.rf_nodes < len(self.srns):
            raise ValueError(f"rf_nodes is {self.rf_nodes}, but the inventory has {len(self.srns)} SRNs: each needs "
                             "a node of the RF scenario")
        gateways = [s.id for s in self.srns if s.gateway]
        if "wifi" in networks and len(networks) > 1 and len(gateways) != 1:
            raise ValueError("Wi-Fi SRNs mixed with cellular or server SRNs need exactly one Wi-Fi SRN with "
                             f"`gateway: true` (it forwards between tap0 and col0), found {len(gateways)}")
        return self

    @property
    def rf_order(self) -> list[Srn]:
        """SRNs in RF-node order, as the radio map pins them: the base station is Node 1 and its UEs follow
        (SCOPE's scenarios and its BS election assume it), then the others in inventory order."""
        rank = {"cellular-bs": 0, "cellular-ue": 1}
        return sorted(self.srns, key=lambda s: rank.get(s.radio_role, 2))  # stable: inventory order within a rank

    @property
    def radio_map(self) -> dict[str, object]:
        return radio_map([s.id for s in self.rf_order], self.rf_nodes or len(self.srns))

    @property
    def users_bs(self) -> int:
        """UEs of the base station (SCOPE's ``users-bs``)."""
        return sum(1 for s in self.srns if s.radio_role == "cellular-ue")

    def password_env_of(self, srn: Srn) -> str | None:
        """Where this SRN's root password is: its own variable, its image's, or the inventory-wide one."""
        creds = self.credentials
        return srn.password_env or creds.image_password_env.get(self.image_of(srn)) or creds.srn_password_env

    def name_of(self, srn: Srn) -> str:
        """``<team>-NNN``, the SRN's host name behind the gateway."""
        return f"{self.team}-{srn.id:03d}"

    @property
    def user_srn(self) -> Srn:
        return next(s for s in self.srns if s.role == "user")

    @property
    def layer_srns(self) -> list[Srn]:
        """SRNs that can hold layers, in inventory order (node 1 is the first)."""
        return [s for s in self.srns if s.role != "user"]

    @property
    def rf_node(self) -> Srn:
        wanted = self.rf_srn if self.rf_srn is not None else self.srns[0].id
        return next(s for s in self.srns if s.id == wanted)

    def bridge_of(self, network: str) -> Srn | None:
        """The SRN that forwards between ``network`` and the wired network (None for wired)."""
        return next((s for s in self.srns if s.bridge and s.network == network), None)

    def by_name(self, name: str) -> Srn:
        return next(s for s in self.srns if self.name_of(s) == name)

    def image_of(self, srn: Srn) -> str:
        return srn.image or self.image

    def scope_config_of(self, srn: Srn) -> str:
        """The SCOPE config file name in SCOPE's directory: the user's, or JARVIS's (shipped by the testbed)."""
        return srn.scope_config or self.scope_config or SCOPE_CONFIG_NAME

    def ships_scope_config(self, srn: Srn) -> bool:
        return srn.radio_role.startswith("cellular") and (srn.scope_config or self.scope_config) is None


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate a Colosseum inventory; every problem is reported with its field and line."""
    return load_validated(path, Inventory, what="Colosseum inventory", error=TestbedError,
                          forbid_secrets=True)
