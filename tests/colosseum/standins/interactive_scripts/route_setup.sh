#!/usr/bin/env python3
"""STAND-IN for the Wi-Fi image's route_setup.sh: only logs (the image's own routes do not matter here)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bin"))
import standin  # noqa: E402

standin.log()
