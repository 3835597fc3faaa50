"""One systemd unit per node service, and the systemctl commands that run it and inject faults.

``Restart=no``: a failure experiment kills a node on purpose, and systemd
must not undo that.  The unit file lives in the run directory (kept with
the logs) and is attached with ``systemctl link``; ``down`` stops and
``disable``s it, which removes the link.  Faults go through systemd too
(``systemctl kill --signal=...``), which signals the whole control group.
"""

from __future__ import annotations

import shlex

q = shlex.quote


def unit_name(prefix: str, node: str) -> str:
    return f"jarvis-{prefix}-{node}.service"


def _systemd_word(arg: str) -> str:
    """One ExecStart/Environment word: double-quoted, with systemd's specifier (%) and variable ($) escapes."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def unit_text(*, description: str, argv: list[str], workdir: str, user: str, log_name: str) -> str:
    """The unit for ``argv``; a leading ``env K=V ...`` becomes Environment= lines."""
    env = ["PYTHONUNBUFFERED=1"]
    if argv and argv[0] == "env":
        argv = argv[1:]
        while argv and "=" in argv[0] and not argv[0].startswith("-"):
            env.append(argv[0])
            argv = argv[1:]
    lines = ["[Unit]", f"Description={description}", "", "[Service]", "Type=exec",
             f"WorkingDirectory={workdir}", *(f"Environment={_systemd_word(e)}" for e in env),
             f"ExecStart={' '.join(_systemd_word(a) for a in argv)}",
             f"StandardOutput=append:{workdir}/{log_name}", "StandardError=inherit",
             "Restart=no", "KillMode=control-group"]
    if user != "root":
        lines.append(f"User={user}")
    return "\n".join(lines) + "\n"


def start_commands(sudo: str, unit_path: str, unit: str) -> list[str]:
    """Link the unit file, start it, print its main pid."""
    return [f"{sudo}systemctl link {q(unit_path)}", f"{sudo}systemctl start {q(unit)}",
            f"systemctl show -p MainPID --value {q(unit)}"]


def stop_commands(sudo: str, unit: str) -> list[str]:
    """Stop, unlink (``disable`` removes a linked unit) and forget a failed state; each may find it gone."""
    return [f"{sudo}systemctl stop {q(unit)}", f"{sudo}systemctl disable {q(unit)}",
            f"{sudo}systemctl reset-failed {q(unit)}"]


NOT_RUNNING = 3  # exit code of signal_command when the unit has no running main process


def signal_command(sudo: str, unit: str, signal: str, until: str, timeout_s: float = 5.0) -> str:
    """Send ``signal`` to the unit's processes; return once its main process is gone, stopped or running again."""
    pid = f"$(systemctl show -p MainPID --value {q(unit)})"
    test = {"gone": f'[ "{pid}" = 0 ] && exit 0',
            "stopped": f'case "$(ps -o stat= -p {pid})" in T*|t*) exit 0;; esac',
            "running": f'case "$(ps -o stat= -p {pid})" in ""|T*|t*) ;; *) exit 0;; esac'}[until]
    tries = max(1, int(timeout_s / 0.01))
    return (f'[ "{pid}" != 0 ] || exit {NOT_RUNNING}; {sudo}systemctl kill --signal={signal} {q(unit)} || '
            f"exit {NOT_RUNNING}; for i in $(seq {tries}); do {test}; sleep 0.01; done; exit 1")
