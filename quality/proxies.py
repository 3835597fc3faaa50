"""Per-token proxies of damage, measured against the full model on a text corpus.

For every skip set and every corpus token this records the negative
log-likelihood of the true next token (perplexity), the KL divergence from the
full model's next-token distribution to the skipped model's, and whether the
skipped model's most likely token is the full model's.  They show damage on
models too small for MMLU to (see docs/skip-study.md).

The output head is the expensive part on large-vocabulary models (Gemma 3's
262k-token head costs more than its 18 layers), so after its head pass each
set makes only three in-place sweeps over its logits (on this CPU a fresh
134 MB tensor costs more than the arithmetic): a max, a subtraction and an
exponential for its log-sum-exp.  Top-1 agreement is "the full model's top
token reaches the skipped model's max" (a gather; argmax is four times slower
than max here).  KL uses per-token numbers kept for the full model::

    KL(p || q) = sum_v p_v (z_p - z_q)_v - (lse_p - lse_q) * sum_v p_v

(z are logits).  When the head is linear (z = W h, no soft-capping) the first
term is ``(h_p - h_q) . (p W)``: ``p W`` is computed once per window, and each
set pays an H-sized dot product instead of a vocabulary-sized one.  Taking
differences before summing keeps float32 honest: against a float64 reference
on Gemma this is off by 1e-5 nats per token, where ``sum p z_p - sum p z_q``
was off by 1e-3 and the textbook ``sum p log p - sum p log q`` left 0.002
nats for an unchanged model.  An unchanged model gives exactly 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from quality.corpus import Window
from quality.model import SkipModel
from quality.progress import Bar
from quality.skipsets import SkipSet
from quality.walk import StandIn, layer_calls, trunk, walk

# Positions per head call: bounds the [positions, vocab] logits tensor (128 x 262k floats = 134 MB).
HEAD_CHUNK = 128
# Tokens per bootstrap block: neighbouring tokens are correlated, so resampling
# single tokens would make intervals too narrow; 64-token blocks keep most of
# that dependence inside a block and still give 32 blocks on 2,048 tokens.
BLOCK_TOKENS = 64


@dataclass(frozen=True)
class ProxyScores:
    """Per-token proxy values, one row per skip set (row order = ``sets``)."""

    sets: list[SkipSet]
    nll: np.ndarray
    kl: np.ndarray
    top1: np.ndarray
    blocks: np.ndarray
    seconds_full: float
    seconds_sets: float

    def row(self, skip: SkipSet) -> int:
        return self.sets.index(skip)


@dataclass(frozen=True)
class _Reduced:
    """What the metrics need from one chunk of a set's logits [positions, vocab]."""

    peak: torch.Tensor  # max logit
    picked: torch.Tensor  # logits at the requested token ids [positions, k]
    lse: torch.Tensor  # log-sum-exp


def _reduce(logits: torch.Tensor, picks: torch.Tensor) -> _Reduced:
    """Reduce logits in three sweeps; ``logits`` is overwritten (it is 134 MB per chunk on Gemma)."""
    peak = logits.amax(dim=-1)
    picked = logits.gather(1, picks)
    lse = peak + logits.sub_(peak[:, None]).exp_().sum(-1).log()
    return _Reduced(peak, picked, lse)


class Reference:
    """The full model's next-token distribution over one window, chunk by chunk."""

    def __init__(self, model: SkipModel, hidden: torch.Tensor):
        self.linear = model.linear_head
        self.mass, self.top, self.reduced = [], [], []
        self.normed, self.projected = [], []  # linear heads
        self.probs, self.logits = [], []  # soft-capped heads
        for start in range(0, hidden.shape[1], HEAD_CHUNK):
            part = hidden[:, start : start + HEAD_CHUNK]
            logits = model.logits(part)[0]
            probs = torch.softmax(logits, dim=-1)
            self.mass.append(probs.sum(-1))
            self.top.append(logits.argmax(-1, keepdim=True))
            if self.linear:
                self.normed.append(model.head_input(part)[0])
                self.projected.append(probs @ model.head_weight)  # [positions, hidden]: p W
            else:
                self.probs.append(probs)
                self.logits.append(logits.clone())
            self.reduced.append(_reduce(logits, self.top[-1]))

    def gap(self, model: SkipModel, chunk: int, hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``sum_v p_v (z_p - z_q)_v`` for a set's final states and logits (before they are overwritten)."""
        if self.linear:
            return ((self.normed[chunk] - model.head_input(hidden)[0]) * self.projected[chunk]).sum(-1)
        return torch.einsum("tv,tv->t", self.probs[chunk], self.logits[chunk] - logits)


def token_metrics(model: SkipModel, hidden: torch.Tensor, ref: Reference, targets: torch.Tensor):
    """(nll, kl, top1) per position of one window, for the final hidden states of one skip set."""
    nll, kl, top1 = [], [], []
    for chunk, start in enumerate(range(0, hidden.shape[1], HEAD_CHUNK)):
        part = hidden[:, start : start + HEAD_CHUNK]
        logits = model.logits(part)[0]
        gap = ref.gap(model, chunk, part, logits)
        q = _reduce(logits, torch.cat([targets[start : start + HEAD_CHUNK, None], ref.top[chunk]], dim=1))
        nll.append(q.lse - q.picked[:, 0])
        # KL is never negative; float rounding can leave -1e-6 for nearly identical distributions.
        kl.append((gap - (ref.reduced[chunk].lse - q.lse) * ref.mass[chunk]).clamp_min(0.0))
        top1.append(q.picked[:, 1] >= q.peak)  # ties with the max count as agreement
    return torch.cat(nll), torch.cat(kl), torch.cat(top1)


def proxy_work(model: SkipModel, windows: list[Window], sets: list[SkipSet]) -> float:
    """Multiply-accumulates :func:`evaluate_proxies` will do (the progress bar's total)."""
    calls = layer_calls(sets, model.num_layers)
    tokens = sum(len(w.token_ids) for w in windows)
    heads = 1 + len(set(sets))  # the reference pass, then one per set
    return tokens * (calls * model.layer_macs_per_token + heads * model.head_macs_per_position)


@torch.inference_mode()
def evaluate_proxies(model: SkipModel, windows: list[Window], sets: list[SkipSet], bar: Bar,
                     stand_in: StandIn | None = None) -> ProxyScores:
    """Score every skip set on every window, reusing the full model's states across sets (skipped layers
    replaced by ``stand_in``, if given)."""
    sets = list(dict.fromkeys(sets))
    rows = {skip: i for i, skip in enumerate(sets)}
    total = sum(len(w.targets) for w in windows)
    nll = np.zeros((len(sets), total), dtype=np.float64)
    kl = np.zeros_like(nll)
    top1 = np.zeros((len(sets), total), dtype=bool)
    blocks = np.zeros(total, dtype=np.int64)
    seconds_full = seconds_sets = 0.0
    offset = block_base = 0
    for window in windows:
        length = len(window.targets)
        span = slice(offset, offset + length)
        blocks[span] = block_base + np.arange(length) // BLOCK_TOKENS
        targets = torch.tensor(window.targets)
        layer_work = length * model.layer_macs_per_token
        head_work = length * model.head_macs_per_position

        started = time.perf_counter()
        seq = model.sequence(window.token_ids)
        states = trunk(model, seq, lambda n: bar.advance(n * layer_work))
        ref = Reference(model, states[-1])
        bar.advance(head_work)
        seconds_full += time.perf_counter() - started

        def visit(skip: SkipSet, hidden: torch.Tensor) -> None:
            values = token_metrics(model, hidden, ref, targets)
            row = rows[skip]
            nll[row, span], kl[row, span], top1[row, span] = (v.numpy() for v in values)
            bar.advance(head_work)

        started = time.perf_counter()
        walk(model, seq, states, sets, visit, lambda n: bar.advance(n * layer_work), stand_in)
        seconds_sets += time.perf_counter() - started
        offset += length
        block_base = int(blocks[offset - 1]) + 1
    return ProxyScores(sets, nll, kl, top1, blocks, seconds_full, seconds_sets)
