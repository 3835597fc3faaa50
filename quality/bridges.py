"""Bridges: an affine map fitted in closed form that stands in for a lost slice of decoder layers.

A node holding layers ``[first, end)`` turns the hidden state entering layer ``first`` into the state
leaving layer ``end - 1``.  When it is lost, skipping passes the entering state on unchanged; a bridge
passes ``x W + b`` instead, where ``W`` and ``b`` minimise the squared error over a calibration corpus
(ReplaceMe, NeurIPS 2025, fits such maps without training).  The fit is ridge least squares on centred
data, so the bias is not penalised::

    W = (Xc^T Xc + lambda I)^-1 Xc^T Yc,    b = mean(Y) - mean(X) W,    lambda = ridge * trace(Xc^T Xc) / H

(``ridge`` is relative to the mean variance of the inputs, so one value suits models of any width), solved
in float64.  A bridge is hidden^2 + hidden numbers: 640^2 for Gemma 3 270M, 0.8 MB in bf16.

Bridges are saved as safetensors (``weight.<first>-<last>``, ``bias.<first>-<last>``, layers inclusive
as in placement files) beside the prepared model they were fitted on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from quality.corpus import Window
from quality.errors import StudyError
from quality.model import SkipModel
from quality.walk import trunk

DEFAULT_RIDGE = 1e-4  # best of 1e-4, 1e-3, 1e-2 on Gemma 3 270M (benchmarks/bridges.py)
FORMAT = "jarvis-bridges-1"


@dataclass(frozen=True)
class Bridge:
    """The affine stand-in for decoder layers ``[first, end)``: ``out = hidden @ weight + bias``."""

    first: int
    end: int
    weight: torch.Tensor  # [hidden, hidden]
    bias: torch.Tensor  # [hidden]

    @property
    def key(self) -> str:
        return f"{self.first}-{self.end - 1}"

    def apply(self, hidden: torch.Tensor) -> torch.Tensor:
        """The bridged state for ``hidden`` [..., hidden], computed in float32 and returned in its dtype."""
        out = hidden.to(torch.float32) @ self.weight.to(torch.float32) + self.bias.to(torch.float32)
        return out.to(hidden.dtype)


def fit_affine(inputs: torch.Tensor, targets: torch.Tensor, *, ridge: float = DEFAULT_RIDGE
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) minimising ``|X W + b - Y|^2 + lambda |W|^2`` for rows ``inputs`` [N, H] -> ``targets`` [N, H]."""
    if inputs.ndim != 2 or inputs.shape != targets.shape:
        raise StudyError(f"a bridge maps [N, H] to [N, H]; got {tuple(inputs.shape)} -> {tuple(targets.shape)}")
    if ridge < 0:
        raise StudyError(f"ridge must be >= 0, got {ridge}")
    x, y = inputs.to(torch.float64), targets.to(torch.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    strength = ridge * torch.trace(gram) / gram.shape[0]
    weight = torch.linalg.solve(gram + strength * torch.eye(gram.shape[0], dtype=torch.float64), xc.T @ yc)
    return weight.to(torch.float32), (y_mean - x_mean @ weight).to(torch.float32)


@torch.inference_mode()
def calibration_states(model: SkipModel, windows: Iterable[Window]) -> list[torch.Tensor]:
    """The full model's states over ``windows``: entry ``k`` [N, H] enters layer ``k`` (the last leaves the model)."""
    per_layer: list[list[torch.Tensor]] = [[] for _ in range(model.num_layers + 1)]
    for window in windows:
        for k, state in enumerate(trunk(model, model.sequence(window.token_ids))):
            per_layer[k].append(state[0])
    return [torch.cat(states) for states in per_layer]


def fit_bridges(states: list[torch.Tensor], spans: Iterable[tuple[int, int]], *,
                ridge: float = DEFAULT_RIDGE) -> list[Bridge]:
    """One bridge per ``(first, end)`` span, from :func:`calibration_states`."""
    bridges = []
    for first, end in spans:
        if not 0 <= first < end < len(states):
            raise StudyError(f"span {first}-{end - 1} is not within the model's {len(states) - 1} layers")
        bridges.append(Bridge(first, end, *fit_affine(states[first], states[end], ridge=ridge)))
    return bridges


def compose(bridges: list[Bridge]) -> Bridge:
    """Consecutive single-slice bridges as one: (x W1 + b1) W2 + b2."""
    for a, b in zip(bridges, bridges[1:]):
        if a.end != b.first:
            raise StudyError(f"bridges {a.key} and {b.key} are not consecutive")
    weight, bias = bridges[0].weight, bridges[0].bias
    for bridge in bridges[1:]:
        weight, bias = weight @ bridge.weight, bias @ bridge.weight + bridge.bias
    return Bridge(bridges[0].first, bridges[-1].end, weight, bias)


def save_bridges(bridges: list[Bridge], path: Path, *, meta: dict | None = None) -> Path:
    """Write ``bridges`` as one safetensors file (bf16 would halve it; float32 keeps the fit exact)."""
    tensors = {}
    for bridge in bridges:
        tensors[f"weight.{bridge.key}"] = bridge.weight.contiguous()
        tensors[f"bias.{bridge.key}"] = bridge.bias.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": FORMAT, "meta": json.dumps(meta or {})})
    return path


def load_bridges(path: Path) -> dict[str, Bridge]:
    """The bridges in ``path``, by key (``first-last``)."""
    tensors = load_file(str(path))
    bridges = {}
    for name, weight in tensors.items():
        kind, _, key = name.partition(".")
        if kind != "weight":
            continue
        first, last = (int(x) for x in key.split("-"))
        bridges[key] = Bridge(first, last + 1, weight, tensors[f"bias.{key}"])
    return bridges
