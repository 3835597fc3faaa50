#!/usr/bin/env python3
"""STAND-IN for the Colosseum Wi-Fi image's ~/interactive_scripts/tap_setup.sh: creates tap0 with its address."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bin"))
import standin  # noqa: E402

standin.log()
standin.attach("tap0", standin.host()["interfaces"]["tap0"])
