"""Example generations under chosen skip sets, labelled functioning / degraded / critical by a fixed rule.

Generation runs the kept layers as JARVIS would after a failure: contiguous
runs of surviving layers become :class:`payload.slices.LayerSlice` chains, each
with its own KV cache, and the hidden state jumps over the skipped layers.
Decoding is greedy, so a run is reproducible.

The label rule (documented in docs/skip-study.md) combines two numbers:

* ``kl``: the skip set's mean next-token KL from the full model on the corpus,
  a stable measure of how far its predictions move;
* ``repetition``: the share of repeated token 3-grams in the continuation
  beyond what the full model produces for the same prompt (small base models
  loop even when intact, so only extra looping counts).

``critical`` if kl ≥ CRITICAL_KL or the extra repetition ≥ CRITICAL_LOOP;
``degraded`` if kl ≥ DEGRADED_KL or the extra repetition ≥ DEGRADED_LOOP;
``functioning`` otherwise.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import torch

from payload.frames import WireDtype
from payload.slices import LayerSlice
from payload.tensors import to_wire
from quality.model import SkipModel
from quality.progress import Bar
from quality.skipsets import SkipSet, label

# Calibrated on the bundled models (docs/skip-study.md): below 0.5 nats the
# text stays on topic; above 3 nats it turns to foreign-script word salad.
DEGRADED_KL = 0.5
CRITICAL_KL = 3.0
DEGRADED_LOOP = 0.3
CRITICAL_LOOP = 0.6
MAX_NEW_TOKENS = 32
# The study's examples: a factual question (a damaged model answers "Barcelona"-style) and a greeting ("Hi!").
CHAT_PROMPTS = ("What is the capital of Spain?", "Hi!")
BASE_PROMPTS = ("The capital of France is Paris. The capital of Spain is", "Hi!")


@dataclass(frozen=True)
class Example:
    """One greedy continuation of one prompt under one skip set, with its label and the numbers behind it."""

    skip: SkipSet
    prompt: str
    completion: str
    kl: float
    repetition: float
    extra_repetition: float
    label: str


def classify(kl: float, extra_repetition: float) -> str:
    """The documented rule: thresholds on corpus KL and on repetition beyond the full model's."""
    if kl >= CRITICAL_KL or extra_repetition >= CRITICAL_LOOP:
        return "critical"
    if kl >= DEGRADED_KL or extra_repetition >= DEGRADED_LOOP:
        return "degraded"
    return "functioning"


def repetition(tokens: list[int], n: int = 3) -> float:
    """Share of token n-grams that repeat an earlier one: 0 for fresh text, near 1 for ' I I I I'."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def pick_sets(kl: dict[SkipSet, float], requested: list[SkipSet]) -> list[SkipSet]:
    """The full model, then per set size the mildest set, the one nearest mid-"degraded", and the worst; then ``requested``.

    Picking by KL band makes every label appear whenever the study holds a
    set that earns it.
    """
    middle = (DEGRADED_KL * CRITICAL_KL) ** 0.5
    chosen: list[SkipSet] = [()]
    for size in sorted({len(s) for s in kl if s}):
        ranked = sorted((s for s in kl if len(s) == size), key=lambda s: kl[s])
        chosen += [ranked[0], min(ranked, key=lambda s: abs(kl[s] - middle)), ranked[-1]]
    chosen += requested
    return list(dict.fromkeys(chosen))


def prompt_ids(tokenizer, model: SkipModel, prompt: str) -> list[int]:
    """Chat models get their chat template; base models a BOS (when they use one) and the raw prompt."""
    if tokenizer.chat_template:
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
    bos = [tokenizer.bos_token_id] if model.adds_bos and tokenizer.bos_token_id is not None else []
    return bos + tokenizer.encode(prompt, add_special_tokens=False)


def chain(model: SkipModel, skip: SkipSet) -> list[LayerSlice]:
    """The surviving layers as contiguous slices, as a JARVIS chain would hold them after failures."""
    spans, first = [], None
    for index in range(model.num_layers + 1):
        alive = index < model.num_layers and index not in skip
        if alive and first is None:
            first = index
        elif not alive and first is not None:
            spans.append((first, index))
            first = None
    return node_slices(model, spans)


def node_slices(model: SkipModel, spans: list[tuple[int, int]]) -> list[LayerSlice]:
    """One slice per ``[first, end)`` span, sharing the model's layers (nodes of a placement, in one process)."""
    return [LayerSlice(spec=model.spec, first=a, end=b, layers={i: model.layers[i] for i in range(a, b)})
            for a, b in spans]


@torch.inference_mode()
def generate(model: SkipModel, ids: list[int], skip: SkipSet, *, stop: set[int], max_new_tokens: int,
             spans: list[tuple[int, int]] | None = None, wire: WireDtype | None = None) -> list[int]:
    """Greedy continuation of ``ids`` with the layers in ``skip`` left out (KV-cached, one token per step).

    With ``spans`` and ``wire``: the layers held as those node slices, the hidden state rounded to ``wire``
    as it leaves the user node and each slice, as on a chain."""
    slices = chain(model, skip) if spans is None else node_slices(model, spans)
    caches = [s.new_cache() for s in slices]
    out: list[int] = []
    step = torch.tensor([ids])
    position = torch.arange(len(ids)).unsqueeze(0)
    for _ in range(max_new_tokens):
        hidden = model.head.embed_ids(step)
        hidden = hidden if wire is None else to_wire(hidden, wire)
        for layer_slice, cache in zip(slices, caches):
            hidden = layer_slice.forward(hidden, position, cache)
            hidden = hidden if wire is None else to_wire(hidden, wire)
        token = int(model.logits(hidden[:, -1:])[0, -1].argmax())
        if token in stop:
            break
        out.append(token)
        step = torch.tensor([[token]])
        position = position[:, -1:] + 1
    return out


def stop_tokens(tokenizer, model: SkipModel) -> set[int]:
    """End-of-sequence ids from the tokenizer and the config (chat models end turns with their own token)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.config, "eos_token_id", None)
    ids |= set(configured) if isinstance(configured, list) else {configured}
    return {i for i in ids if i is not None}


def prompts_for(tokenizer) -> tuple[str, ...]:
    """Chat prompts for chat models, completion prompts for base models."""
    return CHAT_PROMPTS if tokenizer.chat_template else BASE_PROMPTS


def run_examples(model: SkipModel, tokenizer, kl: dict[SkipSet, float], sets: list[SkipSet], bar: Bar) -> list[Example]:
    """Generate every prompt under every set in ``sets`` (the full model first) and label the results."""
    prompts = prompts_for(tokenizer)
    sets = list(dict.fromkeys([(), *sets]))  # the full model's repetition is the baseline
    stop = stop_tokens(tokenizer, model)
    examples = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, model, prompt)
        full_repetition = None
        for skip in sets:
            tokens = generate(model, ids, skip, stop=stop, max_new_tokens=MAX_NEW_TOKENS)
            rep = repetition(tokens)
            full_repetition = rep if full_repetition is None else full_repetition
            extra = max(rep - full_repetition, 0.0)
            examples.append(Example(
                skip, prompt, tokenizer.decode(tokens), kl[skip], rep, extra, classify(kl[skip], extra)
            ))
            bar.advance(1)
    return examples


def write_examples(examples: list[Example], out: Path) -> list[Path]:
    """``examples.csv`` (one row per generation) and ``examples.md`` (readable, grouped by prompt)."""
    csv_path, md_path = out / "examples.csv", out / "examples.md"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["skip_set", "prompt", "completion", "kl", "repetition", "extra_repetition", "label"])
        for e in examples:
            writer.writerow([label(e.skip), e.prompt, e.completion, f"{e.kl:.4g}", f"{e.repetition:.3f}",
                             f"{e.extra_repetition:.3f}", e.label])
    lines = [
        "# Example generations under layer skips",
        "",
        f"Greedy, up to {MAX_NEW_TOKENS} new tokens.  Label rule: critical if corpus KL ≥ {CRITICAL_KL} nats "
        f"or repetition beyond the full model's ≥ {CRITICAL_LOOP}; degraded if KL ≥ {DEGRADED_KL} "
        f"or extra repetition ≥ {DEGRADED_LOOP}; functioning otherwise.  Layers are 0-based.",
    ]
    for prompt in dict.fromkeys(e.prompt for e in examples):
        lines += ["", f"## Prompt: {prompt!r}", "", "| skipped | label | KL | rep. | continuation |", "|---|---|---|---|---|"]
        for e in (e for e in examples if e.prompt == prompt):
            text = e.completion.replace("|", "\\|").replace("\n", "⏎")
            lines.append(f"| {label(e.skip)} | {e.label} | {e.kl:.3g} | {e.repetition:.2f} | {text} |")
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [csv_path, md_path]
