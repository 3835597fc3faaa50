"""Thin, checked wrappers around the commands and /proc reads the emu testbed relies on.

Every command is an argv list (no shell).  A failing command raises
TestbedError with its stderr; callers that treat "already gone" as success
say so with ``check=False``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from testbed.interface import TestbedError

NETNS_DIR = Path("/run/netns")
REQUIRED_TOOLS = {"ip": "iproute2", "ethtool": "ethtool", "sshd": "openssh-server", "ssh": "openssh-client"}
APT_PACKAGES = ("iproute2", "ethtool", "openssh-server", "openssh-client", "iputils-ping", "iperf3", "procps")
SSHD = "/usr/sbin/sshd"


def require_root() -> None:
    """The emu testbed needs root (namespaces, veth, sshd), as Mininet does."""
    if os.geteuid() != 0:
        raise TestbedError("the emu testbed needs root (network namespaces, veth pairs, sshd); "
                           "run as root, or use the rootless local testbed: `--testbed local`")


def require_tools() -> None:
    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in REQUIRED_TOOLS.items()
               if shutil.which(tool) is None and not (tool == "sshd" and os.path.exists(SSHD))]
    if missing:
        raise TestbedError("the emu testbed needs: " + ", ".join(missing))


def run(argv: Sequence[str], *, input: str | None = None, check: bool = True, timeout: float = 30.0
        ) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise TestbedError(f"command not found: {argv[0]}; the emu testbed needs the Debian packages "
                           f"{' '.join(APT_PACKAGES)}") from None
    except subprocess.TimeoutExpired:
        raise TestbedError(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from None
    if check and proc.returncode != 0:
        raise TestbedError(f"`{' '.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def run_all(argvs: Sequence[Sequence[str]], *, timeout: float = 30.0) -> None:
    """Run independent commands concurrently (namespaces are set up in parallel); raise on any failure."""
    procs = [(argv, subprocess.Popen(list(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
             for argv in argvs]
    errors = []
    for argv, proc in procs:
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            errors.append(f"`{' '.join(argv)}` timed out")
            continue
        if proc.returncode != 0:
            errors.append(f"`{' '.join(argv)}` exited {proc.returncode}: {err.strip()}")
    if errors:
        raise TestbedError("; ".join(errors))


def ip_batch(commands: Sequence[str], *, netns: str | None = None) -> None:
    """Many ``ip`` commands in one process: one fork instead of dozens per namespace."""
    if commands:
        run(["ip", *(["-n", netns] if netns else []), "-batch", "-"], input="\n".join(commands) + "\n")


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def disable_ipv6(ifname: str) -> None:
    """Keep IPv6 router solicitations and DAD off root-side ports (they would cross the emulator)."""
    knob = Path("/proc/sys/net/ipv6/conf", ifname, "disable_ipv6")
    if knob.exists():
        knob.write_text("1")


def pids_in_netns(name: str) -> list[int]:
    """Every process whose network namespace is ``name`` (what ``ip netns pids`` prints, without a fork)."""
    try:
        target = os.stat(NETNS_DIR / name)
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
            pids.append(int(entry.name))
    return pids


def exe_of(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def cmdline_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def state_of(pid: int) -> str:
    """The one-letter state from /proc/PID/stat ('' if gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def signal_pids(pids: Sequence[int], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to each pid; return those that existed."""
    hit = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            hit.append(pid)
        except ProcessLookupError:
            continue
    return hit


def wait_until(predicate, *, timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie counts: it runs nothing and holds no socket)."""
    return state_of(pid) in ("", "Z", "X")
