"""Choosing the next token from the head's logits: greedy, or seeded sampling with top-k / top-p."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """Greedy by default; temperature > 0 samples with top-k / top-p under a seed."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Pick the next token from logits [V]."""
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float() / sampling.temperature
    if sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        ordered, index = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(ordered, dim=-1)
        ordered[(cumulative - ordered) > sampling.top_p] = 0
        probs = torch.zeros_like(probs).scatter(0, index, ordered)
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))
