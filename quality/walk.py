"""Run one input under many skip sets, computing each shared prefix of layers only once.

Two skip sets that agree on which layers ran up to layer k have the same hidden
state entering layer k.  So the full model's states entering every layer (the
*trunk*) are computed once per input, and each skip set starts from the state
entering its first skipped layer.  Sets that also share their second skipped
layer share the stretch in between, and so on: the sets form a trie, walked
depth first, holding one hidden state per level.

For 18 layers this needs 18 layer calls for the full model, 153 for all single
skips and 816 more for all double skips, against 2,772 if every set ran from
scratch (see :func:`layer_calls`).

A skipped layer passes its entering state on unchanged, or, with a ``stand_in``,
what the stand-in makes of it (a fitted bridge, the previous layer repeated:
:mod:`quality.standins`).  A stand-in acts per layer, so a run of skipped layers
is its layers' stand-ins in turn, and prefixes are shared as before.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import groupby

import torch

from quality.model import Sequence, SkipModel
from quality.skipsets import SkipSet

Visit = Callable[[SkipSet, torch.Tensor], None]
OnLayers = Callable[[int], None]
# (the skipped layers so far, this one last; the state entering it; the input) -> the state leaving it
StandIn = Callable[[SkipSet, torch.Tensor, Sequence], torch.Tensor]


def trunk(model: SkipModel, seq: Sequence, on_layers: OnLayers | None = None) -> list[torch.Tensor]:
    """States of the full model: ``states[k]`` enters layer ``k``; ``states[-1]`` leaves the last layer."""
    states = [seq.embeddings]
    for index in range(model.num_layers):
        states.append(model.run(states[-1], seq, index, index + 1))
    if on_layers:
        on_layers(model.num_layers)
    return states


def walk(
    model: SkipModel,
    seq: Sequence,
    states: list[torch.Tensor],
    sets: list[SkipSet],
    visit: Visit,
    on_layers: OnLayers | None = None,
    stand_in: StandIn | None = None,
) -> None:
    """Call ``visit(skip_set, final_hidden)`` for every set, reusing ``states`` and shared prefixes.

    ``on_layers(n)`` reports each batch of ``n`` layer calls so a progress bar
    can count real work.  The full model, if listed, is visited first.
    """
    wanted = sorted(set(sets))
    if () in wanted:
        visit((), states[-1])
    for first, group in groupby((s for s in wanted if s), key=lambda s: s[0]):
        _descend(model, seq, _skipped(stand_in, (first,), states[first], seq), first + 1, (first,), list(group),
                 visit, on_layers, stand_in)


def _skipped(stand_in: StandIn | None, prefix: SkipSet, hidden: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """The state leaving skipped layer ``prefix[-1]``: unchanged, or its stand-in's."""
    return hidden if stand_in is None else stand_in(prefix, hidden, seq)


def _descend(
    model: SkipModel,
    seq: Sequence,
    hidden: torch.Tensor,
    at: int,
    prefix: SkipSet,
    sets: list[SkipSet],
    visit: Visit,
    on_layers: OnLayers | None,
    stand_in: StandIn | None = None,
) -> None:
    """``hidden`` enters layer ``at`` with the layers in ``prefix`` skipped; every set in ``sets`` starts with ``prefix``."""
    depth = len(prefix)
    for branch, group in groupby((s for s in sets if len(s) > depth), key=lambda s: s[depth]):
        hidden = _advance(model, seq, hidden, at, branch, on_layers)  # kept: it enters the next branches too
        at = branch
        _descend(model, seq, _skipped(stand_in, prefix + (branch,), hidden, seq), branch + 1, prefix + (branch,),
                 list(group), visit, on_layers, stand_in)
    if prefix in sets:
        visit(prefix, _advance(model, seq, hidden, at, model.num_layers, on_layers))


def _advance(model: SkipModel, seq: Sequence, hidden: torch.Tensor, first: int, end: int, on_layers: OnLayers | None):
    if end > first:
        hidden = model.run(hidden, seq, first, end)
        if on_layers:
            on_layers(end - first)
    return hidden


def layer_calls(sets: list[SkipSet], num_layers: int) -> int:
    """Layer calls one input costs under :func:`trunk` plus :func:`walk` (for progress totals and reports)."""
    wanted = sorted(set(sets))
    total = num_layers
    for first, group in groupby((s for s in wanted if s), key=lambda s: s[0]):
        total += _calls(first + 1, (first,), list(group), num_layers)
    return total


def _calls(at: int, prefix: SkipSet, sets: list[SkipSet], num_layers: int) -> int:
    depth = len(prefix)
    total = 0
    for branch, group in groupby((s for s in sets if len(s) > depth), key=lambda s: s[depth]):
        total += max(branch - at, 0)
        at = branch
        total += _calls(branch + 1, prefix + (branch,), list(group), num_layers)
    if prefix in sets:
        total += max(num_layers - at, 0)
    return total
