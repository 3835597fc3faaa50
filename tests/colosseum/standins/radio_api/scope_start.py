#!/usr/bin/env python3
"""STAND-IN for SCOPE's scope_start.py: brings up the srsRAN interface of this SRN's role, then runs until killed.

A base station gets ``srs_spgw_sgi`` (the EPC's SGi, 172.16.0.1 on SCOPE), a
UE gets ``tun_srsue`` a moment later (it has to attach first).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bin"))
import standin  # noqa: E402

standin.log()
parser = argparse.ArgumentParser()
parser.add_argument("--config-file", required=True)
args = parser.parse_args()
if not Path(args.config_file).is_file():
    sys.exit(f"scope_start.py stand-in: no config file {args.config_file} in {Path.cwd()}")
interfaces = standin.host()["interfaces"]
if "srs_spgw_sgi" in interfaces:
    standin.attach("srs_spgw_sgi", interfaces["srs_spgw_sgi"])
else:
    time.sleep(0.5)
    standin.attach("tun_srsue", interfaces["tun_srsue"])
print("SCOPE running (stand-in)", flush=True)
while True:
    time.sleep(3600)
