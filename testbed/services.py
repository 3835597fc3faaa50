"""The shell commands that run a node service on a host JARVIS does not own, stop it, and signal it for faults.

A service is started detached in its own session (``setsid``: pgid = pid),
so a fault signals its whole process group, and its pid is recorded in the
testbed state (a later ``fab down``, from another process, finds it).  Each
fault command returns only once ``ps`` on the host shows the effect: the
fault's time is taken when it returns.
"""

from __future__ import annotations

import shlex

NOT_RUNNING = 3  # exit code of signal_command when the process group is already gone
# process fault -> (the signal it sends, the state that shows it took effect)
PROCESS_SIGNALS = {"kill": ("KILL", "gone"), "pause": ("STOP", "stopped"), "resume": ("CONT", "running")}


def service_command(argv: list[str], log_name: str) -> str:
    """Start ``argv`` detached in its own session (pgid = pid, for faults), output to ``log_name``; print the pid."""
    return (f"PYTHONUNBUFFERED=1 setsid nohup {shlex.join(argv)} > {shlex.quote(log_name)} 2>&1 < /dev/null "
            "& echo $!")


def kill_group_command(pid: int | str, signal: str) -> str:
    """Signal the service's whole process group (it was started with setsid, so pgid = pid)."""
    return f"kill -{signal} -- -{pid}"


def stop_service_command(pid: int | str) -> str:
    """Kill the recorded service's group only if that pid still runs the payload (pids get reused)."""
    return f"ps -o args= -p {pid} | grep -q payload && {kill_group_command(pid, 'KILL')}"


def wait_state_command(pid: int | str, until: str, timeout_s: float = 5.0) -> str:
    """Poll ``ps`` until the process is ``gone`` (or a zombie), ``stopped`` (T) or ``running`` (not T)."""
    test = {"gone": 'case "$s" in ""|Z*) exit 0;; esac',
            "stopped": 'case "$s" in T*|t*) exit 0;; esac',
            "running": 'case "$s" in ""|T*|t*) ;; *) exit 0;; esac'}[until]
    tries = max(1, int(timeout_s / 0.01))
    return f"for i in $(seq {tries}); do s=$(ps -o stat= -p {pid}); {test}; sleep 0.01; done; exit 1"


def signal_command(pid: int | str, signal: str, until: str) -> str:
    """Signal the group, then wait for the effect: a fault's time is taken when this returns."""
    return f"{kill_group_command(pid, signal)} || exit {NOT_RUNNING}; {wait_state_command(pid, until)}"
