"""Gate for tests that need root, namespaces, sshd, ping and iperf3, and a testbed factory.

On a machine that truly lacks them these tests skip with the reason; with
JARVIS_REQUIRE_ROOT_TESTS=1 (set by CI, which runs as root) they fail
instead, so a CI run can never pass by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid

import pytest

from emu.testbed import EmuTestbed

TOOLS = {"ip": "iproute2", "ethtool": "ethtool", "ssh": "openssh-client", "ping": "iputils-ping",
         "iperf3": "iperf3", "tc": "iproute2"}


def root_missing_reason() -> str:
    """Why root tests cannot run here ('' when they can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, sshd)"
    missing = [f"{tool} ({pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if not os.path.exists("/usr/sbin/sshd"):
        missing.append("sshd (openssh-server)")
    return f"missing tools: {', '.join(missing)}" if missing else ""


@pytest.fixture(scope="session")
def require_root() -> None:
    reason = root_missing_reason()
    if reason:
        if os.environ.get("JARVIS_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail(f"JARVIS_REQUIRE_ROOT_TESTS=1 but {reason}")
        pytest.skip(reason)


def unique_prefix(label: str) -> str:
    return f"jv-t{uuid.uuid4().hex[:6]}-{label}"


@contextlib.contextmanager
def emu_testbed(label: str, nodes: int, links=None, **options):
    """An EmuTestbed that is up for the block and down (checked) afterwards, even on failure."""
    testbed = EmuTestbed(unique_prefix(label), backend="userspace", **options)
    try:
        testbed.up(nodes, links)
        yield testbed
    finally:
        testbed.down()
