#!/usr/bin/env python3
"""STAND-IN for the Wi-Fi image's route_setup.sh: takes the peer's SRN id, one call per peer, as the real one.

The real script (webinar-interactive-v1 image; shown in Colosseum's
interactive tutorial as ``./route_setup.sh 115``, answering "route setup
for 192.168.115.0/24 completed successfully") is not public: this one
checks the argument the same way and only logs (the image's own routes do
not carry JARVIS traffic).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bin"))
import standin  # noqa: E402

standin.log()
if len(sys.argv) != 2 or not sys.argv[1].isdigit():
    print("usage: ./route_setup.sh <SRN id of the peer>", file=sys.stderr)
    sys.exit(1)
print(f"route setup for 192.168.{sys.argv[1]}.0/24 completed successfully")
