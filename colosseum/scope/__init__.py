"""JARVIS's SCOPE config: SCOPE's radio_interactive.conf with everything that would load the network turned off.

SCOPE's shipped ``radio_interactive.conf`` starts an iperf3 loop between
every UE and its base station (600 s, saturating the downlink) and turns on
network slicing; both would sit under every latency JARVIS measures.
``jarvis-scope.conf`` (next to this module) is that file with ``iperf``,
``network-slicing`` and ``custom-ue-slice`` off (``generic-testbed`` left
out: SCOPE takes its mere presence as "not on Colosseum").  Two keys come
from the inventory at run time: ``users-bs``, the number of UEs (SCOPE
elects RF node ``k`` base station when ``k % (users-bs + 1) == 1``), and
``colosseumcli``, off in batch mode where the tool is disabled (SCOPE then
finds its peers by scanning col0).
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_NAME = "jarvis-scope.conf"  # the name it gets in SCOPE's directory on the SRN
BASE = Path(__file__).with_name(CONFIG_NAME)


def scope_config(users_bs: int, *, colosseumcli: bool) -> dict[str, str]:
    """JARVIS's SCOPE config for a base station with ``users_bs`` UEs (SCOPE's format: every value a string)."""
    config = json.loads(BASE.read_text())
    config.update({"users-bs": str(users_bs), "colosseumcli": str(colosseumcli)})
    return config


def scope_config_text(users_bs: int, *, colosseumcli: bool) -> str:
    return json.dumps(scope_config(users_bs, colosseumcli=colosseumcli), indent=4) + "\n"


def elects_bs(node_id: int, users_bs: int) -> bool:
    """SCOPE's own rule (scope_start.py ``elect_bs``), used to check a radio map before the radios start."""
    return node_id % (users_bs + 1) == 1
