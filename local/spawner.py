"""Warm starts for the local testbed: fork node services from one pre-imported process.

A layer node spends ~5 s of CPU importing torch and transformers before it
serves anything; a 30-node chain on a 2-core machine waits over a minute for
that alone.  On the local testbed every node runs this machine's interpreter
and the same source tree, so one spawner process imports them once and forks
each node service from itself.  Each node is still its own process (own pid,
session and process group, memory copy-on-write), so SIGKILL/SIGSTOP faults,
logs and TCP between nodes are exactly as before.  Other testbeds start nodes
through ssh with a fresh interpreter, as a real device does.

Protocol: one JSON request per connection on a Unix socket,
``{"module", "args", "cwd", "env"}`` plus either ``"log"`` (a detached
service writing there; answered by ``{"pid"}``) or ``"attach": true`` with the
caller's stdin/stdout/stderr passed along (SCM_RIGHTS): a waiter process then
answers ``{"pid"}`` and, when the service ends, ``{"exit"}`` (negative: the
signal that killed it), so the caller can stand in for it as a child process
(``python -m local.spawner --attach``; the user node runs so).
Errors are answered ``{"error"}``.  The module must define ``main(argv)``; it
may define ``prewarm(argv)``, run in the spawner before forking, to import
what ``main`` will need (for a node: the model family's transformers code).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PRELOAD = ("torch", "transformers", "payload.node")


def code_fingerprint(pythonpath: Path) -> str:
    """Digest of the source a spawner imports from ``pythonpath``.

    A spawner keeps the code it imported: after an edit to the payload the
    testbed must start a new one, or nodes would run the old code.
    """
    digest = hashlib.sha256()
    for path in sorted([*pythonpath.glob("payload/*.py"), pythonpath / "local" / "spawner.py"]):
        if path.exists():
            digest.update(path.relative_to(pythonpath).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ModuleCall:
    """``env K=V ... python -m module args``: the shape of a payload service command line."""

    env: dict[str, str]
    module: str
    args: list[str]

    @classmethod
    def parse(cls, argv: list[str]) -> "ModuleCall | None":
        """The call ``argv`` makes, if it runs a module with this interpreter (else None)."""
        env: dict[str, str] = {}
        rest = argv[1:] if argv[:1] == ["env"] else None
        if rest is None:
            return None
        while rest and "=" in rest[0] and not rest[0].startswith("-"):
            key, value = rest[0].split("=", 1)
            env[key] = value
            rest = rest[1:]
        if len(rest) < 3 or rest[0] != sys.executable or rest[1] != "-m":
            return None
        return cls(env, rest[2], rest[3:])


def _appears(path: Path, proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for ``proc`` to create ``path``; False (with ``proc`` killed and reaped) if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return False
        time.sleep(0.01)
    return True


class SpawnerClient:
    """Starts the spawner on first use and asks it to fork services."""

    def __init__(self, socket_path: Path, log_path: Path):
        self.socket_path = socket_path
        self.log_path = log_path

    def start(self, pythonpath: str, timeout_s: float = 120.0) -> int:
        """Start the spawner for source tree ``pythonpath`` (in the socket's directory); return its pid once it listens."""
        self.socket_path.unlink(missing_ok=True)
        # numpy's OpenBLAS would start a worker thread at import: the spawner stays single-threaded, so a fork
        # never copies a lock some other thread held.
        # HF_HUB_OFFLINE is read when huggingface_hub is imported, i.e. here, not in the forked node.
        env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", "OPENBLAS_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1"}
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", "local.spawner", "--socket",
                                     str(self.socket_path)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                    cwd=self.socket_path.parent)
        if not _appears(self.socket_path, proc, timeout_s):
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"local node spawner did not start; its output:\n{tail}")
        return proc.pid

    def popen(self, call: ModuleCall, cwd: str, timeout_s: float = 300.0) -> tuple[subprocess.Popen, int]:
        """Run ``call`` attached: a light stand-in child whose stdout, exit status and signals are the service's.

        Returns the stand-in (a ``Popen`` with text stdout) and the service's own pid (for faults).
        """
        pid_file = Path(cwd) / ".attached.pid"
        pid_file.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "local.spawner", "--socket", str(self.socket_path),
                                 "--attach", "--pid-file", str(pid_file), call.module, *call.args],
                                cwd=cwd, stdout=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **call.env})
        if not _appears(pid_file, proc, timeout_s):
            raise RuntimeError(f"local node spawner could not start {call.module} (exit {proc.returncode})")
        return proc, int(pid_file.read_text())

    def spawn(self, call: ModuleCall, cwd: str, log: str) -> int:
        """Fork ``call`` as a detached service in ``cwd`` writing to ``log``; return its pid."""
        request = {"module": call.module, "args": call.args, "cwd": cwd, "log": log,
                   "env": {**os.environ, "PYTHONUNBUFFERED": "1", **call.env}}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(300)  # the first node of a model family waits for its imports
            sock.connect(str(self.socket_path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(sock.makefile("rb").readline() or b"{}")
        if "pid" not in reply:
            raise RuntimeError(f"local node spawner could not start {call.module}: {reply.get('error', 'no reply')}")
        return int(reply["pid"])


def _become(request: dict, stdio: tuple[int, int, int], inherited: list[socket.socket], ready: int) -> None:
    """In a forked child: become the service described by ``request``; never returns.

    ``ready`` is written once the child is its own session in its work
    directory on its own stdio: only then is its pid handed out, so a signal to
    its process group can never miss it.
    """
    code = 1
    try:
        for sock in inherited:
            sock.close()
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(request["cwd"])
        for target, fd in enumerate(stdio):
            os.dup2(fd, target)
        for fd in set(stdio) - {0, 1, 2}:
            os.close(fd)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["module"], *request["args"]]
        os.write(ready, b"1")
        os.close(ready)
        result = importlib.import_module(request["module"]).main(request["args"])
        code = int(result or 0)
    except SystemExit as exc:  # sys.exit(None) is success; sys.exit("message") prints it and fails, as Python does
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
    except BaseException:  # the service died: its traceback goes to its own output, like a fresh process's
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _fork_service(request: dict, stdio: tuple[int, int, int], inherited: list[socket.socket]) -> int:
    """Fork the service and return its pid once it is set up (see ``_become``); raise if it died first."""
    ready_r, ready_w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            _become(request, stdio, inherited, ready_w)
        os.close(ready_w)
        ready_w = -1
        if os.read(ready_r, 1) != b"1":
            raise RuntimeError(f"{request['module']} died while being set up (see its output)")
        return pid
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request line and the file descriptors sent with it."""
    data, fds, _flags, _address = socket.recv_fds(conn, 1 << 20, 3)
    try:
        while not data.endswith(b"\n"):
            more = conn.recv(1 << 20)
            if not more:
                raise ValueError("truncated request")
            data += more
        return json.loads(data), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall(json.dumps(message).encode() + b"\n")


def _attached(request: dict, fds: list[int], listener: socket.socket, conn: socket.socket) -> None:
    """In a forked waiter: fork the service on the caller's stdio, report its pid, then its exit; never returns.

    The waiter leaves the spawner's process group, so restarting the spawner
    does not cut a running service off from its stand-in.
    """
    code = 1
    try:
        listener.close()
        os.setpgid(0, 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            service = _fork_service(request, (fds[0], fds[1], fds[2]), [conn])
        except RuntimeError as exc:
            _send(conn, {"error": str(exc)})
            return
        for fd in fds:
            os.close(fd)
        _send(conn, {"pid": service})
        _, status = os.waitpid(service, 0)
        _send(conn, {"exit": os.waitstatus_to_exitcode(status)})
        code = 0
    finally:
        os._exit(code)


def _handle(conn: socket.socket, listener: socket.socket) -> None:
    request, fds = _receive(conn)
    try:
        module = importlib.import_module(request["module"])
        prewarm = getattr(module, "prewarm", None)
        if prewarm is not None:
            home = os.getcwd()
            os.chdir(request["cwd"])  # the service's arguments name files relative to its work directory
            try:
                prewarm(request["args"])
            finally:
                os.chdir(home)
        sys.stdout.flush()
        sys.stderr.flush()
        if request.get("attach"):
            if len(fds) != 3:
                raise ValueError(f"an attached service needs stdin, stdout and stderr; got {len(fds)} descriptors")
            if os.fork() == 0:
                _attached(request, fds, listener, conn)
            return
        out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            try:
                pid = _fork_service(request, (null, out, out), [listener, conn])
            finally:
                os.close(null)
        finally:
            os.close(out)
        try:
            _send(conn, {"pid": pid})
        except OSError:  # the client is gone: nobody would know to stop this service
            os.killpg(pid, signal.SIGKILL)
            raise
    finally:
        for fd in fds:
            os.close(fd)


def attach(socket_path: Path, pid_file: Path, module: str, args: list[str]) -> int:
    """Stand in for ``module`` run by the spawner on this process's stdio; exit as it exits."""
    request = {"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ), "attach": True}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(socket_path))
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
        replies = sock.makefile("rb")
        started = json.loads(replies.readline() or b"{}")
        if "pid" not in started:
            print(f"[spawner] could not start {module}: {started.get('error', 'no reply')}", file=sys.stderr)
            return 1
        service = int(started["pid"])
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # terminate() reaches the service itself
            signal.signal(sig, lambda received, _frame: _signal_group(service, received))
        tmp = pid_file.with_suffix(".tmp")
        tmp.write_text(str(service))
        os.replace(tmp, pid_file)
        code = int(json.loads(replies.readline() or b'{"exit": 1}')["exit"])
    if code < 0:  # killed by a signal: so is the stand-in, and its parent sees the same status
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot (and need not) be reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # already gone: its exit status is on its way
        pass


def serve(socket_path: Path) -> None:
    """Accept spawn requests until killed; children are reaped by the kernel (SIGCHLD ignored)."""
    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = socket_path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    listener.bind(str(tmp))
    listener.listen(64)
    os.replace(tmp, socket_path)  # clients wait for the final name: it appears only once we listen
    print(f"[spawner] ready on {socket_path} (pid {os.getpid()})", flush=True)
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                _handle(conn, listener)
            except (Exception, SystemExit) as exc:  # one bad request (even argparse's exit) must not stop the spawner
                try:
                    _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
                except OSError:
                    pass  # the client left


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="JARVIS local testbed: fork node services from one warm process")
    parser.add_argument("--socket", required=True, type=Path, help="the spawner's Unix socket")
    parser.add_argument("--attach", action="store_true",
                        help="ask the spawner to run MODULE ARGS on this process's stdio and exit as it exits")
    parser.add_argument("--pid-file", type=Path, help="with --attach: where to write the service's pid")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="with --attach: MODULE [ARGS...]")
    args = parser.parse_args(argv)
    if args.attach:
        if not args.command or args.pid_file is None:
            parser.error("--attach needs --pid-file and a MODULE")
        return attach(args.socket, args.pid_file, args.command[0], args.command[1:])
    serve(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
