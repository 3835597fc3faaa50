"""JARVIS inside a Colosseum container in batch mode (copied into the image as /root/radio_api/jarvis_batch.py).

Colosseum drives a batch job through the Radio API scripts in
/root/radio_api (start.sh, status.sh, stop.sh; each must return within
5 s) and hands every node its own ``radio.conf`` (the batch file's
ModemConfig).  In batch mode there is no SSH and no NAS, so this script
does on its own what the interactive testbed does over SSH, from the
commands written into radio.conf when the bundle was generated:

* ``status``: print ``{"STATUS": ..., "INFO": ...}``; the first call boots
  (radio stack, static col0 address) in the background: BOOTING, then READY;
* ``start``: ACTIVE at once; in the background wait for the radio's address,
  add the routes, then run the node service (layer nodes) or, once every
  peer answers a ping, the job (end-user node), logging to /logs/<run>;
* ``stop``: STOPPING, kill what was started, FINISHED.

Standard library only: the container's python3 runs it, whatever it has.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
POLL_S = 1.0


def config() -> dict:
    return json.loads((HERE / "radio.conf").read_text())


def state_dir(conf: dict) -> Path:
    path = Path(conf["logs"]) / "batch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def status(conf: dict) -> dict:
    path = state_dir(conf) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {"STATUS": "OFF", "INFO": ""}


def set_status(conf: dict, state: str, info: str) -> None:
    path = state_dir(conf) / "status.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"STATUS": state, "INFO": info}))
    os.replace(tmp, path)
    log(conf, f"{state}: {info}")


def log(conf: dict, message: str) -> None:
    with open(state_dir(conf) / "runner.log", "a") as out:
        out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")


def sh(conf: dict, command: str, *, check: bool = True) -> subprocess.CompletedProcess:
    log(conf, f"$ {command}")
    result = subprocess.run(command, shell=True, cwd=conf["logs"], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{command}` exited {result.returncode}: {(result.stderr or result.stdout).strip()}")
    return result


def detach(conf: dict, action: str) -> None:
    """Run this script's ``action`` in the background (the Radio API scripts must return within 5 s)."""
    out = open(state_dir(conf) / "runner.log", "a")
    subprocess.Popen([sys.executable, str(Path(__file__).resolve()), action], stdout=out, stderr=subprocess.STDOUT,
                     stdin=subprocess.DEVNULL, start_new_session=True)


def has_address(conf: dict, interface: str, cidr: str) -> bool:
    shown = sh(conf, f"ip -4 -o addr show dev {interface}", check=False).stdout
    return f"inet {cidr}" in shown


def boot(conf: dict) -> None:
    """Radio stack up, col0 address in place; then READY unless start.sh came first (ERROR saying why)."""
    try:
        for path, text in conf.get("files", {}).items():  # JARVIS's SCOPE config (colosseumcli off: batch mode)
            Path(path).write_text(text)
        for command in conf["radio_commands"]:
            sh(conf, command)
        if conf["col0_address"]:
            sh(conf, f"ip addr replace {conf['col0_address']} dev col0")
        (state_dir(conf) / "booted").touch()
        if status(conf)["STATUS"] == "BOOTING":
            set_status(conf, "READY", "radio started")
    except RuntimeError as exc:
        (state_dir(conf) / "boot-failed").write_text(str(exc))
        set_status(conf, "ERROR", str(exc))


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def run(conf: dict) -> None:
    """After start.sh: wait for the boot and the radio's address, route, then serve layers or run the job."""
    state = state_dir(conf)
    try:
        if not wait_until(lambda: (state / "booted").exists() or (state / "boot-failed").exists(),
                          conf["radio_timeout_s"]) or (state / "boot-failed").exists():
            raise RuntimeError("the radio did not boot (see batch/runner.log)")
        if not wait_until(lambda: has_address(conf, conf["interface"], conf["address"]), conf["radio_timeout_s"]):
            raise RuntimeError(f"{conf['interface']} did not get {conf['address']} (set `address` in the inventory "
                               "to what this SRN's radio stack assigns)")
        if conf["forwarding"]:
            sh(conf, "sysctl -w net.ipv4.ip_forward=1")
        for spec in conf["routes"]:
            sh(conf, f"ip route replace {spec}")
        node = conf["node"]
        if node is None:
            set_status(conf, "ACTIVE", "radio and routes up (no layers on this SRN)")
            return
        Path(conf["logs"], node["config_name"]).write_text(json.dumps(node["config"], indent=2))
        if node["index"] > 0:
            start_service(conf, node["argv"], "service.out")
            set_status(conf, "ACTIVE", f"{node['name']} serving its layers")
            return
        Path(conf["logs"], "job.json").write_text(json.dumps(conf["job"]))
        unreachable = [a for a in conf["peers"] if not wait_until(
            lambda a=a: sh(conf, f"ping -n -q -c 1 -w 5 {a}", check=False).returncode == 0, conf["radio_timeout_s"])]
        if unreachable:
            raise RuntimeError(f"peers unreachable: {' '.join(unreachable)}")
        set_status(conf, "ACTIVE", "running the job")
        with open(Path(conf["logs"]) / "user.jsonl", "w") as out:
            code = subprocess.run(node["argv"], cwd=conf["logs"], stdout=out, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
        Path(conf["logs"], "user.exit").write_text(f"{code}\n")
        set_status(conf, "ACTIVE", f"job finished, exit {code}")
    except RuntimeError as exc:
        set_status(conf, "ERROR", str(exc))


def start_service(conf: dict, argv: list[str], log_name: str) -> None:
    out = open(Path(conf["logs"]) / log_name, "ab")
    proc = subprocess.Popen(argv, cwd=conf["logs"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (state_dir(conf) / "service.pid").write_text(f"{proc.pid}\n")
    log(conf, f"service pid {proc.pid}: {' '.join(argv)}")


def stop(conf: dict) -> None:
    set_status(conf, "STOPPING", "stopping")
    pid_file = state_dir(conf) / "service.pid"
    if pid_file.exists():
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    if conf["tmux_socket"]:
        sh(conf, f"tmux -L {conf['tmux_socket']} kill-server", check=False)
    set_status(conf, "FINISHED", "stopped; logs are in " + conf["logs"])


def main(action: str) -> int:
    conf = config()
    Path(conf["logs"]).mkdir(parents=True, exist_ok=True)
    identity = Path(conf["logs"]) / "jarvis-node.json"  # lets collection find each node in the NAS copy
    if not identity.exists():
        identity.write_text(json.dumps({"name": (conf["node"] or {}).get("name"), "srn": conf["srn"]}))
    if action == "status":
        current = status(conf)
        if current["STATUS"] == "OFF":
            set_status(conf, "BOOTING", "starting the radio")
            detach(conf, "boot")
            current = status(conf)
        print(json.dumps(current))
    elif action == "start":
        if status(conf)["STATUS"] == "OFF":
            detach(conf, "boot")
        set_status(conf, "ACTIVE", "starting")
        detach(conf, "run")
    elif action == "stop":
        stop(conf)
    elif action == "boot":
        boot(conf)
    elif action == "run":
        run(conf)
    else:
        print(f"usage: {Path(__file__).name} status|start|stop", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
