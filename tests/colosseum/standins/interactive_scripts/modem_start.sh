#!/usr/bin/env python3
"""STAND-IN for the Wi-Fi image's modem_start.sh: logs, then runs until killed, like the real modem."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bin"))
import standin  # noqa: E402

standin.log()
print("modem running (stand-in)", flush=True)
while True:
    time.sleep(3600)
