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
