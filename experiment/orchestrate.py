"""The library behind the fab tasks: one function per task, testbed-agnostic.

The fabfile only parses flags and calls these.  Building a testbed from its
name and finding what is deployed on it happen here, once; every failure meant
for the user surfaces as a :class:`payload.errors.JarvisError`.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dashboard.feed import phase_message, topology_message
from experiment.collect import nodes_frame
from experiment.deploy import Deployment, deploy
from experiment.run import Fault, run_job
from experiment.scenario import FaultSpec, Scenario, check_supported, load_scenario
from payload.stragglers import OnSlow
from payload.config import Timing
from payload.prepare import load_manifest, prepare
from payload.routing import Placement, Policy, even_placement, explicit_placement
from testbed.interface import FaultKind, Testbed, TestbedError
from testbed.remote import InventoryTestbed
from testbed.profiles import resolve

if TYPE_CHECKING:
    from dashboard.server import Dashboard
    from experiment.resilient import SliceCosts

# testbed name -> "module:class"; imported on demand (emu needs root, colosseum, rpi and ssh need inventories)
TESTBEDS = {
    "local": "local.testbed:LocalTestbed",
    "emu": "emu.testbed:EmuTestbed",
    "colosseum": "colosseum.testbed:ColosseumTestbed",
    "rpi": "rpi.testbed:RpiTestbed",
    "ssh": "sshhosts.testbed:SshTestbed",
}
CHOICES = ("auto", *TESTBEDS)
INVENTORY_TESTBEDS = ("colosseum", "rpi", "ssh")


def resolve_kind(kind: str, *, announce: bool = True) -> str:
    """``auto`` is the emulated testbed as root and the rootless local one otherwise (said when chosen)."""
    if kind == "auto":
        kind = "emu" if os.geteuid() == 0 else "local"
        if announce:
            print(f"[testbed] auto: using the {kind} testbed" + ("" if kind == "emu" else
                  " (no root: namespaces and sshd need root; shaped links are not available)"))
    if kind not in TESTBEDS:
        raise TestbedError(f"unknown testbed {kind!r}; choose one of {', '.join(CHOICES)}")
    return kind


def testbed_class(kind: str) -> type[Testbed]:
    module, name = TESTBEDS[resolve_kind(kind, announce=False)].split(":")
    return getattr(importlib.import_module(module), name)


def make_testbed(kind: str, *, prefix: str | None = None, inventory: str | None = None) -> Testbed:
    """The named testbed, with a clear error where it cannot run here."""
    kind = resolve_kind(kind)
    if kind == "emu" and os.geteuid() != 0:
        raise TestbedError("the emulated testbed needs root (network namespaces, sshd, like Mininet); "
                           "run as root or use --testbed local")
    cls = testbed_class(kind)
    prefix = prefix or f"jv-{kind}"
    if kind in INVENTORY_TESTBEDS:
        return cls(prefix, inventory=inventory)
    if inventory is not None:
        raise TestbedError(f"--inventory is for the {' and '.join(INVENTORY_TESTBEDS)} testbeds, not {kind}")
    return cls(prefix)


def deployment_path(testbed: Testbed) -> Path:
    return testbed.state_dir / "deployment.json"


def current_deployment(testbed: Testbed) -> Deployment:
    """What ``fab deploy`` put on ``testbed`` (a clear error if nothing is)."""
    return Deployment.load(deployment_path(testbed))


def reported_memory(testbed: Testbed) -> dict[int, int]:
    """Bytes of memory each layer node reports available (MemAvailable), for memory-weighted placement."""
    memory = {}
    for host in testbed.hosts():
        if host.index:
            out = testbed.shell(host).run("awk '/MemAvailable/ {print $2 * 1024}' /proc/meminfo").stdout
            memory[host.index] = int(float(out.strip()))
    return memory


def placement_from(spec: str, num_layers: int, nodes: int, replicas: int) -> Placement:
    """``even``, or a file with one ``first-last`` (inclusive, 0-based) layer range per line."""
    if spec == "even":
        return even_placement(num_layers, nodes, replicas)
    path = Path(spec)
    if not path.exists():
        raise TestbedError(f"placement must be 'even' or a file of layer ranges; {spec} does not exist")
    ranges = []
    for number, line in enumerate(path.read_text().split(), start=1):
        first, sep, last = line.partition("-")
        if not (sep and first.isdigit() and last.isdigit()):
            raise TestbedError(f"{path}: item {number} is {line!r}; write one first-last layer range per line")
        ranges.append((int(first), int(last) + 1))
    return explicit_placement(num_layers, ranges, replicas)


def layer_costs(scenario: Scenario, prepared: Path, base: Path) -> "SliceCosts":
    """``placement: resilient``'s costs: the scenario's skip study (single layers, summed over a slice), or
    measured now for every span a slice can be within the memory cap (bridged under a bridging policy)."""
    from experiment.resilient import SliceCosts, default_capacity, measured_costs, study_costs

    method = "bridge" if scenario.on_failure.bridges else "skip"
    file = scenario.resilient.criticality
    if file:
        return SliceCosts(study_costs(Path(file) if Path(file).is_absolute() else base / file, method=method))
    layers = load_manifest(prepared)["num_layers"]
    cap = scenario.resilient.capacity or default_capacity(layers, scenario.nodes, scenario.resilient.copies)
    return measured_costs(prepared, method=method, tokens=scenario.resilient.tokens, max_span=cap)


def plan_placement(scenario: Scenario, prepared: Path, base: Path, memory: dict[int, int] | None = None
                   ) -> Placement:
    """The scenario's placement; a resilient one is printed beside even placement's expected KL."""
    num_layers = load_manifest(prepared)["num_layers"]
    if scenario.placement != "resilient":
        return scenario.placement_for(num_layers, memory)
    plan = scenario.resilient_plan(num_layers, layer_costs(scenario, prepared, base))
    print(plan.describe())
    return plan.placement


def bridges_for(prepared: Path, placement: Placement, *, file: str | None = None, corpus: str | None = None,
                ridge: float | None = None, tokens: int | None = None) -> Path:
    """``fab prepare-bridges``: the bridge file of ``placement``'s slices (``file``, checked, or fitted on
    first use and cached beside the prepared model: quality/bridges.py)."""
    from payload.bridges import BridgeSet, load_bridges

    spans = [placement.slices[n] for n in placement.nodes]
    if file:
        path = Path(file)
        held = BridgeSet(load_bridges(path, hidden=int(load_manifest(prepared)["hidden_size"])))
        missing = held.missing(spans)
        if missing:
            raise TestbedError(f"{path} has no bridge for slice(s) {', '.join(missing)} of this placement")
        return path
    from quality.bridges import bridge_file

    options = {k: v for k, v in {"corpus": Path(corpus) if corpus else None, "ridge": ridge, "tokens": tokens}.items()
               if v is not None}
    return bridge_file(prepared, spans, **options)


def do_deploy(testbed: Testbed, model: str, placement: Placement, *, policy: Policy = Policy.SKIP,
              wire_dtype: str = "bfloat16", compute_dtype: str = "float32", timing: Timing = Timing(),
              encrypt: bool = False, bridges: Path | None = None, on_slow: OnSlow = OnSlow.WAIT,
              prefill: int | str = "auto", event_loop: str = "auto", batch_decode: int = 1) -> Deployment:
    """Deploy ``model`` as ``placement``; a policy that bridges gets the placement's bridges (fitted with the
    defaults unless ``bridges`` names a file)."""
    prepared = prepare(model)
    if policy.bridges and bridges is None:
        bridges = bridges_for(prepared, placement)
    deployment = deploy(testbed, prepared, placement, model=model, policy=policy, wire_dtype=wire_dtype,
                        compute_dtype=compute_dtype, timing=timing, encrypt=encrypt,
                        bridges=bridges if policy.bridges else None, on_slow=on_slow, prefill=prefill,
                        event_loop=event_loop, batch_decode=batch_decode)
    deployment.save(deployment_path(testbed))
    total = sum(deployment.bytes_shipped.values())
    print(f"[deploy] shipped {total / 1e6:.1f} MB in total; deployment saved to {deployment_path(testbed)}")
    return deployment


def policy_of(name: str) -> Policy:
    try:
        return Policy(name)
    except ValueError:
        raise TestbedError(f"unknown failure policy {name!r}; choose one of "
                           f"{', '.join(p.value for p in Policy)}") from None


def deploy_model(testbed: Testbed, model: str, *, placement: str = "even", replicas: int = 0,
                 on_failure: str = "skip", wire_dtype: str = "bfloat16", encrypt: bool = False,
                 nodes: int | None = None, bridges: str | None = None, on_slow: str = "wait",
                 prefill_chunk: int | str = "auto", event_loop: str = "auto", batch_decode: int = 1) -> Deployment:
    """``fab deploy``: place ``model`` over the testbed's layer nodes (``even`` or a ranges file) and deploy it.

    An inventory testbed (Colosseum, Pis) that is not up is brought up first with ``nodes`` layer nodes (default:
    every one the inventory can hold): ``fab deploy --testbed colosseum --inventory FILE`` is the whole job.
    """
    layers = load_manifest(prepare(model))["num_layers"]
    ensure_up(testbed, nodes)
    plan = placement_from(placement, layers, len(testbed.hosts()) - 1, replicas)
    policy = policy_of(on_failure)
    chosen = bridges_for(prepare(model), plan, file=bridges) if bridges and policy.bridges else None
    try:
        straggler = OnSlow(on_slow)
    except ValueError:
        raise TestbedError(f"unknown on_slow {on_slow!r}; choose one of {', '.join(o.value for o in OnSlow)}") from None
    return do_deploy(testbed, model, plan, policy=policy, wire_dtype=wire_dtype, encrypt=encrypt, bridges=chosen,
                     on_slow=straggler, prefill=prefill_chunk, event_loop=event_loop, batch_decode=batch_decode)


def ensure_up(testbed: Testbed, nodes: int | None) -> None:
    """Bring an inventory testbed up if it is not; refuse a node count other than the running one's."""
    if not isinstance(testbed, InventoryTestbed):
        return
    if testbed.is_up():
        running = len(testbed.hosts()) - 1
        if nodes is not None and nodes != running:
            raise TestbedError(f"the {testbed.title} testbed is up with {running} layer nodes, not {nodes}: "
                               f"`fab down --testbed {testbed.kind}` first to change that")
        return
    count = nodes if nodes is not None else testbed.capacity()
    print(f"[deploy] the {testbed.title} testbed is not up: bringing up {count} layer nodes first", flush=True)
    testbed.up(count)


def dry_run_nodes(testbed: Testbed, nodes: int | None) -> int:
    """The layer-node count a dry run shows: the one asked for, else all an inventory holds."""
    if nodes is not None:
        return nodes
    if isinstance(testbed, InventoryTestbed):
        return testbed.capacity()
    raise TestbedError("say how many layer nodes with --nodes N")


def generate(testbed: Testbed, prompt: str, *, max_new_tokens: int = 32, out: str | None = None) -> Path:
    """``fab generate``: one prompt on what is deployed, streamed; return the run directory."""
    return run_job(testbed, current_deployment(testbed), {"prompts": [prompt], "max_new_tokens": max_new_tokens}, [],
                   Path(out) if out else default_out("generate"))


def faults_from(scenario: Scenario) -> list[Fault]:
    """The scenario's faults, its chaos schedule's among them, as the fault runner takes them."""
    return [fault_of(spec) for spec in scenario.all_faults()]


def fault_of(spec: FaultSpec) -> Fault:
    """One scenario fault as the fault runner takes it (its profile resolved)."""
    return Fault(FaultKind(spec.action), spec.targets, at_token=spec.at_token, at_seconds=spec.at_seconds,
                 prompt_index=spec.prompt, repeat=spec.repeat, profile=resolve(spec.profile) if spec.profile else None,
                 duration=spec.duration, to=spec.sinks, pct=spec.pct, period_ms=spec.period_ms, duty=spec.duty,
                 offset_ms=spec.offset_ms, factor=spec.factor)


def job_from(scenario: Scenario, base: Path) -> dict:
    return {"prompts": scenario.prompt_list(base), "max_new_tokens": scenario.max_new_tokens,
            "sampling": {**scenario.sampling.model_dump(), "seed": scenario.seed}, "repeats": scenario.repeats,
            "concurrency": scenario.concurrency, "chat": scenario.chat,
            "ignore_eos": scenario.ignore_eos}


def default_out(name: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def scenario_for(path: str, testbed: Testbed) -> Scenario:
    """Load a scenario and refuse, before anything starts, faults that ``testbed`` cannot inject."""
    scenario = load_scenario(path)
    check_supported(scenario, Path(path), testbed.kind, testbed.supported_faults())
    return scenario


def run_scenario(testbed: Testbed, scenario_path: str, *, out: str | None = None) -> Path:
    """``fab run``: the scenario's prompts and faults on what is deployed; return the run directory."""
    scenario = scenario_for(scenario_path, testbed)
    deployment = current_deployment(testbed)
    return run_job(testbed, deployment, job_from(scenario, Path(scenario_path).parent), faults_from(scenario),
                   Path(out) if out else default_out(scenario.name), scenario=scenario.model_dump(mode="json"))


def live_topology(deployment: Deployment, label: str) -> dict:
    """The dashboard's topology message for what is deployed (the rows nodes.csv will hold)."""
    nodes = nodes_frame(deployment, {"peak_rss_bytes": {}}).drop(columns="peak_rss_bytes")
    return topology_message(json.loads(nodes.to_json(orient="records")), label=label, model=deployment.model,
                            policy=deployment.policy, replay=False)


def experiment(kind: str, scenario_path: str, *, out: str | None = None, prefix: str | None = None,
               inventory: str | None = None, dashboard: "Dashboard | None" = None) -> Path:
    """up -> deploy -> run -> collect -> analyze -> down; return the run directory.

    With a ``dashboard`` (started by the caller) every step is shown there live: the phase, the chain once
    deployed, the run's events as the nodes log them, and the report once written.
    """
    def phase(name: str, detail: str = "") -> None:
        if dashboard is not None:
            dashboard.feed.publish(phase_message(name, detail))

    testbed = make_testbed(kind, prefix=prefix, inventory=inventory)
    scenario = scenario_for(scenario_path, testbed)
    prepared = prepare(scenario.model)
    run_dir = Path(out) if out else default_out(scenario.name)
    print(f"[experiment] {scenario.name}: {scenario.nodes} layer nodes on the {testbed.kind} testbed, "
          f"model {scenario.model}")
    links = {}
    if testbed.kind != "local" and scenario.links:
        links = {k: resolve(p) for k in range(1, scenario.nodes + 1) if (p := scenario.profile_of(k))}
    base = Path(scenario_path).parent
    placement = None if scenario.placement == "memory" else plan_placement(scenario, prepared, base)  # before up
    bridges = None
    if scenario.on_failure.bridges and placement is not None:  # fitted (or found) before anything is brought up
        bridges = bridges_for(prepared, placement, **scenario.bridges.options(base))
    try:
        phase("up", f"{scenario.nodes} layer nodes on the {testbed.kind} testbed")
        testbed.up(scenario.nodes, links or None)
        if placement is None:
            placement = plan_placement(scenario, prepared, base, reported_memory(testbed))
            if scenario.on_failure.bridges:
                bridges = bridges_for(prepared, placement, **scenario.bridges.options(base))
        phase("deploy", f"model {scenario.model}")
        deployment = do_deploy(testbed, scenario.model, placement, policy=scenario.on_failure,
                               wire_dtype=scenario.wire_dtype, compute_dtype=scenario.compute_dtype,
                               timing=Timing(**scenario.timing), encrypt=scenario.encrypt, bridges=bridges,
                               on_slow=scenario.on_slow, prefill=scenario.prefill_chunk,
                               batch_decode=scenario.batch_decode)
        if dashboard is not None:
            dashboard.feed.publish(live_topology(deployment, scenario.name))
        phase("run", scenario.description or scenario.name)
        run_job(testbed, deployment, job_from(scenario, Path(scenario_path).parent), faults_from(scenario), run_dir,
                scenario=scenario.model_dump(mode="json"), feed=None if dashboard is None else dashboard.feed)
    finally:
        phase("down")
        testbed.down()
    from analysis.report import analyze

    phase("analyze")
    analyze(run_dir)  # prints the summary table
    if dashboard is not None:
        dashboard.run_dir = run_dir
        complete = json.loads((run_dir / "summary.json").read_text())["complete"]
        dashboard.feed.publish({"ev": "end", "run_dir": str(run_dir), "complete": complete, "report": True})
    print(f"[experiment] results in {run_dir}")
    return run_dir


def campaign(kind: str, scenario_path: str, *, runs: int, seed: int, policies: list[str], max_lost: int = 2,
             independent: bool = False, chaos: bool = False, out: str | None = None, prefix: str | None = None
             ) -> Path:
    """``fab campaign``: up -> every seeded draw under every policy -> down; return the campaign directory."""
    from experiment.campaign import PLACEMENTS, run_campaign

    for name in policies:
        if name not in PLACEMENTS:
            policy_of(name)
    if runs < 1:
        raise TestbedError(f"runs must be at least 1, got {runs}")
    testbed = make_testbed(kind, prefix=prefix)
    scenario = scenario_for(scenario_path, testbed)
    if chaos and scenario.chaos is None:
        raise TestbedError(f"--chaos draws each run's schedule from the scenario's chaos options; "
                           f"{scenario_path} has none")
    target = Path(out) if out else default_out(f"campaign-{scenario.name}")
    links = {}
    if testbed.kind != "local" and scenario.links:
        links = {k: resolve(p) for k in range(1, scenario.nodes + 1) if (p := scenario.profile_of(k))}
    print(f"[campaign] {scenario.name}: {runs} draws (seed {seed}) x {', '.join(policies)} on the {testbed.kind} "
          f"testbed, {scenario.nodes} layer nodes")
    try:
        testbed.up(scenario.nodes, links or None)
        run_campaign(testbed, scenario, Path(scenario_path).parent, target, runs=runs, seed=seed,
                     policies=policies, max_lost=max_lost, independent=independent, chaos=chaos)
    finally:
        testbed.down()
    print(f"[campaign] results in {target}")
    return target
