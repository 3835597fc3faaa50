"""One check of :meth:`Testbed.follow` that every testbed implementing it passes (emu, ssh hosts, local)."""

from __future__ import annotations

import queue
import threading
import time

from testbed.interface import HostInfo, Testbed

NAME = "follow-check.jsonl"


def assert_follows(testbed: Testbed, host: HostInfo) -> None:
    """``follow`` waits for a file not there yet, streams lines as they are appended (a torn one included, as
    written), and once terminated leaves no follower running on the host."""
    shell = testbed.shell(host)
    shell.run(f"rm -f {NAME}")
    proc = testbed.follow(host, NAME)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()

    def next_line(timeout_s: float = 10.0) -> str:
        return lines.get(timeout=timeout_s).rstrip("\n")

    time.sleep(0.3)  # the follower is waiting for a file that does not exist yet
    shell.run(f"echo '{{\"ev\":\"a\"}}' >> {NAME}")
    assert next_line() == '{"ev":"a"}'
    started = time.monotonic()
    shell.run(f"echo '{{\"ev\":\"b\"}}' >> {NAME}; printf '{{\"torn' >> {NAME}; echo >> {NAME}")
    assert [next_line(), next_line()] == ['{"ev":"b"}', '{"torn']
    assert time.monotonic() - started < 2.0, "an appended line reaches the follower at once, not at a poll"
    proc.terminate()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while shell.run(f"pgrep -f '[t]ail .*{NAME}'", check=False).ok:
        assert time.monotonic() < deadline, f"a follower of {NAME} still runs on {host.name}"
        time.sleep(0.2)
