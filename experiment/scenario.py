"""Scenario files: YAML validated with pydantic, errors naming the field and its line."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from payload.errors import JarvisError
from payload.routing import Placement, Policy, even_placement, explicit_placement, memory_weighted_placement
from testbed.interface import FaultKind
from testbed.yamlfile import describe_problems, load_validated, parse


class ScenarioError(JarvisError, ValueError):
    """A scenario file is missing, not YAML, or does not validate; the message names field and line."""


class FaultSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: Literal[tuple(k.value for k in FaultKind)]  # type: ignore[valid-type]
    node: int | None = None
    nodes: list[int] | None = None
    at_token: int | None = Field(default=None, ge=0)
    at_seconds: float | None = Field(default=None, ge=0)
    prompt: int = Field(default=0, ge=0, description="index of the prompt during which the fault fires")
    repeat: int = Field(default=0, ge=0)
    duration: float | None = Field(default=None, gt=0)
    profile: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "FaultSpec":
        if (self.at_token is None) == (self.at_seconds is None):
            raise ValueError("give exactly one of at_token or at_seconds")
        if (self.node is None) == (self.nodes is None):
            raise ValueError("give exactly one of node or nodes")
        if self.action == "degrade" and not self.profile:
            raise ValueError("degrade needs a profile")
        return self

    @property
    def targets(self) -> tuple[int, ...]:
        return tuple(self.nodes) if self.nodes is not None else (int(self.node),)


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(default=0.0, ge=0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    model: str = "gemma3-270m"
    nodes: int = Field(ge=1, le=250)
    placement: Literal["even", "memory"] | list[tuple[int, int]] = "even"
    replicas: int = Field(default=0, ge=0)
    on_failure: Policy = Policy.SKIP
    links: dict[str, str | dict] = Field(default_factory=dict, description="node index, range 'a-b' or 'all' -> profile")
    prompts: list[str] = Field(default_factory=list)
    prompts_file: str | None = None
    max_new_tokens: int = Field(default=32, ge=1)
    sampling: Sampling = Field(default_factory=Sampling)
    seed: int = 0
    repeats: int = Field(default=1, ge=1)
    concurrency: int = Field(default=1, ge=1)
    chat: bool = Field(default=False, description="wrap prompts in the model's chat template (instruct models)")
    wire_dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    faults: list[FaultSpec] = Field(default_factory=list)
    timing: dict[str, float] = Field(default_factory=dict, description="failure-detection knobs (payload.config.Timing)")

    @model_validator(mode="after")
    def _check(self) -> "Scenario":
        if not self.prompts and not self.prompts_file:
            raise ValueError("give prompts or prompts_file")
        for fault in self.faults:
            for target in fault.targets:
                if not 1 <= target <= self.nodes:
                    raise ValueError(f"fault targets node {target}, but layer nodes are 1..{self.nodes}")
        from dataclasses import fields

        from payload.config import Timing

        unknown = set(self.timing) - {f.name for f in fields(Timing)}
        if unknown:
            raise ValueError(f"unknown timing keys {sorted(unknown)}; known: {[f.name for f in fields(Timing)]}")
        if self.replicas >= self.nodes:
            raise ValueError(f"replicas={self.replicas} needs more than {self.replicas} nodes")
        return self

    def placement_for(self, num_layers: int, memory: dict[int, int] | None = None) -> Placement:
        """The layer placement; ``memory`` (bytes available per layer node) is needed for ``memory``."""
        if self.placement == "even":
            return even_placement(num_layers, self.nodes, self.replicas)
        if self.placement == "memory":
            if memory is None:
                raise ScenarioError("placement: memory needs the nodes' reported memory (after `up`)")
            return memory_weighted_placement(num_layers, memory, self.replicas)
        if len(self.placement) != self.nodes:
            raise ScenarioError(f"placement lists {len(self.placement)} ranges for {self.nodes} nodes")
        return explicit_placement(num_layers, list(self.placement), self.replicas)

    def prompt_list(self, base: Path) -> list[str]:
        prompts = list(self.prompts)
        if self.prompts_file:
            path = (base / self.prompts_file) if not Path(self.prompts_file).is_absolute() else Path(self.prompts_file)
            if not path.exists():
                raise ScenarioError(f"prompts_file {path} does not exist")
            prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return prompts

    def profile_of(self, node: int) -> str | dict | None:
        """Link profile for ``node`` from ``links`` (exact index, then 'a-b' ranges, then 'all')."""
        if str(node) in self.links:
            return self.links[str(node)]
        for key, value in self.links.items():
            if "-" in key:
                a, b = key.split("-", 1)
                if a.isdigit() and b.isdigit() and int(a) <= node <= int(b):
                    return value
        return self.links.get("all")


def load_scenario(path: Path | str) -> Scenario:
    """Parse and validate a scenario file; every problem is reported with its field path and line."""
    return load_validated(path, Scenario, what="scenario", error=ScenarioError)


def check_supported(scenario: Scenario, path: Path, testbed: str, supported: frozenset[FaultKind]) -> None:
    """Refuse, naming each fault's line, faults that ``testbed`` cannot inject (before anything starts)."""
    problems = [(("faults", i, "action"), f"the {testbed} testbed cannot {fault.action.replace('_', ' ')} "
                 f"(it supports {', '.join(sorted(k.value for k in supported))})")
                for i, fault in enumerate(scenario.faults) if FaultKind(fault.action) not in supported]
    if problems:
        raise ScenarioError(f"{path}: {len(problems)} fault(s) not possible here:\n"
                            + describe_problems(problems, parse(Path(path).read_text(encoding="utf-8"))[1], "scenario"))
