"""Deploy a prepared model onto a testbed: ship slices, write configs, start node services.

Each layer node receives only ``config.json``, ``manifest.json`` and the layer
files it holds (its slice and its replicas); the user node receives the
tokenizer, config and head.  Files already on the host with the right sha256
are not sent again, so a re-deploy ships only what changed.  Every host is
handled in parallel, and the per-host outcome is reported (like Fabric's
GroupResult): one failed host fails the deploy with every host's error listed.
"""

from __future__ import annotations

import json
import secrets
import shlex
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from payload import eventloop
from payload.batching import check_batch_decode
from payload.stragglers import OnSlow
from payload.config import NodeConfig, Timing, UserConfig
from payload.bridges import FILE as BRIDGES_FILE
from payload.prepare import MANIFEST, load_manifest, sha256_file
from payload.routing import Placement, Policy
from testbed.fanout import on_each
from testbed.interface import HostInfo, Testbed, TestbedError
from testbed.shipping import service_argv
from testbed.state import write_private
from experiment.wire import prefill_chunk, wire_dtypes

NODE_PORT = 7100


@dataclass
class Deployment:
    """What was deployed where; saved as JSON so later tasks (generate, collect) can find it."""

    testbed: str
    model: str
    prepared: str
    placement: dict
    policy: str
    hosts: list[dict]
    bytes_shipped: dict[str, int] = field(default_factory=dict)
    files_skipped: dict[str, int] = field(default_factory=dict)
    key_hex: str = ""
    wire_dtype: str = "bfloat16"  # as asked: a dtype, or auto (experiment/wire.py)
    wire_dtypes: dict[str, str] = field(default_factory=dict)  # node index -> the dtype its output travels in
    compute_dtype: str = "float32"
    timing: dict = field(default_factory=dict)
    encrypt: bool = False
    bridges: str = ""  # the bridges file every host holds (on_failure: bridge), here on the control machine
    bridges_sha256: str = ""
    on_slow: str = "wait"  # what the user node does about a straggler (payload/stragglers.py)
    prefill_chunk: int = 0  # positions per frame of a chunked prefill, as deploy resolved it (0: one frame)
    event_loop: str = "auto"  # what every node runs on: auto (uvloop where installed) | asyncio | uvloop
    batch_decode: int = 1  # most decode steps of different sessions a node computes as one batch (1: none)

    def save(self, path: Path) -> None:
        """Write it readable by this user only: it holds the deployment key."""
        write_private(path, json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> "Deployment":
        if not path.exists():
            raise TestbedError(f"nothing is deployed ({path} missing): run `fab deploy` first")
        return cls(**json.loads(path.read_text()))

    def placement_obj(self) -> Placement:
        return Placement.from_dict(self.placement)

    def public(self) -> dict:
        """Everything but the key: what a run directory may keep."""
        return {k: v for k, v in asdict(self).items() if k != "key_hex"}


def files_for(manifest: dict, placement: Placement, index: int) -> list[str]:
    """Files host ``index`` needs: layer nodes their layers only, the user node everything but layers."""
    if index == 0:
        return [f for f in manifest["files"] if not f.startswith("layers/")] + [MANIFEST]
    wanted = ["config.json", MANIFEST]
    for first, end in placement.ranges_of(index):
        wanted += [manifest["layer_files"][i] for i in range(first, end)]
    return wanted


def node_port(host: HostInfo) -> int:
    return int(host.extra.get("port", NODE_PORT))


def _remote_sums(shell, files: list[str]) -> dict[str, str]:
    quoted = " ".join(shlex.quote(f"model/{f}") for f in files)
    result = shell.run(f"mkdir -p model/layers && sha256sum {quoted} 2>/dev/null || true", timeout=300, check=False)
    sums = {}
    for line in result.stdout.splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            sums[parts[1].strip().removeprefix("model/")] = parts[0]
    return sums


def ship_model(testbed: Testbed, host: HostInfo, prepared: Path, files: list[str],
               extras: dict[str, tuple[Path, str]] | None = None) -> tuple[int, int]:
    """Send ``files`` of the prepared model (and ``extras``: name in ``model/`` -> (local file, its sha256), such
    as the bridges) that differ on the host, verify checksums there; return (bytes sent, files skipped)."""
    manifest = load_manifest(prepared)
    extras = extras or {}
    sources = {rel: prepared / rel for rel in files} | {rel: path for rel, (path, _) in extras.items()}
    expected = {rel: manifest["files"][rel]["sha256"] for rel in files if rel != MANIFEST}
    expected |= {rel: digest for rel, (_, digest) in extras.items()}
    shell = testbed.shell(host)
    have = _remote_sums(shell, list(sources))
    sent = skipped = 0
    for rel, path in sources.items():
        if rel in expected and have.get(rel) == expected[rel]:
            skipped += 1
            continue
        shell.put(path, f"model/{rel}")
        sent += path.stat().st_size
    after = _remote_sums(shell, list(expected))
    bad = [f for f in expected if after.get(f) != expected[f]]
    if bad:
        raise TestbedError(f"{host.name}: checksum mismatch after transfer for {bad}")
    return sent, skipped


def key_path(host: HostInfo) -> str | None:
    """Where ``host`` keeps the deployment key, when its work directory is copied off it (Colosseum's /logs
    goes to the team NAS): a file in its ``secrets_dir``.  None: the key travels in the (private) config."""
    secrets_dir = host.extra.get("secrets_dir")
    return f"{secrets_dir}/{host.name}.key" if secrets_dir else None


def node_config(host: HostInfo, hosts: list[HostInfo], placement: Placement, *, key_hex: str,
                wire_dtypes: dict[int, str], compute_dtype: str, timing: Timing, encrypt: bool = False,
                bridges: bool = False, event_loop: str = eventloop.AUTO, batch_decode: int = 1) -> NodeConfig:
    """A node's config; it listens on the address the testbed assigned it (``extra["listen"]`` overrides),
    never on every interface, and names its key file instead of holding the key where one is set."""
    ranges = [] if host.index == 0 else placement.ranges_of(host.index)
    key_file = key_path(host)
    return NodeConfig(
        node=host.index,
        listen=(host.extra.get("listen", host.address), node_port(host)),
        peers={h.index: (h.address, node_port(h)) for h in hosts},
        model_dir=f"{host.workdir}/model",
        ranges=ranges,
        key_hex="" if key_file else key_hex,
        key_file=key_file or "",
        log_path=f"{host.workdir}/events.jsonl",
        compute_dtype=compute_dtype,
        wire_dtype=wire_dtypes[host.index],
        wire_dtypes_in=tuple(sorted(set(wire_dtypes.values()) - {wire_dtypes[host.index]})),
        timing=timing,
        encrypt=encrypt,
        bridges_file=f"{host.workdir}/model/{BRIDGES_FILE}" if bridges else "",
        event_loop=event_loop,
        batch_decode=batch_decode,
    )


def wait_ready(testbed: Testbed, host: HostInfo, timeout_s: float) -> None:
    shell = testbed.shell(host)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = shell.run("grep -c '\"ev\":\"ready\"' events.jsonl 2>/dev/null || true", check=False)
        if result.stdout.strip() not in ("", "0"):
            return
        time.sleep(0.2)
    tail = shell.run("tail -n 20 service.out 2>/dev/null || true", check=False).stdout
    raise TestbedError(f"{host.name}: node service not ready after {timeout_s:.0f}s; last output:\n{tail}")


def stop_started(testbed: Testbed, started: dict[str, HostInfo]) -> None:
    """A failed deploy leaves nothing running: stop the services it did start (best effort per host)."""
    for host in started.values():
        try:
            testbed.stop_service(host)
        except Exception as exc:  # the host may be the unreachable one; say so and go on
            print(f"[deploy] could not stop the service on {host.name}: {exc}")


def deploy(testbed: Testbed, prepared: Path, placement: Placement, *, model: str, policy: Policy = Policy.SKIP,
           wire_dtype: str = "bfloat16", compute_dtype: str = "float32", timing: Timing = Timing(),
           encrypt: bool = False, bridges: Path | None = None, ready_timeout_s: float = 600.0,
           on_slow: OnSlow = OnSlow.WAIT, prefill: int | str = 0, event_loop: str = eventloop.AUTO,
           batch_decode: int = 1, progress=print) -> Deployment:
    """Ship, configure and start every node; return the Deployment (also saved by the caller).

    ``bridges`` (a bridge file of this placement, :func:`quality.bridges.bridge_file`) goes to every host:
    any node may be the one before a gap.  A policy that bridges needs it.  ``prefill`` is positions per chunk
    of a pipelined prefill, or ``auto`` (from the links: experiment/wire.py).  ``event_loop`` is what the nodes
    run on (payload/eventloop.py); a host without uvloop falls back to asyncio's under ``auto``.
    ``batch_decode`` is the most decode steps of different sessions a node (and the user node's head) computes
    as one batch when they wait at once (payload/batching.py; 1: one at a time, bit for bit ``generate``)."""
    hosts = testbed.hosts()
    if len(hosts) - 1 != len(placement.nodes):
        raise TestbedError(f"placement has {len(placement.nodes)} layer nodes but the testbed has {len(hosts) - 1}")
    if policy.bridges and bridges is None:
        raise TestbedError(f"on_failure: {policy.value} needs the placement's bridges (fab prepare-bridges)")
    try:
        eventloop.check(event_loop)
        check_batch_decode(batch_decode)
    except ValueError as exc:
        raise TestbedError(str(exc)) from None
    manifest = load_manifest(prepared)
    key_hex = secrets.token_hex(32)
    dtypes = wire_dtypes(hosts, wire_dtype)
    if len(set(dtypes.values())) > 1:
        progress("[deploy] wire dtypes (auto, by uplink rate): "
                 + ", ".join(f"{h.name} {dtypes[h.index]}" for h in hosts))
    chunk = prefill_chunk(hosts, dtypes, int(manifest["hidden_size"]), prefill)
    if chunk:
        progress(f"[deploy] prefill in chunks of {chunk} positions, pipelined along the chain"
                 + (" (auto: the slowest hop's bandwidth-delay product)" if prefill == "auto" else ""))
    extras = {BRIDGES_FILE: (Path(bridges), sha256_file(Path(bridges)))} if bridges is not None else {}

    def one(host: HostInfo) -> tuple[int, int]:
        files = files_for(manifest, placement, host.index)
        sent, skipped = ship_model(testbed, host, prepared, files, extras)
        cfg = node_config(host, hosts, placement, key_hex=key_hex, wire_dtypes=dtypes,
                          compute_dtype=compute_dtype, timing=timing, encrypt=encrypt, bridges=bool(extras),
                          event_loop=event_loop, batch_decode=batch_decode)
        shell = testbed.shell(host)
        if cfg.key_file:
            local_key = testbed.state_dir / f"{host.name}.key"
            write_private(local_key, key_hex)
            shell.run(f"mkdir -p -m 700 {shlex.quote(str(Path(cfg.key_file).parent))}")
            shell.put(local_key, cfg.key_file)
            shell.run(f"chmod 600 {shlex.quote(cfg.key_file)}")
        local_cfg = testbed.state_dir / f"{host.name}.node.json"
        if host.index == 0:
            write_private(local_cfg, UserConfig(cfg, placement, policy, on_slow, chunk).to_json())
            shell.put(local_cfg, "user.json")
        else:
            write_private(local_cfg, cfg.to_json())
            shell.put(local_cfg, "node.json")
            testbed.stop_service(host)  # a re-deploy replaces the running service, then starts afresh
            shell.run("rm -f events.jsonl", check=False)
            testbed.start_service(host, service_argv(host, "payload.node", "--config", "node.json"))
            started[host.name] = host
        progress(f"[deploy] {host.name}: {sent / 1e6:.1f} MB shipped, {skipped} files unchanged")
        return sent, skipped

    started: dict[str, HostInfo] = {}

    try:
        results = on_each({h.name: partial(one, h) for h in hosts}, what="deploy", per_host=(Exception,))
        on_each({h.name: partial(wait_ready, testbed, h, ready_timeout_s) for h in hosts if h.index > 0},
                what="waiting for node health", per_host=(Exception,))
    except TestbedError:
        stop_started(testbed, started)
        raise
    progress(f"[deploy] {len(hosts) - 1} layer nodes ready")
    return Deployment(
        testbed=testbed.kind, model=model, prepared=str(prepared), placement=placement.to_dict(),
        policy=policy.value, hosts=[h.to_dict() for h in hosts],
        bytes_shipped={n: r[0] for n, r in results.items()}, files_skipped={n: r[1] for n, r in results.items()},
        key_hex=key_hex, wire_dtype=wire_dtype, wire_dtypes={str(k): v for k, v in dtypes.items()},
        compute_dtype=compute_dtype, timing=asdict(timing), encrypt=encrypt,
        bridges=str(bridges) if bridges is not None else "",
        bridges_sha256=extras[BRIDGES_FILE][1] if extras else "", on_slow=on_slow.value, prefill_chunk=chunk,
        event_loop=event_loop, batch_decode=batch_decode,
    )
