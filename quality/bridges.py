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

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file

from payload.bridges import FORMAT, Bridge, load_bridges
from quality.corpus import Window, read_corpus
from quality.errors import StudyError
from quality.model import SkipModel, load_tokenizer
from quality.walk import trunk

DEFAULT_RIDGE = 1e-4  # best of 1e-4, 1e-3, 1e-2 on Gemma 3 270M (benchmarks/bridges.py)
DEFAULT_CALIBRATION_TOKENS = 4096  # the bundled corpus past the skip study's 2,048 evaluated tokens holds ~3,200
STUDY_TOKENS, STUDY_WINDOW = 2048, 512  # the skip study's defaults (quality/study.py): never calibrate on them


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


def calibration_windows(stream: list[int], *, bos: int | None, own_file: bool, limit: int,
                        evaluated: int = STUDY_TOKENS, window: int = STUDY_WINDOW) -> list[Window]:
    """Windows of calibration text (inputs only): a user's file whole, the bundled corpus past the tokens the
    skip study evaluates (its first ``evaluated`` predictions, with one context token per window when there is no BOS),
    so that a study of bridged chains never scores text the bridges were fitted on."""
    held_out = 0 if own_file else evaluated + (0 if bos is not None else math.ceil(evaluated / window))
    rest = stream[held_out:held_out + limit]
    if len(rest) < 2:
        raise StudyError(f"the calibration text has {len(rest)} tokens past the study's; give a longer corpus")
    prefix = [bos] if bos is not None else []
    return [Window(tuple(prefix + rest[i:i + window]), ()) for i in range(0, len(rest), window)]


def bridge_file(prepared: Path, spans: list[tuple[int, int]], *, corpus: Path | None = None,
                ridge: float = DEFAULT_RIDGE, tokens: int = DEFAULT_CALIBRATION_TOKENS,
                progress: Callable[[str], None] = print) -> Path:
    """The bridges of ``spans`` (a placement's slices) fitted on ``prepared``: cached beside the prepared model,
    keyed by the spans, the calibration text, the ridge and the token budget; fitted on first use."""
    text = read_corpus(corpus)
    key = hashlib.sha256(json.dumps({"format": FORMAT, "spans": [list(s) for s in spans], "ridge": ridge,
                                     "tokens": tokens, "corpus": hashlib.sha256(text.encode()).hexdigest()},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = Path(prepared) / "bridges" / f"{len(spans)}-slices-{key}.safetensors"
    if path.is_file():
        return path
    started = time.monotonic()
    model, tokenizer = SkipModel(prepared), load_tokenizer(prepared)
    bos = tokenizer.bos_token_id if model.adds_bos else None
    cut = calibration_windows(tokenizer.encode(text, add_special_tokens=False), bos=bos, own_file=corpus is not None,
                              limit=tokens)
    count = sum(len(w.token_ids) for w in cut)
    progress(f"[bridges] fitting {len(spans)} bridges on {count} calibration tokens "
             f"({'bundled corpus, past the study text' if corpus is None else corpus}), ridge {ridge:g}")
    bridges = fit_bridges(calibration_states(model, cut), spans, ridge=ridge)
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    save_bridges(bridges, staging, meta={"spans": [list(s) for s in spans], "ridge": ridge, "tokens": count,
                                         "corpus": str(corpus) if corpus else "bundled"})
    staging.replace(path)  # whole or absent: a concurrent or interrupted fit never leaves half a file
    progress(f"[bridges] {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.monotonic() - started:.1f} s")
    return path


__all__ = ["Bridge", "bridge_file", "calibration_states", "calibration_windows", "compose", "fit_affine", "fit_bridges", "load_bridges", "save_bridges"]
