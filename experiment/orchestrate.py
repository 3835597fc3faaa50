"""The library behind the fab tasks: one function per task, testbed-agnostic.

The fabfile only parses flags and calls these; every failure surfaces as a
TestbedError, ScenarioError or PrepareError with a message meant for the user.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from experiment.deploy import Deployment, deploy
from experiment.local import LocalTestbed
from experiment.run import Fault, run_job
from experiment.scenario import Scenario, load_scenario
from experiment.testbed import Testbed, TestbedError
from payload.config import Timing
from payload.prepare import load_manifest, prepare
from payload.routing import Placement, Policy, even_placement, explicit_placement

TESTBEDS = ("auto", "local", "emu", "colosseum", "rpi")


def make_testbed(kind: str, *, prefix: str | None = None, inventory: str | None = None) -> Testbed:
    """Instantiate the named testbed, with a clear error where it cannot run here.

    ``auto`` picks the emulated testbed when running as root and the rootless
    local testbed otherwise, and says which.
    """
    if kind == "auto":
        kind = "emu" if os.geteuid() == 0 else "local"
        print(f"[testbed] auto: using the {kind} testbed"
              + ("" if kind == "emu" else " (no root: namespaces and sshd need root; shaped links are not available)"))
    if kind == "local":
        return LocalTestbed(prefix or "jv-local")
    if kind == "emu":
        if os.geteuid() != 0:
            raise TestbedError("the emulated testbed needs root (network namespaces, sshd, like Mininet); "
                               "run as root or use --testbed local")
        from emu.testbed import EmuTestbed

        return EmuTestbed(prefix or "jv-emu")
    if kind == "colosseum":
        from colosseum.testbed import ColosseumTestbed

        return ColosseumTestbed(prefix or "jv-colosseum", inventory=inventory)
    if kind == "rpi":
        from rpi.testbed import RpiTestbed

        return RpiTestbed(prefix or "jv-rpi", inventory=inventory)
    raise TestbedError(f"unknown testbed {kind!r}; choose one of {', '.join(TESTBEDS)}")


def deployment_path(testbed: Testbed) -> Path:
    root = Path(getattr(testbed, "root", Path("/tmp") / "jarvis-state" / testbed.kind))
    return root / "deployment.json"


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
    for line in path.read_text().split():
        first, last = line.split("-")
        ranges.append((int(first), int(last) + 1))
    return explicit_placement(num_layers, ranges, replicas)


def do_deploy(testbed: Testbed, model: str, placement: Placement, *, policy: Policy = Policy.SKIP,
              wire_dtype: str = "bfloat16", compute_dtype: str = "float32", timing: Timing = Timing()) -> Deployment:
    prepared = prepare(model)
    deployment = deploy(testbed, prepared, placement, model=model, policy=policy, wire_dtype=wire_dtype,
                        compute_dtype=compute_dtype, timing=timing)
    deployment.save(deployment_path(testbed))
    total = sum(deployment.bytes_shipped.values())
    print(f"[deploy] shipped {total / 1e6:.1f} MB in total; deployment saved to {deployment_path(testbed)}")
    return deployment


def faults_from(scenario: Scenario) -> list[Fault]:
    from emu.profiles import resolve  # profiles live with the emulated testbed's data

    faults = []
    for spec in scenario.faults:
        profile = resolve(spec.profile) if spec.profile else None
        faults.append(Fault(spec.action, spec.targets, at_token=spec.at_token, at_seconds=spec.at_seconds,
                            prompt_index=spec.prompt, repeat=spec.repeat, profile=profile, duration=spec.duration))
    return faults


def job_from(scenario: Scenario, base: Path) -> dict:
    return {"prompts": scenario.prompt_list(base), "max_new_tokens": scenario.max_new_tokens,
            "sampling": {**scenario.sampling.model_dump(), "seed": scenario.seed}, "repeats": scenario.repeats,
            "concurrency": scenario.concurrency, "chat": scenario.chat}


def default_out(name: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def experiment(kind: str, scenario_path: str, *, out: str | None = None, prefix: str | None = None,
               inventory: str | None = None) -> Path:
    """up -> deploy -> run -> collect -> analyze -> down; return the run directory."""
    scenario = load_scenario(scenario_path)
    testbed = make_testbed(kind, prefix=prefix, inventory=inventory)
    prepared = prepare(scenario.model)
    run_dir = Path(out) if out else default_out(scenario.name)
    print(f"[experiment] {scenario.name}: {scenario.nodes} layer nodes on the {testbed.kind} testbed, model {scenario.model}")
    links = {}
    if kind != "local" and scenario.links:
        from emu.profiles import resolve

        links = {k: resolve(p) for k in range(1, scenario.nodes + 1) if (p := scenario.profile_of(k))}
    try:
        testbed.up(scenario.nodes, links or None)
        memory = reported_memory(testbed) if scenario.placement == "memory" else None
        placement = scenario.placement_for(load_manifest(prepared)["num_layers"], memory)
        deployment = do_deploy(testbed, scenario.model, placement, policy=scenario.on_failure,
                               wire_dtype=scenario.wire_dtype, compute_dtype=scenario.compute_dtype,
                               timing=Timing(**scenario.timing))
        run_job(testbed, deployment, job_from(scenario, Path(scenario_path).parent), faults_from(scenario), run_dir,
                scenario=scenario.model_dump(mode="json"))
    finally:
        testbed.down()
    from analysis.report import analyze

    analyze(run_dir)  # prints the summary table
    print(f"[experiment] results in {run_dir}")
    return run_dir
