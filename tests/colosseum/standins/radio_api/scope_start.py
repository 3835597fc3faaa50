#!/usr/bin/env python3
"""STAND-IN for SCOPE's scope_start.py: elects base station or UE as SCOPE does, brings up that role's interface.

Like wineslab/colosseum-scope's scope_start.py it reads its JSON config
(string values), finds the RF nodes from ``colosseumcli rf radiomap`` (or,
with ``colosseumcli`` off as in batch mode, from the SRNs on col0, numbered
in SRN order), and elects RF node ``k`` base station when
``k % (users-bs + 1) == 1``.  A base station gets ``srs_spgw_sgi`` (the EPC's
SGi, 172.16.0.1 on SCOPE), a UE gets ``tun_srsue`` a moment later (it has to
attach first), at the address the test gave this host for that role: an SRN
elected to a role the test did not plan gets no address, as a real UE with
no base station to attach to.  With ``iperf`` on it logs the iperf3 loop SCOPE
would start (the flood under every measurement).  Then it runs until killed.
"""

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bin"))
import standin  # noqa: E402


def flag(config: dict, key: str, default: bool) -> bool:
    return str(config.get(key, default)).lower() == "true"


def rf_nodes(use_colosseumcli: bool) -> dict[int, int]:
    """RF node -> SRN number, as SCOPE learns it."""
    if use_colosseumcli:
        table = subprocess.run(["colosseumcli", "rf", "radiomap"], capture_output=True, text=True).stdout
        rows = re.findall(r"^\|\s*Node\s+(\d+)\s*\|\s*(\d+)\s*\|", table, re.MULTILINE)
        return {int(node): int(srn) for node, srn in rows}
    # The col0 scan numbers SRNs in order; in batch mode Colosseum gives the SRNs in RFNode_ID order, which the
    # test records as each host's "rf_node" when it provisions the containers.
    hosts = [json.loads(p.read_text()) for p in (standin.ROOT / "hosts").glob("*.json")]
    on_col0 = sorted((h.get("rf_node", 0), int(h["srn"].rsplit("-", 1)[1])) for h in hosts if "col0" in h["interfaces"])
    return {k: srn for k, (_, srn) in enumerate(on_col0, start=1)}


standin.log()
parser = argparse.ArgumentParser()
parser.add_argument("--config-file", required=True)
args = parser.parse_args()
if not Path(args.config_file).is_file():
    sys.exit(f"scope_start.py stand-in: no config file {args.config_file} in {Path.cwd()}")
config = json.loads(Path(args.config_file).read_text())
host = standin.host()
me = int(host["srn"].rsplit("-", 1)[1])
nodes = rf_nodes(flag(config, "colosseumcli", False))
mine = [node for node, srn in nodes.items() if srn == me]
if not mine:
    sys.exit("scope_start.py stand-in: this SRN is in no RF node. Did you start the Colosseum scenario? "
             "If in batch mode, disable the colosseumcli option")
users_bs = min(int(config.get("users-bs", 3)), len(nodes) - 1)
is_bs = mine[0] % (users_bs + 1) == 1
role = "srs_spgw_sgi" if is_bs else "tun_srsue"
print(f"RF node {mine[0]}: elected {'base station' if is_bs else 'UE'}", flush=True)
if flag(config, "iperf", False):
    standin.log(["iperf3", "-s", "-D"] if is_bs else ["iperf3", "-c", "172.16.0.1", "-t", "600", "-R"])
if role in host["interfaces"]:
    if not is_bs:
        time.sleep(0.5)
    standin.attach(role, host["interfaces"][role])
print("SCOPE running (stand-in)", flush=True)
while True:
    time.sleep(3600)
