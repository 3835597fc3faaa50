"""A testbed's remote commands as data: per host, per phase, in the order the testbed runs them.

Testbeds whose hosts JARVIS does not own (Colosseum SRNs, SSH hosts, Pis)
build their command lists from functions of the inventory, execute exactly
those lists, and hand the same lists to a :class:`CommandPlan` for
``--dry-run``: what is printed is what would run, and tests compare the
plan with what stand-in tools logged.  Lines starting with ``#`` are notes
(a file put, a value read at run time), printed but never executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Check:
    """A command that must succeed on a host before anything is changed, and what its failure means."""

    command: str
    meaning: str


def failed_checks(checks: list[Check], results: list) -> list[str]:
    """``<meaning>: no (`<command>`: <its output>)`` for each check that failed (``results`` from
    ``run_many(keep_going=True)``, in the order of ``checks``)."""
    return [f"{check.meaning}: no (`{check.command}`: "
            f"{(r.stderr.strip() or r.stdout.strip() or f'exit {r.exit_code}')[-300:]})"
            for check, r in zip(checks, results) if not r.ok]


@dataclass
class CommandPlan:
    """Commands per host in run order; ``titles`` give each host's heading (and the order hosts print in)."""

    header: list[str]
    titles: dict[str, str] = field(default_factory=dict)
    steps: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def add(self, host: str, phase: str, commands: list[str]) -> None:
        self.steps.setdefault(host, []).extend((phase, c) for c in commands)

    def commands(self, host: str, phase: str | None = None) -> list[str]:
        """Commands for one host (optionally one phase); notes (lines starting with '#') left out."""
        return [c for p, c in self.steps.get(host, []) if (phase is None or p == phase) and not c.startswith("#")]

    def render(self) -> str:
        lines = [f"# {line}" for line in self.header]
        for host in [*self.titles, *(h for h in self.steps if h not in self.titles)]:
            title = self.titles.get(host)
            lines.append(f"\n{host}" + (f" ({title})" if title else ""))
            lines += [f"  [{phase}] {command}" for phase, command in self.steps.get(host, [])]
        return "\n".join(lines) + "\n"
