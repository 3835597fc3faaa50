"""``chronyc tracking`` readings: how far each Pi's clock may be from true time around a run.

One-way hop times compare wall clocks of two Pis, and Pi Wi-Fi has no
hardware timestamping, so the run directory keeps chrony's own account of
each clock before and after the run: the raw text and its key numbers.
"""

from __future__ import annotations

import re

TRACKING_COMMAND = "chronyc tracking"
_SECONDS = re.compile(r"([-+]?\d+(?:\.\d+)?) seconds(?: (fast|slow))?")


def parse_tracking(text: str) -> dict:
    """Key fields of ``chronyc tracking``; offsets in seconds, positive when the clock is fast."""
    fields: dict = {"raw": text}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "Reference ID":
            fields["reference"] = value
        elif key == "Stratum":
            fields["stratum"] = int(value) if value.isdigit() else value
        elif key == "Leap status":
            fields["leap_status"] = value
        elif key in ("System time", "Last offset", "RMS offset", "Root delay", "Root dispersion"):
            match = _SECONDS.search(value)
            if match:
                seconds = float(match.group(1))
                fields[key.lower().replace(" ", "_") + "_s"] = -seconds if match.group(2) == "slow" else seconds
    return fields
