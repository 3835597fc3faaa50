"""Run a job on a deployed chain, inject faults on schedule, and write the run directory.

Token-triggered faults fire when the user node reports that token index of the
current prompt (it prints token events as JSON lines); time-triggered faults
fire that many seconds after the session starts.  Every fault is recorded with
when it was requested and when the testbed reported it in effect: that is the
ground truth analysis compares the measurements against.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from dashboard.feed import Feed, fault_message
from dashboard.follow import LiveLogs
from experiment.collect import write_run_dir
from experiment.deploy import Deployment
from testbed.interface import UNDO_ACTIONS, FaultKind, FaultResult, HostInfo, Testbed, TestbedError
from testbed.profiles import LinkProfile
from testbed.shipping import service_argv


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: trigger (``at_token`` or ``at_seconds``), action and targets.

    ``to`` are the nodes a one-way partition cuts ``nodes`` off from; ``pct`` the share of frames a corrupt,
    duplicate or reorder touches; ``offset_ms`` a clock skew's offset; ``factor`` a straggler's; a flap cuts
    the link for ``duty`` of every ``period_ms`` during ``duration``.
    """

    action: FaultKind
    nodes: tuple[int, ...]
    at_token: int | None = None
    at_seconds: float | None = None
    prompt_index: int = 0
    repeat: int = 0
    profile: LinkProfile | None = None
    duration: float | None = None
    to: tuple[int, ...] = ()
    pct: float | None = None
    period_ms: float | None = None
    duty: float | None = None
    offset_ms: float | None = None
    factor: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", FaultKind(self.action))  # "kill" or FaultKind.KILL alike

    @property
    def trigger(self) -> str:
        return f"token:{self.at_token}" if self.at_token is not None else f"seconds:{self.at_seconds}"


@dataclass
class FaultRunner:
    """Fires faults on the testbed and records them (thread-safe: timers may fire concurrently)."""

    testbed: Testbed
    hosts: dict[int, HostInfo]
    records: list[dict] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _timers: list[tuple[threading.Timer, threading.Event, Fault, FaultKind | None]] = field(default_factory=list)
    _heal_at_end: list[Fault] = field(default_factory=list)  # impairments without a duration: healed by finish()
    current: dict = field(default_factory=dict)
    on_record: Callable[[dict], None] | None = None  # told each record as it is made (the live dashboard)

    def fire(self, fault: Fault, action: FaultKind | None = None) -> None:
        action = action or fault.action
        if action == FaultKind.FLAP:
            self._flap(fault)
            return
        requested = time.time_ns()
        # A heal ends what the fault did, so it names both sides of a one-way partition.
        nodes = fault.nodes + fault.to if action == FaultKind.HEAL else fault.nodes
        targets = [self.hosts[n] for n in nodes]
        peers = [self.hosts[n] for n in fault.to]
        try:
            results = self.testbed.inject(action, targets, profile=fault.profile, pct=fault.pct, peers=peers,
                                          offset_ms=fault.offset_ms, factor=fault.factor)
            detail = "; ".join(r.detail for r in results)
            effective = results[-1]
        except TestbedError as exc:
            effective = FaultResult.now(action.value, " ".join(h.name for h in targets), f"FAILED: {exc}")
            detail = effective.detail
        target = " ".join(h.name for h in targets)
        if peers and action != FaultKind.HEAL:
            target += " -> " + " ".join(h.name for h in peers)
        record = {
            "action": action.value, "target": target, "trigger": fault.trigger,
            "session": self.current.get("session", ""), "step": self.current.get("step", -1),
            "requested_wall_ns": requested, "effective_wall_ns": effective.effective_wall_ns,
            "effective_mono_ns": effective.effective_mono_ns, "detail": detail,
        }
        with self._lock:
            self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        print(f"[fault] {action.value} {target} ({fault.trigger}): {detail}", flush=True)
        if fault.duration and action.undo is not None:
            self.schedule(fault.duration, fault, action.undo)
        with self._lock:
            if action == FaultKind.HEAL:  # healed now: nothing of these nodes is left to heal at the end
                self._heal_at_end = [f for f in self._heal_at_end if not set(f.nodes + f.to) <= set(nodes)]
            elif action.undo == FaultKind.HEAL and not fault.duration:
                self._heal_at_end.append(fault)

    def _flap(self, fault: Fault) -> None:
        """A flap is its link_down/link_up pairs, each recorded: down for ``duty`` of every period, from now until
        ``duration`` is up (the last cycle is cut short there, and the link is left up)."""
        period = fault.period_ms / 1000
        down = fault.duty * period
        cycles = max(1, math.ceil(fault.duration / period))
        for k in range(cycles):
            outage = min(down, fault.duration - k * period)
            cut = replace(fault, action=FaultKind.LINK_DOWN, duration=outage)
            if k == 0:
                self.fire(cut)
            else:
                self.schedule(k * period, cut)

    def schedule(self, delay: float, fault: Fault, action: FaultKind | None = None) -> None:
        started = threading.Event()

        def go() -> None:
            started.set()
            self.fire(fault, action)

        timer = threading.Timer(delay, go)
        timer.daemon = True
        with self._lock:
            self._timers.append((timer, started, fault, action))
        timer.start()

    def finish(self) -> None:
        """Cancel faults that have not fired; undo actions (resume, link_up, heal) still due are applied now.

        A run that ends before a pause's ``duration`` is up must not leave the
        node stopped for the next run; the early undo is recorded like any fault.
        A fault firing meanwhile may schedule its own undo: those are handled too.  An impairment given no
        duration (a blackhole, a clock skew, a straggler, ...) lasts the run and is healed here.
        """
        done = 0
        while True:
            with self._lock:
                batch = self._timers[done:]
            if not batch:
                break
            done += len(batch)
            for timer, started, fault, action in batch:
                timer.cancel()
                if action in UNDO_ACTIONS and not started.is_set():
                    self.fire(fault, action)
            for timer, *_ in batch:
                timer.join()
        with self._lock:
            remaining, self._heal_at_end = self._heal_at_end, []
        for fault in remaining:
            self.fire(fault, FaultKind.HEAL)


def run_job(testbed: Testbed, deployment: Deployment, job: dict, faults: list[Fault], out: Path, *,
            scenario: dict | None = None, stream=print, feed: Feed | None = None) -> Path:
    """Run ``job`` (prompts, max_new_tokens, sampling, repeats) with ``faults``; write the run dir to ``out``.

    With a ``feed`` (the live dashboard's), every host's event log is followed into it while the job runs, and
    each fault record goes there as it is made.
    """
    hosts = {h["index"]: HostInfo(**h) for h in deployment.hosts}
    user = hosts[0]
    shell = testbed.shell(user)
    job_file = testbed.state_dir / "job.json"
    job_file.write_text(json.dumps(job))
    shell.put(job_file, "job.json")
    shell.run("rm -f events.jsonl", check=False)
    runner = FaultRunner(testbed, hosts, on_record=None if feed is None else
                         (lambda record: feed.publish(fault_message(record))))
    pending = list(faults)
    started_wall = time.time_ns()
    # 1 s of slack: a remote host's clock may run behind ours (NTP keeps it to milliseconds), and an earlier
    # run on the same deployment ended longer ago than that (its collection alone takes longer).
    live = None if feed is None else LiveLogs(testbed, list(hosts.values()), feed,
                                              since_wall_ns=started_wall - 1_000_000_000)
    proc = testbed.popen(user, service_argv(user, "payload.user", "--config", "user.json", "--job", "job.json",
                                            "--jsonl"))
    interrupted = False
    try:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                stream(line.rstrip())
                continue
            key = (event.get("prompt_index"), event.get("repeat"))
            if event["ev"] == "session_start":
                runner.current = {"session": "", "step": -1}
                for fault in [f for f in pending if f.at_seconds is not None and (f.prompt_index, f.repeat) == key]:
                    pending.remove(fault)
                    runner.schedule(fault.at_seconds, fault)
            elif event["ev"] == "token":
                runner.current = {"session": event["session"], "step": event["step"]}
                stream(f"[{event['prompt_index']}.{event['repeat']} #{event['step']}] {event['text']!r} "
                       f"layers={len(event['layers'].split())} out=[{event['nodes_out']}]"
                       + (f" bridged=[{event['bridges']}]" if event.get("bridges") else ""))
                for fault in [f for f in pending if f.at_token == event["step"] and (f.prompt_index, f.repeat) == key]:
                    pending.remove(fault)
                    runner.fire(fault)
            elif event["ev"] == "session_end":
                stream(f"[{event['prompt_index']}.{event['repeat']}] done: {event['text']!r}"
                       + (f" ERROR: {event['error']}" if event.get("error") else ""))
        proc.wait()
    except KeyboardInterrupt:
        interrupted = True
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        runner.finish()
        if live is not None:
            live.stop()
    complete = proc.returncode == 0 and not interrupted
    if proc.returncode != 0 and not interrupted:
        how = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
        stream(f"[run] ERROR: the user node {how}; the run ends incomplete, with every node's log collected")
    return write_run_dir(testbed, deployment, out, faults=runner.records, scenario=scenario or {"job": job},
                         started_wall_ns=started_wall, complete=complete,
                         user_exit=proc.returncode)
