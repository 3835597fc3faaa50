"""Reading colosseumcli's answers about the RF scenario.

``colosseumcli`` (v19, colosseum-wiot/colosseumcli-public) exits 0 even when
it fails: ``rf start`` prints ``Scenario Start Time is HH:MM:SS`` on success
and a "Colosseum failed to schedule ..." line otherwise, and ``rf info``
prints a two-column table (cliff's ShowOne) with ``scenario_id``,
``scenario_status``, ``scenario_start_time``, ``scenario_cycle`` and
``Number of Nodes``.  So success is read from the text, never the exit code.
"""

from __future__ import annotations

import re

START_OK = "Scenario Start Time is"
# MCHEM states meaning a scenario is not (or no longer) running; stop is complete in CLEARED or ERROR.
START_FAIL_STATES = ("COMPLETED", "ABORTED", "CLEARED", "ERROR")
STOP_DONE_STATES = ("CLEARED", "ERROR")
_ROW = re.compile(r"^\|\s*(?P<key>[^|]+?)\s*\|\s*(?P<value>[^|]*?)\s*\|$")


def started(output: str) -> bool:
    return START_OK in output


def parse_info(output: str) -> dict[str, str]:
    """The ``Field | Value`` rows of ``rf info`` (an empty dict when no scenario has run)."""
    rows = {}
    for line in output.splitlines():
        match = _ROW.match(line.strip())
        if match and match["key"] != "Field":
            rows[match["key"]] = match["value"]
    return rows


def confirm_running(info: dict[str, str], scenario: int) -> str | None:
    """Why ``info`` does not show ``scenario`` running (None when it does)."""
    if info.get("scenario_id") != str(scenario):
        return f"rf info shows scenario {info.get('scenario_id') or 'none'}, not {scenario}"
    status = info.get("scenario_status", "").upper()
    if status in START_FAIL_STATES:
        return f"rf info shows scenario {scenario} in state {status}"
    if not info.get("scenario_start_time"):
        return f"rf info shows no start time for scenario {scenario}"
    return None


def stop_complete(info: dict[str, str]) -> bool:
    return not info or info.get("scenario_status", "").upper() in STOP_DONE_STATES


# -- the radio map: which SRN is which node of the RF scenario --------------------------------------

# SCOPE's cellular scenarios (Rome 1017/1018/1035/1019, Boston 1031/1033/1036/1024): ten base stations with
# four UEs each, Node 1 a base station and Nodes 2-5 its UEs.
SCOPE_CELLULAR_SCENARIOS = frozenset({1017, 1018, 1019, 1024, 1031, 1033, 1035, 1036})
UES_PER_BS = 4
RADIOS = {"RadioA": 1, "RadioB": 2}  # the SRN's USRP daughtercards on M-CHEM's: as Colosseum's own examples
_MAP_ROW = re.compile(r"^\|\s*Node\s+(?P<node>\d+)\s*\|\s*(?P<srn>\w+)\s*\|")


def radio_map(srns_in_node_order: list[int], nodes: int) -> dict[str, object]:
    """``rf start -m``'s file: ``{"Node k": {"SRN": id, "RadioA": 1, "RadioB": 2}}``, unused nodes ``"None"``
    (colosseumcli-public's check_radio_map; the documentation asks for every node of the scenario)."""
    entries: dict[str, object] = {f"Node {k}": {"SRN": srn, **RADIOS} for k, srn in
                                  enumerate(srns_in_node_order, start=1)}
    for k in range(len(srns_in_node_order) + 1, nodes + 1):
        entries[f"Node {k}"] = "None"
    return entries


def parse_radiomap(output: str) -> dict[int, int]:
    """``rf radiomap``'s table (Node | SRN | RadioA | RadioB) as node -> SRN, unused nodes left out."""
    out = {}
    for line in output.splitlines():
        match = _MAP_ROW.match(line.strip())
        if match and match["srn"].isdigit():
            out[int(match["node"])] = int(match["srn"])
    return out


def radiomap_mismatches(wanted: dict[str, object], shown: dict[int, int]) -> list[str]:
    """Nodes whose SRN in ``rf radiomap`` is not the one the map asked for."""
    wrong = []
    for key, entry in wanted.items():
        if isinstance(entry, dict):
            node = int(key.split()[1])
            if shown.get(node) != entry["SRN"]:
                wrong.append(f"RF node {node} is SRN {shown.get(node, 'none')}, not SRN {entry['SRN']}")
    return wrong
