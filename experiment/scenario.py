"""Scenario files: YAML validated with pydantic, errors naming the field and its line, before anything starts.

Beyond each field's own type and range, :func:`problems` checks what spans
fields, because a scenario that loads but cannot do what it says wastes a
run (or a reservation): a fault at a token never generated, a resume of a
node never paused, a pause nothing ends, a second kill of a dead node, a
prompt index past the prompts, a link for a node that does not exist, an
unknown link profile, a prompts file that is not there, placement ranges
with gaps or overlaps, timing knobs out of range.
"""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StrictBool, StrictFloat, StrictInt, field_validator, \
    model_validator

from payload.config import Timing, TimingError
from payload.errors import JarvisError
from payload.stragglers import OnSlow
from payload.routing import Placement, Policy, even_placement, explicit_placement, memory_weighted_placement
from testbed.interface import IMPAIRMENTS, PCT_FAULTS, FaultKind
from testbed.profiles import ProfileError, load_profiles, profile_from_dict
from testbed.yamlfile import Problem, describe_problems, load_validated, parse

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a scenario's name becomes a directory name under runs/
Count = Annotated[StrictInt, Field(ge=1)]
Index = Annotated[StrictInt, Field(ge=0)]
Seconds = Annotated[StrictInt | StrictFloat, Field(ge=0)]
_LINK_KEY = re.compile(r"^(all|\d+|\d+-\d+)$")
# Per node and action: the state it acts on (its process or its link), the states it needs, the state it leaves.
_STATES = {"kill": ("process", {"running", "paused"}, "dead"), "pause": ("process", {"running"}, "paused"),
           "resume": ("process", {"paused"}, "running"), "link_down": ("link", {"up"}, "cut"),
           "link_up": ("link", {"cut"}, "up"), "flap": ("link", {"up"}, "up"),
           "heal": ("impairment", {"impaired"}, "clean"),
           **{k.value: ("impairment", {"clean", "impaired"}, "impaired")
              for k in (*IMPAIRMENTS, FaultKind.CLOCK_SKEW, FaultKind.SLOW)}}
_INITIAL = {"process": "running", "link": "up", "impairment": "clean"}
_UNDO = {"paused": "resume", "cut": "link_up"}  # an impairment without a duration is healed as the run ends
Nodes = Index | list[Index]


class ScenarioError(JarvisError, ValueError):
    """A scenario file is missing, not YAML, or does not validate; the message names field and line."""


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    action: Literal[tuple(k.value for k in FaultKind)]  # type: ignore[valid-type]
    node: Index | None = None
    nodes: list[Index] | None = None
    at_token: Index | None = None
    at_seconds: Seconds | None = None
    prompt: Index = Field(default=0, description="index of the prompt during which the fault fires")
    repeat: Index = 0
    duration: Annotated[StrictInt | StrictFloat, Field(gt=0)] | None = None
    profile: str | dict | None = None
    sources: Nodes | None = Field(default=None, alias="from", description="one_way_partition: frames from these")
    to: Nodes | None = Field(default=None, description="one_way_partition: ... to these are dropped")
    pct: Annotated[StrictInt | StrictFloat, Field(gt=0, le=100)] | None = Field(
        default=None, description="corrupt, duplicate, reorder: the share of frames touched")
    period_ms: Annotated[StrictInt | StrictFloat, Field(ge=10)] | None = Field(default=None, description="flap")
    duty: Annotated[StrictInt | StrictFloat, Field(gt=0, lt=1)] | None = Field(
        default=None, description="flap: the share of each period the link is down")
    offset_ms: Annotated[StrictInt | StrictFloat, Field(ge=-86_400_000, le=86_400_000)] | None = Field(
        default=None, description="clock_skew: how far the node's wall clock is set off")
    factor: Annotated[StrictInt | StrictFloat, Field(gt=1, le=100)] | None = Field(
        default=None, description="slow: how many times slower the node runs")

    @model_validator(mode="after")
    def _check(self) -> "FaultSpec":
        kind = FaultKind(self.action)
        if (self.at_token is None) == (self.at_seconds is None):
            raise ValueError("give exactly one of at_token or at_seconds")
        one_way = kind == FaultKind.ONE_WAY_PARTITION
        if one_way and (self.sources is None or self.to is None or self.node is not None or self.nodes is not None):
            raise ValueError("one_way_partition takes from and to (a node or a list each), not node or nodes")
        if not one_way and (self.sources is not None or self.to is not None):
            raise ValueError("from and to are for one_way_partition")
        if not one_way and (self.node is None) == (self.nodes is None):
            raise ValueError("give exactly one of node or nodes")
        if self.action == "degrade" and not self.profile:
            raise ValueError("degrade needs a profile")
        if (self.pct is None) == (kind in PCT_FAULTS):
            raise ValueError(f"{self.action} needs pct (the share of frames touched)" if self.pct is None
                             else "pct is for corrupt, duplicate and reorder")
        if (self.factor is None) == (kind == FaultKind.SLOW):
            raise ValueError("slow needs factor" if self.factor is None else "factor is for slow")
        if (self.offset_ms is None) == (kind == FaultKind.CLOCK_SKEW):
            raise ValueError("clock_skew needs offset_ms" if self.offset_ms is None else "offset_ms is for clock_skew")
        flap = kind == FaultKind.FLAP
        if flap and (self.period_ms is None or self.duty is None or self.duration is None):
            raise ValueError("flap needs period_ms, duty and duration")
        if not flap and (self.period_ms is not None or self.duty is not None):
            raise ValueError("period_ms and duty are for flap")
        if self.duration is not None and kind.undo is None and not flap:
            raise ValueError(f"duration is for pause, link_down, flap, link impairments, clock_skew and slow "
                             f"(undone after it), not {self.action}")
        return self

    @property
    def sinks(self) -> tuple[int, ...]:
        """The nodes a one-way partition cuts the sources off from (empty for every other action)."""
        return _nodes(self.to)

    @property
    def targets(self) -> tuple[int, ...]:
        """The nodes the action is applied to (a one-way partition: its sources)."""
        if self.sources is not None:
            return _nodes(self.sources)
        return tuple(self.nodes) if self.nodes is not None else (int(self.node),)

    def order(self) -> tuple:
        """When it fires relative to the others: prompt, repeat, then its trigger (tokens before seconds)."""
        return (self.prompt, self.repeat, self.at_token is None, self.at_token or self.at_seconds)


def _nodes(value: int | list[int] | None) -> tuple[int, ...]:
    return () if value is None else (value,) if isinstance(value, int) else tuple(value)


CHAOS_KINDS = ("kill", "pause", "link_down", "flap", "blackhole", "corrupt", "duplicate", "reorder",
               "one_way_partition")


class ChaosOptions(BaseModel):
    """A seeded random fault schedule (experiment/chaos.py): ``rate`` faults per second on average over the
    first ``duration`` seconds of the first session, one at a time, each healed before the next."""

    model_config = ConfigDict(extra="forbid")
    seed: StrictInt = 0
    rate: Annotated[StrictInt | StrictFloat, Field(gt=0, le=100)] = Field(description="faults per second")
    duration: Annotated[StrictInt | StrictFloat, Field(gt=0, le=86_400)] = Field(
        description="seconds from the start of the first session during which faults are drawn")
    kinds: list[Literal[CHAOS_KINDS]] = Field(default_factory=lambda: ["pause", "link_down"],  # type: ignore
                                              min_length=1)
    nodes: list[Index] | None = Field(default=None, description="the layer nodes faults may hit (default: all)")
    pct: Annotated[StrictInt | StrictFloat, Field(gt=0, le=100)] = Field(
        default=10, description="the share of frames a drawn corrupt, duplicate or reorder touches")


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: Annotated[StrictInt | StrictFloat, Field(ge=0)] = 0.0
    top_k: Index = 0
    top_p: Annotated[StrictInt | StrictFloat, Field(gt=0, le=1)] = 1.0


class BridgeOptions(BaseModel):
    """How the bridges of ``on_failure: bridge`` are fitted (unset: quality/bridges.py's defaults), or the file
    ``fab prepare-bridges`` wrote.  Relative paths are relative to the scenario file."""

    model_config = ConfigDict(extra="forbid")
    file: str | None = Field(default=None, description="a bridge file to use as it is")
    corpus: str | None = Field(default=None, description="UTF-8 text to fit on (default: the bundled corpus)")
    ridge: Annotated[StrictInt | StrictFloat, Field(ge=0)] | None = None
    tokens: Annotated[StrictInt, Field(ge=16, le=1_000_000)] | None = None

    def options(self, base: Path) -> dict:
        """Keyword arguments of :func:`experiment.orchestrate.bridges_for`, paths resolved against ``base``."""
        def resolved(name: str | None) -> str | None:
            return None if name is None else str(Path(name) if Path(name).is_absolute() else base / name)

        return {"file": resolved(self.file), "corpus": resolved(self.corpus), "ridge": self.ridge,
                "tokens": self.tokens}


class ResilientOptions(BaseModel):
    """``placement: resilient`` (experiment/resilient.py): what each layer costs, and the replica budget."""

    model_config = ConfigDict(extra="forbid")
    criticality: str | None = Field(default=None, description="a skip study's results.csv (default: measured now)")
    copies: Annotated[StrictInt, Field(ge=0, le=64)] = 1
    capacity: Annotated[StrictInt, Field(ge=1)] | None = None
    tokens: Annotated[StrictInt, Field(ge=16, le=100_000)] = 512


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=NAME, description="letters, digits, '.', '_', '-'; it names the run")]
    description: str = ""
    model: str = "gemma3-270m"
    nodes: Annotated[StrictInt, Field(ge=1, le=250)]
    placement: Literal["even", "memory", "resilient"] | list[tuple[Index, Index]] = "even"
    resilient: ResilientOptions = Field(default_factory=ResilientOptions, description="placement: resilient only")
    failure_p: dict[str, Annotated[StrictInt | StrictFloat, Field(ge=0, lt=1)]] = Field(
        default_factory=dict, description="node index, range 'a-b' or 'all' -> probability it fails (default 0.1)")
    replicas: Index = 0
    on_failure: Policy = Policy.SKIP
    on_slow: OnSlow = Field(default=OnSlow.WAIT, description="a straggler: wait | skip | replica")
    bridges: BridgeOptions = Field(default_factory=BridgeOptions, description="on_failure: bridge only")
    links: dict[str, str | dict] = Field(default_factory=dict, description="node index, range 'a-b' or 'all' -> profile")
    prompts: list[str] = Field(default_factory=list)
    prompts_file: str | None = None
    max_new_tokens: Annotated[StrictInt, Field(ge=1, le=8192)] = 32
    sampling: Sampling = Field(default_factory=Sampling)
    seed: StrictInt = 0
    repeats: Count = 1
    concurrency: Count = 1
    chat: StrictBool = Field(default=False, description="wrap prompts in the model's chat template (instruct models)")
    ignore_eos: StrictBool = Field(default=False, description="always generate max_new_tokens (fixed-length runs)")
    wire_dtype: Literal["float32", "bfloat16", "float16", "int8", "fp8", "auto"] = Field(
        default="bfloat16", description="what hidden states travel in; auto: int8 from nodes whose uplink is "
                                        "below 50 Mbit/s, bfloat16 from the others (experiment/wire.py)")
    prefill_chunk: StrictInt | str = Field(
        default="auto", description="positions per frame of a long prompt, pipelined along the chain; auto: the "
                                    "slowest hop's bandwidth-delay product (none without link rates); 0: one frame")
    batch_decode: Annotated[StrictInt, Field(ge=1, le=256, description=(
        "most decode steps of different sessions a node computes as one batch when they wait at once "
        "(concurrency > 1); 1: one at a time"))] = 1
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    encrypt: StrictBool = Field(default=False, description="seal every frame's payload (ChaCha20-Poly1305)")
    faults: list[FaultSpec] = Field(default_factory=list)
    chaos: ChaosOptions | None = Field(default=None, description="a seeded random fault schedule, beside faults")
    timing: dict[str, StrictInt | StrictFloat] = Field(default_factory=dict,
                                                       description="failure-detection knobs (payload.config.Timing)")
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("prefill_chunk", mode="before")
    @classmethod
    def _chunk_is_auto_or_positions(cls, chunk: object) -> object:
        if chunk == "auto" or (isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0):
            return chunk
        raise ValueError(f"prefill_chunk is auto or a number of positions >= 0 (0: one frame), not {chunk!r}")

    @field_validator("links", "failure_p", mode="before")
    @classmethod
    def _link_keys_as_text(cls, links: object) -> object:
        """YAML gives ``2: cellular`` an integer key; users write it so, and mean node 2."""
        if isinstance(links, dict):
            return {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v for k, v in links.items()}
        return links

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        if not self.prompts and not self.prompts_file:
            raise ValueError("give prompts or prompts_file")
        if self.replicas >= self.nodes:
            raise ValueError(f"replicas={self.replicas} needs more than {self.replicas} nodes")
        return self

    def placement_for(self, num_layers: int, memory: dict[int, int] | None = None,
                      costs: list[float] | None = None) -> Placement:
        """The layer placement; ``memory`` (bytes available per layer node) is needed for ``memory``, per-layer
        ``costs`` (experiment/resilient.py) for ``resilient``."""
        if self.placement == "resilient":
            return self.resilient_plan(num_layers, costs).placement
        if self.placement == "even":
            return even_placement(num_layers, self.nodes, self.replicas)
        if self.placement == "memory":
            if memory is None:
                raise ScenarioError("placement: memory needs the nodes' reported memory (after `up`)")
            return memory_weighted_placement(num_layers, memory, self.replicas)
        end = self.placement[-1][1]
        if end != num_layers:
            raise self.error(("placement", len(self.placement) - 1),
                             f"the ranges end at layer {end}, but model {self.model} has {num_layers} layers")
        return explicit_placement(num_layers, list(self.placement), self.replicas)

    def resilient_plan(self, num_layers: int, costs):
        """The resilient plan (with even placement's figure beside it) for ``costs`` (per layer, or a
        :class:`experiment.resilient.SliceCosts`)."""
        from experiment.resilient import resilient_placement

        if costs is None:
            raise ScenarioError("placement: resilient needs per-layer costs (a skip study, or measured)")
        return resilient_placement(num_layers, self.nodes, costs, self.failure_probabilities(),
                                   replicas=self.resilient.copies, capacity=self.resilient.capacity)

    def failure_probabilities(self) -> dict[int, float]:
        """Each layer node's failure probability (``failure_p``; 0.1 where it says nothing)."""
        from experiment.resilient import DEFAULT_FAILURE_P

        found = {k: _by_node(self.failure_p, k) for k in range(1, self.nodes + 1)}
        return {k: float(DEFAULT_FAILURE_P if v is None else v) for k, v in found.items()}

    def error(self, loc: tuple, message: str) -> ScenarioError:
        """A ScenarioError about field ``loc`` of the file this scenario came from, with its line."""
        root = parse(self._source.read_text(encoding="utf-8"))[1] if self._source else None
        return ScenarioError(f"{self._source or 'scenario'}: invalid scenario:\n"
                             + describe_problems([(loc, message)], root, "scenario"))

    def prompt_list(self, base: Path) -> list[str]:
        prompts = list(self.prompts)
        if self.prompts_file:
            path = self.prompts_path(base)
            if not path.is_file():
                raise ScenarioError(f"prompts_file {path} does not exist")
            prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return prompts

    def prompts_path(self, base: Path) -> Path:
        path = Path(self.prompts_file)
        return path if path.is_absolute() else base / path

    def all_faults(self) -> list[FaultSpec]:
        """The scenario's faults and, with ``chaos``, the schedule its seed draws (the same seed, the same one)."""
        from experiment.chaos import draw_chaos

        drawn = [] if self.chaos is None else draw_chaos(self.chaos, self.nodes)
        return [*self.faults, *drawn]

    def profile_of(self, node: int) -> str | dict | None:
        """Link profile for ``node`` from ``links`` (exact index, then 'a-b' ranges, then 'all')."""
        return _by_node(self.links, node)


def _by_node(mapping: dict, node: int):
    """The value for ``node`` in a per-node mapping (exact index, then 'a-b' ranges, then 'all'), or None."""
    if str(node) in mapping:
        return mapping[str(node)]
    for key, value in mapping.items():
        if "-" in key:
            a, b = key.split("-", 1)
            if a.isdigit() and b.isdigit() and int(a) <= node <= int(b):
                return value
    return mapping.get("all")


def problems(scenario: Scenario, base: Path) -> list[Problem]:
    """What spans fields, as (field path, message): see the module docstring."""
    found: list[Problem] = []
    known = set(load_profiles())
    for key, profile in scenario.links.items():
        found += _link_problems(key, profile, scenario.nodes, known)
    prompts = None
    if scenario.prompts_file and not scenario.prompts_path(base).is_file():
        found.append((("prompts_file",), f"{scenario.prompts_path(base)} does not exist"))
    else:
        prompts = scenario.prompt_list(base)
    found += _fault_problems(scenario, prompts, known)
    found += _placement_problems(scenario)
    found += _bridge_problems(scenario, base)
    found += _resilient_problems(scenario, base)
    found += _chaos_problems(scenario)
    if scenario.on_slow == OnSlow.REPLICA and not scenario.replicas and scenario.placement != "resilient":
        found.append((("on_slow",), "on_slow: replica needs replicas (no node holds a copy of a straggler's layers)"))
    timing = {f.name for f in fields(Timing)}
    for name in scenario.timing:
        if name not in timing:
            found.append((("timing", name), f"unknown timing knob; known: {', '.join(sorted(timing))}"))
    if not found:
        try:
            Timing(**scenario.timing)
        except TimingError as exc:
            found.append((("timing", exc.knob), exc.problem))
    return found


def _link_problems(key: str, profile: str | dict, nodes: int, known: set[str]) -> list[Problem]:
    found: list[Problem] = []
    if not _LINK_KEY.match(key):
        return [(("links", key), "a link key is a node index, a range 'a-b' or 'all'")]
    indices = [int(x) for x in key.split("-")] if key != "all" else []
    if any(i > nodes for i in indices) or (len(indices) == 2 and indices[0] > indices[1]):
        found.append((("links", key), f"nodes are 0 (the user node) to {nodes}"))
    problem = _profile_problem(profile, known)
    if problem is not None:
        found.append((("links", key), problem))
    return found


def _profile_problem(profile: str | dict, known: set[str]) -> str | None:
    """What is wrong with a link profile a scenario names or writes inline (links and degrade faults alike)."""
    if isinstance(profile, str):
        return None if profile in known else f"unknown link profile {profile!r}; known: {', '.join(sorted(known))}"
    try:
        profile_from_dict(str(profile.get("name", "inline")), profile)
    except ProfileError as exc:
        return str(exc)
    return None


def _fault_problems(scenario: Scenario, prompts: list[str] | None, known: set[str]) -> list[Problem]:
    found: list[Problem] = []
    for i, fault in enumerate(scenario.faults):
        here = ("faults", i)
        one_way = fault.action == FaultKind.ONE_WAY_PARTITION.value
        first = 0 if one_way else 1  # a one-way partition may cut the user node's link one way
        for target in (*fault.targets, *fault.sinks):
            if not first <= target <= scenario.nodes:
                field = "from" if one_way else "node" if fault.node is not None else "nodes"
                found.append(((*here, field), f"fault targets node {target}, but {'' if one_way else 'layer '}nodes "
                                              f"are {first}..{scenario.nodes}"))
        if one_way and set(fault.targets) & set(fault.sinks):
            found.append(((*here, "to"), "a node cannot be cut off from itself"))
        if fault.at_token is not None and fault.at_token >= scenario.max_new_tokens:
            found.append(((*here, "at_token"), f"token {fault.at_token} is never generated (max_new_tokens "
                                               f"{scenario.max_new_tokens}): the fault would never fire"))
        if prompts is not None and fault.prompt >= len(prompts):
            found.append(((*here, "prompt"), f"prompt {fault.prompt} does not exist ({len(prompts)} prompts)"))
        if fault.repeat >= scenario.repeats:
            found.append(((*here, "repeat"), f"repeat {fault.repeat} does not exist (repeats {scenario.repeats})"))
        if fault.profile is not None and (problem := _profile_problem(fault.profile, known)) is not None:
            found.append(((*here, "profile"), problem))
    if not found:
        found += _sequence_problems(scenario)
    return found


def _sequence_problems(scenario: Scenario) -> list[Problem]:
    """Faults in firing order must make sense for each node: no resume without a pause, nothing after a kill,
    and no pause or cut that nothing ends (the node would stay stopped or cut after the run)."""
    state: dict[tuple[int, str], tuple[str, int]] = {}  # (node, process|link) -> (state, fault that left it so)
    found: list[Problem] = []
    for i, fault in sorted(enumerate(scenario.faults), key=lambda item: item[1].order()):
        if fault.action not in _STATES:
            continue
        machine, allowed, after = _STATES[fault.action]
        for node in (*fault.targets, *fault.sinks):
            now, by = state.get((node, machine), (_INITIAL[machine], -1))
            if now not in allowed:
                cause = f" (by fault {by})" if by >= 0 else ""
                found.append((("faults", i, "action"), f"{fault.action} of node {node}, whose {machine} is "
                                                       f"{now}{cause}: it cannot take effect"))
                continue
            if fault.duration is None:
                state[(node, machine)] = (after, i)
    for (node, machine), (now, by) in sorted(state.items()):
        if now in _UNDO:
            found.append((("faults", by, "action"), f"node {node} would stay {now} after the run: give the "
                                                    f"fault a duration, or add a later {_UNDO[now]}"))
    return found


def _chaos_problems(scenario: Scenario) -> list[Problem]:
    chaos = scenario.chaos
    if chaos is None:
        return []
    found: list[Problem] = [(("chaos", "nodes"), f"chaos names node {n}, but layer nodes are 1..{scenario.nodes}")
                            for n in chaos.nodes or [] if not 1 <= n <= scenario.nodes]
    if chaos.nodes == []:
        found.append((("chaos", "nodes"), "chaos needs at least one node to hit (omit nodes for all)"))
    return found


def _placement_problems(scenario: Scenario) -> list[Problem]:
    if not isinstance(scenario.placement, list):
        return []
    found: list[Problem] = []
    if len(scenario.placement) != scenario.nodes:
        found.append((("placement",), f"lists {len(scenario.placement)} ranges for {scenario.nodes} nodes"))
    expected = 0
    for i, (first, end) in enumerate(scenario.placement):
        if end <= first:
            found.append((("placement", i), f"range [{first}, {end}) holds no layer"))
        elif first != expected:
            what = "a gap" if first > expected else "an overlap"
            found.append((("placement", i), f"starts at layer {first} but the previous range ends at {expected}: "
                                            f"{what}"))
        expected = max(expected, end)
    return found


def _resilient_problems(scenario: Scenario, base: Path) -> list[Problem]:
    found: list[Problem] = [(("failure_p", key), "a failure_p key is a node index, a range 'a-b' or 'all'")
                            for key in scenario.failure_p if not _LINK_KEY.match(key)]
    options = scenario.resilient.model_dump(exclude_defaults=True)
    if scenario.placement != "resilient":
        if options:
            found.append((("resilient",), "resilient options are for placement: resilient"))
        return found
    if scenario.replicas:
        found.append((("replicas",), "placement: resilient places its own replicas (resilient.copies)"))
    criticality = scenario.resilient.criticality
    if criticality and not (Path(criticality) if Path(criticality).is_absolute() else base / criticality).is_file():
        found.append((("resilient", "criticality"), f"{criticality} does not exist"))
    return found


def _bridge_problems(scenario: Scenario, base: Path) -> list[Problem]:
    given = scenario.bridges.model_dump(exclude_none=True)
    if given and not scenario.on_failure.bridges:
        return [(("bridges",), f"bridges are for on_failure: bridge or replica-then-bridge, "
                               f"not {scenario.on_failure.value}")]
    if scenario.bridges.file and (scenario.bridges.corpus or scenario.bridges.ridge is not None
                                  or scenario.bridges.tokens is not None):
        return [(("bridges", "file"), "a bridge file is used as it is: give file, or corpus/ridge/tokens to fit")]
    options = scenario.bridges.options(base)
    return [(("bridges", name), f"{options[name]} does not exist") for name in ("file", "corpus")
            if options[name] and not Path(options[name]).is_file()]


def load_scenario(path: Path | str) -> Scenario:
    """Parse and validate a scenario file; every problem is reported with its field path and line."""
    path = Path(path)
    scenario = load_validated(path, Scenario, what="scenario", error=ScenarioError,
                              checks=lambda s: problems(s, path.parent))
    scenario._source = path
    return scenario


def check_supported(scenario: Scenario, path: Path, testbed: str, supported: frozenset[FaultKind]) -> None:
    """Refuse, naming each fault's line, faults that ``testbed`` cannot inject (before anything starts)."""
    def refused(action: str) -> str:
        return (f"the {testbed} testbed cannot {action.replace('_', ' ')} "
                f"(it supports {', '.join(sorted(k.value for k in supported))})")

    found = [(("faults", i, "action"), refused(fault.action))
             for i, fault in enumerate(scenario.faults) if FaultKind(fault.action) not in supported]
    found += [(("chaos", "kinds"), refused(kind))
              for kind in (scenario.chaos.kinds if scenario.chaos else []) if FaultKind(kind) not in supported]
    if found:
        raise ScenarioError(f"{path}: {len(found)} fault(s) not possible here:\n"
                            + describe_problems(found, parse(Path(path).read_text(encoding="utf-8"))[1], "scenario"))
