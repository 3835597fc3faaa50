"""``fab campaign``: quality under failure as a curve, one per failure policy, from seeded random faults.

Each of ``runs`` draws is a fault schedule made from ``seed``: which layer nodes die (1 to ``max_lost`` of
them; or, with ``failure_p``, each node independently with its probability, so some draws lose none) and at
which token they are killed together (a power cut).  Every policy asked for (``skip``, ``bridge``,
``replica-then-skip``, ...) runs every draw on a fresh deployment of the scenario's model and placement
(replica policies with at least one replica per slice), so the policies are compared on the same faults,
paired.  Two entries compare placements instead: ``resilient`` (experiment/resilient.py, the scenario's
``resilient`` options and ``failure_p``) and ``even-budget`` (even placement with the same replica copies,
placed the same way), both failing over to their replicas, then skipping (bridging under a bridge policy).
With ``chaos``, draw *i* is instead the scenario's chaos schedule (experiment/chaos.py) drawn with seed
``seed + i``: pauses, cuts, impairments, kills as the scenario's ``chaos`` asks, each healed but the kills;
its ``at_token`` is the step in progress when its first fault fired (faults.csv), ``nodes_killed`` and
``layers_lost`` count its kills only.
A draw that loses no node is the no-fault run itself (scored as such, not run again).  Each run is checked by the consistency oracle and scored against the no-fault run:

* ``agreement``: share of generated positions whose token is the no-fault run's;
* ``first_divergence``: the first step whose token differs (empty when none does);
* ``kl_after``: mean KL(full model || chain) of the next-token distribution over the steps after the fault,
  on the chain's own prefix (the oracle replays both: :func:`experiment.replay.check_run`).

Results go to ``campaign.csv`` (one row per policy and draw), with ``campaign.md`` and
``quality_vs_layers_lost.png/.pdf`` made from it by :mod:`analysis.campaign`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from experiment.deploy import deploy
from experiment.replay import Monolith, check_run
from experiment.chaos import draw_chaos
from experiment.run import Fault, run_job
from experiment.scenario import FaultSpec, Scenario
from payload.config import Timing
from payload.prepare import load_manifest, prepare
from payload.routing import Placement, Policy
from testbed.interface import Testbed, TestbedError

PLACEMENTS = ("resilient", "even-budget")  # entries that compare placements under the same failover
COLUMNS = ["policy", "draw", "nodes_killed", "at_token", "layers_lost", "complete", "oracle_ok", "tokens",
           "agreement", "first_divergence", "kl_after", "kl_all", "run_dir"]


@dataclass(frozen=True)
class Draw:
    """One seeded fault schedule: ``nodes`` killed together after token ``at_token``; or a chaos schedule
    (``chaos``: its faults; ``nodes`` those it kills, ``at_token`` -1 until the run says when it began)."""

    index: int
    nodes: tuple[int, ...]
    at_token: int
    chaos: tuple[FaultSpec, ...] = ()

    @property
    def faultless(self) -> bool:
        return not self.nodes and not self.chaos

    def faults(self) -> list[Fault]:
        from experiment.orchestrate import fault_of

        if self.chaos:
            return [fault_of(spec) for spec in self.chaos]
        return [Fault("kill", self.nodes, at_token=self.at_token)]

    def describe(self) -> dict:
        """For campaign.json."""
        return {"index": self.index, "nodes": list(self.nodes), "at_token": self.at_token,
                "chaos": [spec.model_dump(exclude_none=True, by_alias=True) for spec in self.chaos]}


def chaos_schedules(scenario: Scenario, seed: int, runs: int) -> list[Draw]:
    """``runs`` chaos schedules of the scenario, draw *i* with seed ``seed + i`` (the same seed, the same ones)."""
    draws = []
    for index in range(runs):
        specs = tuple(draw_chaos(scenario.chaos.model_copy(update={"seed": seed + index}), scenario.nodes))
        killed = tuple(sorted({n for s in specs if s.action == "kill" for n in s.targets}))
        draws.append(Draw(index, killed, -1, specs))
    return draws


def first_fault_step(run: Path) -> int:
    """The step in progress when the run's first fault fired (-1: before the first token, or none fired)."""
    faults = pd.read_csv(run / "faults.csv", keep_default_na=False)
    return int(faults["step"].min()) if len(faults) else -1


def draw_schedules(seed: int, runs: int, *, nodes: int, max_new_tokens: int, max_lost: int,
                   failure_p: dict[int, float] | None = None) -> list[Draw]:
    """``runs`` schedules from ``seed`` alone: the same seed gives the same schedules on any machine.  With
    ``failure_p`` each node fails independently (at most ``nodes - 1``: the highest-numbered survives a draw
    that would kill every node)."""
    if not 1 <= max_lost < nodes:
        raise TestbedError(f"max_lost must be between 1 and {nodes - 1} (a chain needs one live node)")
    if max_new_tokens < 3:
        raise TestbedError("a campaign needs max_new_tokens >= 3: a fault, then tokens after it")
    rng = random.Random(seed)
    draws = []
    for index in range(runs):
        if failure_p is None:
            chosen = rng.sample(range(1, nodes + 1), rng.randint(1, max_lost))
        else:
            chosen = [k for k in range(1, nodes + 1) if rng.random() < failure_p[k]][:nodes - 1]
        draws.append(Draw(index, tuple(sorted(chosen)), rng.randint(1, max_new_tokens - 2)))
    return draws


def layers_of(placement: Placement, nodes: tuple[int, ...]) -> int:
    return sum(placement.slices[n][1] - placement.slices[n][0] for n in nodes)


def score(run: Path, baseline: list[int], at_token: int, monolith: Monolith, prepared: Path) -> dict:
    """A run's quality against the no-fault tokens, and the oracle's verdict."""
    summary = json.loads((run / "summary.json").read_text())
    (result,) = check_run(run, prepared, model=monolith, divergence=True)
    tokens = result.expected
    same = [a == b for a, b in zip(tokens, baseline)]
    first = next((i for i, ok in enumerate(same) if not ok), None)
    after = result.kl[at_token + 1:]
    return {"complete": bool(summary["complete"]), "oracle_ok": result.ok, "tokens": len(tokens),
            "agreement": sum(same) / len(baseline), "first_divergence": first,
            "kl_after": sum(after) / len(after) if after else None, "kl_all": sum(result.kl) / len(result.kl)}


def run_campaign(testbed: Testbed, scenario: Scenario, base: Path, out: Path, *, runs: int, seed: int,
                 policies: list[str], max_lost: int, independent: bool = False, chaos: bool = False,
                 progress=print) -> Path:
    """Every draw under every policy on ``testbed`` (brought up by the caller); return ``out``.  With
    ``independent`` nodes fail independently with the scenario's ``failure_p``; with ``chaos`` each draw is the
    scenario's chaos schedule."""
    from experiment.orchestrate import bridges_for, job_from, layer_costs

    if scenario.sampling.temperature:
        raise TestbedError("a campaign compares greedy runs (the oracle replays them): set sampling.temperature 0")
    prepared = prepare(scenario.model)
    num_layers = load_manifest(prepared)["num_layers"]
    fallback = Policy.REPLICA_THEN_BRIDGE if scenario.on_failure.bridges else Policy.REPLICA_THEN_SKIP
    plans = {}
    if set(policies) & set(PLACEMENTS):
        plan = scenario.model_copy(update={"placement": "resilient", "replicas": 0}).resilient_plan(
            num_layers, layer_costs(scenario, prepared, base))
        progress(plan.describe())
        plans = {"resilient": plan.placement, "even-budget": plan.even}
    chosen = [(name, fallback if name in plans else Policy(name)) for name in policies]
    job = job_from(scenario, base) | {"repeats": 1, "concurrency": 1, "ignore_eos": True}
    job["prompts"] = job["prompts"][:1]
    if chaos:
        draws = chaos_schedules(scenario, seed, runs)
    else:
        draws = draw_schedules(seed, runs, nodes=scenario.nodes, max_new_tokens=job["max_new_tokens"],
                               max_lost=max_lost, failure_p=scenario.failure_probabilities() if independent else None)
    out.mkdir(parents=True, exist_ok=True)
    timing = Timing(**scenario.timing)
    monolith = Monolith(prepared)
    quiet = lambda line: None  # noqa: E731  (the campaign prints one line per run instead)

    bridge_files: dict[str, Path | None] = {}  # per entry: found (or fitted) once, not once per draw

    def deployed(name: str, policy: Policy):
        if name in plans:
            placement = plans[name]
        else:
            update = {"replicas": max(1, scenario.replicas) if policy.uses_replicas else scenario.replicas}
            if scenario.placement == "resilient":  # the policies are compared on even placement
                update["placement"] = "even"
            placement = scenario.model_copy(update=update).placement_for(num_layers)
        if name not in bridge_files:
            bridge_files[name] = bridges_for(prepared, placement, **scenario.bridges.options(base)) \
                if policy.bridges else None
        bridges = bridge_files[name]
        return deploy(testbed, prepared, placement, model=scenario.model, policy=policy,
                      wire_dtype=scenario.wire_dtype, compute_dtype=scenario.compute_dtype, timing=timing,
                      bridges=bridges, prefill=scenario.prefill_chunk, batch_decode=scenario.batch_decode,
                      progress=quiet), placement

    deployment, _ = deployed("skip", Policy.SKIP)
    baseline_dir = run_job(testbed, deployment, job, [], out / "runs" / "baseline", stream=quiet)
    (reference,) = check_run(baseline_dir, prepared, model=monolith)
    if not reference.ok:
        raise TestbedError(f"the no-fault run does not replay ({baseline_dir}): the chain is not exact here")
    baseline = reference.expected
    progress(f"[campaign] baseline: {len(baseline)} tokens; {len(draws)} draws x {len(chosen)} policies")
    rows: list[dict] = []
    table = out / "campaign.csv"
    started = time.monotonic()
    intact = {"complete": True, "oracle_ok": True, "tokens": len(baseline), "agreement": 1.0,
              "first_divergence": None, "kl_after": 0.0, "kl_all": 0.0, "run_dir": "runs/baseline"}
    for name, policy in chosen:
        for draw in draws:
            row = {"policy": name, "draw": draw.index, "nodes_killed": " ".join(map(str, draw.nodes)),
                   "at_token": draw.at_token}
            if draw.faultless:  # nothing fails: the no-fault run, already run and replayed
                rows.append(row | {"layers_lost": 0} | intact)
                table.write_text(pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
                continue
            deployment, placement = deployed(name, policy)
            run = out / "runs" / f"{name}-{draw.index:03d}"
            run_job(testbed, deployment, job, draw.faults(), run, stream=quiet)
            at_token = first_fault_step(run) if draw.chaos else draw.at_token
            row |= {"at_token": at_token, "layers_lost": layers_of(placement, draw.nodes),
                    "run_dir": str(run.relative_to(out))}
            row |= score(run, baseline, at_token, monolith, prepared)
            rows.append(row)
            table.write_text(pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))  # kept if the campaign dies
            what = f"{len(draw.chaos)} chaos faults" if draw.chaos else f"kill {row['nodes_killed']}"
            progress(f"[campaign] {name} #{draw.index}: {what} at token {at_token}"
                     f" ({row['layers_lost']} layers): agreement {row['agreement']:.2f}, KL after "
                     f"{row['kl_after'] if row['kl_after'] is None else round(row['kl_after'], 3)}, oracle "
                     f"{'ok' if row['oracle_ok'] else 'FAILED'} ({time.monotonic() - started:.0f} s)")
    (out / "campaign.json").write_text(json.dumps({
        "scenario": scenario.name, "model": scenario.model, "nodes": scenario.nodes, "seed": seed, "runs": runs,
        "max_lost": max_lost, "policies": [name for name, _ in chosen],
        "failure_p": scenario.failure_probabilities() if independent else None, "prompt": job["prompts"][0],
        "max_new_tokens": job["max_new_tokens"], "testbed": testbed.kind, "draws": [d.describe() for d in draws],
        "chaos": scenario.chaos.model_dump() if chaos else None,
        "seconds": time.monotonic() - started}, indent=2))
    from analysis.campaign import report

    report(out)
    return out
