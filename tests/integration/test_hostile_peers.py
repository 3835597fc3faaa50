"""A hostile peer on the node network, against real node processes on 127.0.0.1.

Each test reproduces a finding of the adversarial review (issue: stalled peers, hostile networks and bad
input): replayed frames, forged-looking floods, exhaustion without the key, a stalled successor, a full disk.
Every test ends by checking that the node still serves a valid session.  Frames are made with the
deployment's key, as an attacker who captured them would replay them byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from experiment.replay import Monolith, check_run
from experiment.run import Fault, run_job
from payload.config import NodeConfig, Timing
from payload.events import read_events
from payload.frames import Decoder, Frame, FrameType, Hop, HopFlag, LocalFrameError, WireDtype, encode
from payload.routing import Placement
from tests.integration.conftest import deploy_even, local_testbed, read_tokens, summary

PROMPT = {"prompts": ["the cat sat on the"], "max_new_tokens": 4}


def events(testbed, index: int) -> list[dict]:
    host = next(h for h in testbed.hosts() if h.index == index)
    return read_events(Path(host.workdir) / "events.jsonl")


def address(deployment, index: int) -> tuple[str, int]:
    host = next(h for h in deployment.hosts if h["index"] == index)
    return host["address"], host["extra"]["port"]


class Attacker:
    """Frames signed with the deployment key, numbered like a sender's (boot, seq), sent over raw TCP."""

    def __init__(self, deployment, *, src: int = 0):
        self.key = bytes.fromhex(deployment.key_hex)
        self.src = src
        self.boot = 1  # an old boot: a real sender started later orders after it
        self.seq = 0

    def frame(self, frame: Frame) -> bytes:
        self.seq += 1
        return encode(frame, self.key, boot=self.boot, seq=self.seq)

    def prefill(self, session: uuid.UUID, positions: int = 3, hidden: int = 64) -> bytes:
        return self.frame(Frame(FrameType.DATA, session, step=0, epoch=1, pos_start=0, n_pos=positions, hidden=hidden,
                                dtype=WireDtype.FLOAT32, route=(Hop(1, 0, 3), Hop(2, 3, 6)), src=self.src, dst=1,
                                payload=bytes(positions * hidden * 4)))

    @staticmethod
    def send(addr: tuple[str, int], *payloads: bytes, wait: float = 0.3) -> bytes:
        """Send ``payloads`` over one connection until the node closes it; return what came back within ``wait``."""
        with socket.create_connection(addr, timeout=5) as sock:
            try:
                for data in payloads:
                    sock.sendall(data)
            except ConnectionError:
                return b""
            sock.settimeout(wait)
            replies = b""
            try:
                while chunk := sock.recv(1 << 16):
                    replies += chunk
            except (socket.timeout, ConnectionError):
                pass
            return replies


def replies(data: bytes, key: bytes) -> list[Frame]:
    decoder = Decoder(key)
    decoder.feed(data)
    out = []
    while isinstance(frame := decoder.next_frame(), Frame):
        out.append(frame)
    return out


@pytest.fixture
def tiny(tiny_prepared):
    return tiny_prepared("llama")


def serves_a_session(testbed, deployment, tmp_path: Path, name: str = "after") -> dict:
    run = run_job(testbed, deployment, PROMPT, [], tmp_path / name, stream=lambda line: None)
    assert summary(run)["complete"] and len(read_tokens(run)) == PROMPT["max_new_tokens"]
    outs = [e for e in read_events(run / "nodes" / "user" / "events.jsonl") if e["ev"] == "node_out"]
    assert outs == [], f"a healthy node was declared dead: {outs}"
    return summary(run)


class TestReplay:
    def test_a_replayed_frame_is_refused_and_an_ended_session_is_never_recreated(self, tiny, tmp_path):
        with local_testbed(2) as testbed:
            deployment = deploy_even(testbed, tiny, 2)
            attacker, node1 = Attacker(deployment), address(deployment, 1)
            session = uuid.uuid4()
            captured = attacker.prefill(session)
            attacker.send(node1, captured)
            attacker.send(node1, captured)  # the same bytes again
            end = attacker.frame(Frame(FrameType.END, session, src=0, dst=1))
            attacker.send(node1, end)
            attacker.send(node1, captured)  # replayed after END
            answer = attacker.send(node1, attacker.prefill(session))  # a fresh frame for the ended session
            log = events(testbed, 1)
            computed = [e for e in log if e["ev"] == "compute" and e["session"] == str(session)]
            assert len(computed) == 1, "only the first copy may be computed"
            rejects = [e["reason"] for e in log if e["ev"] == "reject"]
            assert any("replayed DATA frame" in r for r in rejects), rejects
            (error,) = replies(answer, attacker.key)
            assert error.type == FrameType.ERROR and b"has ended on this node" in error.payload
            serves_a_session(testbed, deployment, tmp_path)

    def test_a_replayed_step_does_not_roll_back_a_cache(self, tiny, tmp_path):
        with local_testbed(2) as testbed:
            deployment = deploy_even(testbed, tiny, 2)
            attacker, node1 = Attacker(deployment), address(deployment, 1)
            session = uuid.uuid4()
            step = attacker.frame(Frame(FrameType.DATA, session, step=1, epoch=2, pos_start=3, n_pos=1, hidden=64,
                                        dtype=WireDtype.FLOAT32, route=(Hop(1, 0, 3), Hop(2, 3, 6)), src=0, dst=1,
                                        payload=bytes(256)))
            attacker.send(node1, attacker.prefill(session), step)
            attacker.send(node1, step, step, step)
            log = [e for e in events(testbed, 1) if e.get("session") == str(session)]
            assert [e["ev"] for e in log if e["ev"] in ("compute", "rollback")] == ["compute", "compute"]
            serves_a_session(testbed, deployment, tmp_path)


class TestUserNodeReplay:
    """The user node's failure knowledge over real TCP: replayed reports and heartbeats change nothing."""

    def test_replayed_failure_reports_and_heartbeats_are_refused(self, tiny, tmp_path):
        from payload.config import UserConfig
        from payload.user_node import UserNode

        key = os.urandom(32)
        config = NodeConfig(node=0, listen=("127.0.0.1", 0), peers={1: ("127.0.0.1", 9), 2: ("127.0.0.1", 9)},
                            model_dir=str(tiny), ranges=[], key_hex=key.hex(), log_path=str(tmp_path / "user.jsonl"),
                            timing=Timing(rejoin_after_s=0.0, heartbeat_floor_ms=60_000.0))

        def report(seq: int) -> bytes:
            body = json.dumps({"failed": 2, "kind": "silent", "reason": "no ack", "reporter": 1}).encode()
            return encode(Frame(FrameType.FAIL, uuid.UUID(int=0), src=1, dst=0, payload=body), key, boot=5, seq=seq)

        def heartbeat(seq: int) -> bytes:
            return encode(Frame(FrameType.HEARTBEAT, uuid.UUID(int=0), src=2, dst=0, payload=b"{}"), key, boot=7,
                          seq=seq)

        async def scenario() -> list[bool]:
            user = UserNode(UserConfig(config, Placement(6, {1: (0, 3), 2: (3, 6)})))
            server = await user.serve()
            port = server.sockets[0].getsockname()[1]
            seen = []

            async def send(data: bytes) -> None:  # one connection each: a replay closes the one it came on
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(data)
                await writer.drain()
                await asyncio.sleep(0.1)
                seen.append(2 in user.liveness.dead)
                writer.close()

            failure, alive = report(1), heartbeat(1)
            await send(alive)          # node 2 is heard from
            await send(failure)        # reported failed: out
            await send(heartbeat(2))   # heard again: rejoins
            await send(failure)        # the report replayed: must not mark it out again
            await send(report(2))      # a fresh report: out
            await send(heartbeat(2))   # the heartbeat replayed: must not bring it back
            server.close()
            return seen

        assert asyncio.run(scenario()) == [False, True, False, False, True, True]
        rejects = [e["reason"] for e in read_events(tmp_path / "user.jsonl") if e["ev"] == "reject"]
        assert any("replayed FAIL" in r for r in rejects) and any("replayed HEARTBEAT" in r for r in rejects)


class TestSealing:
    def test_a_sealed_chain_gives_the_plain_chains_tokens_and_refuses_frames_in_clear(self, tiny, tmp_path):
        """`--encrypt`: every payload sealed end to end on real nodes; a frame signed with the key but not sealed
        (a peer of a plain deployment, or a downgrade) is refused, and the node serves on."""
        with local_testbed(2) as testbed:
            plain = run_job(testbed, deploy_even(testbed, tiny, 2), PROMPT, [], tmp_path / "plain",
                            stream=lambda line: None)
            deployment = deploy_even(testbed, tiny, 2, encrypt=True)
            attacker, node1 = Attacker(deployment), address(deployment, 1)
            answer = attacker.send(node1, attacker.prefill(uuid.uuid4()))
            assert answer == b"", "a payload in clear must close the connection, not be answered"
            rejects = [e["reason"] for e in events(testbed, 1) if e["ev"] == "reject"]
            assert any("payload in clear, but this deployment seals every payload" in r for r in rejects), rejects
            sealed = serves_a_session(testbed, deployment, tmp_path, "sealed")
        assert sealed["complete"]
        assert read_tokens(tmp_path / "sealed")["token_id"].tolist() == read_tokens(plain)["token_id"].tolist()


class TestKeys:
    def test_a_short_or_empty_key_signs_nothing(self):
        frame = Frame(FrameType.END, uuid.uuid4())
        for key in (b"", b"k" * 31):
            with pytest.raises(LocalFrameError, match="at least 32 bytes"):
                encode(frame, key)
            with pytest.raises(LocalFrameError, match="at least 32 bytes"):
                Decoder(key)
        with pytest.raises(ValueError, match="at least 32 bytes"):
            NodeConfig.from_dict({"node": 1, "listen": ["127.0.0.1", 1], "peers": {}, "model_dir": "m",
                                  "key_hex": "", "log_path": "l"})

    def test_every_file_holding_the_key_is_private_and_nodes_listen_on_their_own_address(self, tiny):
        with local_testbed(2) as testbed:
            deployment = deploy_even(testbed, tiny, 2)
            state = testbed.state_dir
            holders = [state / "deployment.json"] if (state / "deployment.json").exists() else []
            holders += list(state.glob("*.node.json"))
            for host in testbed.hosts():
                holders.append(Path(host.workdir) / ("user.json" if host.index == 0 else "node.json"))
            assert len(holders) >= 6
            for path in holders:
                assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
            node = json.loads((Path(testbed.hosts()[1].workdir) / "node.json").read_text())
            assert node["listen"][0] == "127.0.0.1" != "0.0.0.0"
            assert deployment.key_hex not in (state / "manifest.json").read_text()


class TestExhaustion:
    def test_connections_without_the_key_are_capped_then_closed(self, tiny, tmp_path):
        timing = Timing(first_frame_timeout_s=1.0, log_interval_s=0.5)
        with local_testbed(2) as testbed:
            deployment = deploy_even(testbed, tiny, 2, timing=timing)
            node1 = address(deployment, 1)
            pid = testbed.pid(testbed.hosts()[1])
            sockets = []
            for _ in range(300):
                sockets.append(socket.create_connection(node1, timeout=5))
            time.sleep(0.3)
            open_fds = len(os.listdir(f"/proc/{pid}/fd"))
            assert open_fds < 4 * 16 + 40, f"the node holds {open_fds} descriptors for 300 idle connections"
            time.sleep(timing.first_frame_timeout_s + 0.5)
            for sock in sockets:  # every one was closed by the node: by the cap at once, or by the timeout
                sock.settimeout(2)
                assert sock.recv(1) == b""
                sock.close()
            log = events(testbed, 1)
            rejects = [e for e in log if e["ev"] == "reject"]
            assert len(rejects) <= 20, [e["reason"] for e in rejects]  # a few lines per interval, not one per connection
            assert sum(e.get("suppressed", 0) for e in rejects) + len(rejects) >= 250
            serves_a_session(testbed, deployment, tmp_path)

    def test_a_body_without_the_key_is_refused_at_its_header_not_buffered(self, tiny_prepared, tmp_path):
        """Lengths within the cap (a wide model's is 33 MB) but no key: refused after ~120 bytes, so four
        connections sending 8 MB each cost the node nothing; a length beyond the cap is refused at once."""
        with local_testbed(2) as testbed:
            deployment = deploy_even(testbed, tiny_prepared("wide"), 2)
            node1 = address(deployment, 1)
            pid = testbed.pid(testbed.hosts()[1])
            before = rss(pid)
            for _ in range(4):
                with socket.create_connection(node1, timeout=5) as sock:
                    try:
                        sock.sendall((30 << 20).to_bytes(4, "big") + os.urandom(8 << 20))
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the node hung up after the header, as it should
            Attacker.send(node1, (2 << 30).to_bytes(4, "big") + os.urandom(1024))
            time.sleep(0.3)
            assert rss(pid) - before < 16 << 20, "the node must not buffer a body whose header is not authentic"
            rejects = [e["reason"] for e in events(testbed, 1) if e["ev"] == "reject"]
            assert any("authentication failed (wrong key or corrupted header)" in r for r in rejects), rejects
            assert any("exceeds the" in r and "-byte cap" in r for r in rejects), rejects
            serves_a_session(testbed, deployment, tmp_path)

    def test_sessions_are_bounded_and_the_least_recently_used_is_evicted(self, tiny, tmp_path):
        with local_testbed(2) as testbed:
            deployment = deploy_even(testbed, tiny, 2, timing=Timing(max_sessions=8))
            attacker, node1 = Attacker(deployment), address(deployment, 1)
            answers = []
            for _ in range(40):  # one after another: each earlier session is idle when the next arrives
                answers += replies(attacker.send(node1, attacker.prefill(uuid.uuid4()), wait=0.1), attacker.key)
            assert [f.type for f in answers] == [FrameType.ACK] * 40
            evicted = [e for e in events(testbed, 1) if e["ev"] == "session_end" and "evicted" in e.get("reason", "")]
            assert len(evicted) == 32, "the node holds at most max_sessions: each new one evicts the least recent"
            # Sessions all busy at once are refused rather than evicted mid-step.
            burst = replies(attacker.send(node1, *(attacker.prefill(uuid.uuid4()) for _ in range(40)), wait=2.0),
                            attacker.key)
            assert len(burst) == 40 and all(b"all busy (max_sessions)" in f.payload
                                            for f in burst if f.type == FrameType.ERROR)
            serves_a_session(testbed, deployment, tmp_path)

    def test_a_replay_flood_adds_lines_not_megabytes_to_the_log(self, tiny, tmp_path):
        with local_testbed(2) as testbed:
            deployment = deploy_even(testbed, tiny, 2)
            attacker, node1 = Attacker(deployment), address(deployment, 1)
            captured = attacker.prefill(uuid.uuid4())
            log = Path(testbed.hosts()[1].workdir) / "events.jsonl"
            attacker.send(node1, captured)
            size = log.stat().st_size
            for _ in range(50):  # a replay closes its connection: the flood reconnects, 100 replays offered a time
                attacker.send(node1, *([captured] * 100), wait=0.05)
            grown = log.stat().st_size - size
            assert grown < 2000, f"5000 replays grew the log by {grown} bytes"
            serves_a_session(testbed, deployment, tmp_path)


def test_a_frame_asking_for_a_bridge_the_node_does_not_hold_is_refused(tiny, tmp_path):
    """A route that has node 1 bridge layers 3-5 (node 2's) to a node deployed without bridges: refused with
    the reason before anything is computed, and the node serves on."""
    with local_testbed(2) as testbed:
        deployment = deploy_even(testbed, tiny, 2)
        attacker, session = Attacker(deployment), uuid.uuid4()
        frame = Frame(FrameType.DATA, session, step=0, epoch=1, n_pos=3, hidden=64, dtype=WireDtype.FLOAT32,
                      route=(Hop(1, 0, 3, HopFlag.BRIDGE),), src=0, dst=1, payload=bytes(3 * 64 * 4))
        (error,) = replies(attacker.send(address(deployment, 1), attacker.frame(frame)), attacker.key)
        assert error.type == FrameType.ERROR and b"no bridges here cover layers [3, 6)" in error.payload
        assert not [e for e in events(testbed, 1) if e["ev"] == "compute" and e["session"] == str(session)]
        serves_a_session(testbed, deployment, tmp_path)


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_full_disk_is_the_nodes_reported_failure_not_a_silent_loop(tiny, tmp_path):
    """A node whose event log hits a file-size limit (as a full disk would stop it) tells the user node why and
    stops; what it logged before stays.  The user node here is a socket that decodes what arrives."""
    from local.testbed import free_ports

    key = os.urandom(32)
    user = socket.socket()
    user.bind(("127.0.0.1", 0))
    user.listen()
    (port,) = free_ports(1)
    config = NodeConfig(node=1, listen=("127.0.0.1", port), peers={0: user.getsockname()}, model_dir=str(tiny),
                        ranges=[(0, 6)], key_hex=key.hex(), log_path=str(tmp_path / "events.jsonl"))
    (tmp_path / "node.json").write_text(config.to_json())
    limit = 4096  # bytes of log: start and ready fit, a few dozen refusals do not

    node = subprocess.Popen([sys.executable, "-m", "payload.node", "--config", str(tmp_path / "node.json")],
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        user.settimeout(120)
        conn, _ = user.accept()  # the node is up: its heartbeats arrive
        conn.settimeout(0.2)
        decoder, failure = Decoder(key), None
        for sender in range(2, 200):  # each refusal from another sender is a line of its log
            wrong = Frame(FrameType.DATA, uuid.uuid4(), step=0, epoch=1, n_pos=1, hidden=3, dtype=WireDtype.FLOAT32,
                          route=(Hop(1, 0, 6),), src=sender, dst=1, payload=bytes(12))
            try:
                Attacker.send(("127.0.0.1", port), encode(wrong, key, boot=1, seq=1), wait=0.02)
                decoder.feed(conn.recv(1 << 16))
            except (socket.timeout, OSError):
                pass
            frames = []
            while isinstance(frame := decoder.next_frame(), Frame):
                frames.append(frame)
            reports = [json.loads(f.payload) for f in frames if f.type == FrameType.FAIL]
            if reports:
                failure = reports[0]
                break
        assert failure is not None, "the node never reported its failure"
        assert failure["failed"] == 1 and "cannot write its event log" in failure["reason"]
        assert node.wait(timeout=30) == 3
        assert "cannot write its event log" in node.stderr.read()
    finally:
        node.kill()
        user.close()
    logged = read_events(tmp_path / "events.jsonl")
    assert [e["ev"] for e in logged][:2] == ["start", "ready"], "what was logged before the limit stays"


def test_a_successor_that_stalls_mid_frame_is_detected_within_the_deadline(tiny_prepared, tmp_path):
    """Node 2 stops while node 1 writes it a prefill frame larger than the socket buffers hold: the write
    itself stalls.  Node 2 must be found silent within the deadline (it had waited forever), the run
    completes around it, and the oracle holds."""
    wide = tiny_prepared("wide")
    timing = Timing(slowest_link_mbps=200.0)  # loopback: the deadline's allowance for a 6 MB frame is 0.24 s
    prompt = " ".join(["the cat sat on the mat and ran far"] * 80)  # 720 positions x 2048 x fp32 = 5.9 MB
    with local_testbed(3) as testbed:
        deployment = deploy_even(testbed, wide, 3, wire_dtype="float32", timing=timing)
        started = time.monotonic()
        run = run_job(testbed, deployment, {"prompts": [prompt], "max_new_tokens": 3},
                      [Fault("pause", (2,), at_seconds=0.0, duration=20.0)], tmp_path / "run",
                      stream=lambda line: None)
        elapsed = time.monotonic() - started
    assert summary(run)["complete"], summary(run)
    tokens = read_tokens(run)
    assert str(tokens["nodes_out"].iloc[0]) == "2"
    user = read_events(run / "nodes" / "user" / "events.jsonl")
    (out,) = [e for e in user if e["ev"] == "node_out"]
    assert out["peer"] == 2 and out["kind"] == "silent"
    node1 = read_events(run / "nodes" / "node1" / "events.jsonl")
    reports = [e for e in node1 if e["ev"] == "peer_failed" and e["peer"] == 2]
    assert reports and "was not taken within" in reports[0]["reason"], "node 1's write itself must time out"
    assert elapsed < 20.0, "the run must not wait for the paused node to be continued"
    for result in check_run(run, wide, model=Monolith(wide)):
        assert result.ok, (result.first_mismatch, result.expected, result.replayed)
