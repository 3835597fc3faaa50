"""What stands in for a skipped layer in the skip study: nothing (plain skip), a fitted bridge, or the layer
before it applied again (the cheap baseline).

The study scores every skip set under each method asked for (``fab skip-study --methods skip,bridge,repeat``),
so a bridge's benefit is measured on the same tokens and questions as skipping, paired.  Bridges here are
per layer (the skip study's sets are sets of layers), fitted with :mod:`quality.bridges` on the study's corpus
past the tokens it evaluates; a run of skipped layers is their bridges composed, as the chain composes its
slices' bridges.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quality.bridges import DEFAULT_CALIBRATION_TOKENS, DEFAULT_RIDGE, calibration_states, calibration_windows, \
    fit_bridges
from quality.errors import StudyError
from quality.model import Sequence, SkipModel
from quality.skipsets import SkipSet
from quality.walk import StandIn

METHODS = ("skip", "bridge", "repeat")


def check_methods(methods: list[str]) -> list[str]:
    """Normalised method names, ``skip`` first (every other method is compared with it)."""
    names = [m.strip().lower() for item in methods for m in str(item).split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise StudyError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return ["skip"] + [m for m in dict.fromkeys(names) if m != "skip"]


def layer_bridges(model: SkipModel, stream: list[int], *, bos: int | None, evaluated: int, window: int,
                  tokens: int = DEFAULT_CALIBRATION_TOKENS, ridge: float = DEFAULT_RIDGE,
                  log: Callable[[str], None] = print) -> StandIn:
    """One bridge per layer, fitted on ``stream`` past its first ``evaluated`` predictions, as a stand-in."""
    cut = calibration_windows(stream, bos=bos, own_file=False, limit=tokens, evaluated=evaluated, window=window)
    log(f"bridges: fitting {model.num_layers} per-layer bridges on {sum(len(w.token_ids) for w in cut)} "
        f"calibration tokens past the {evaluated} evaluated ones (ridge {ridge:g})")
    bridges = {b.first: b for b in fit_bridges(calibration_states(model, cut),
                                               [(k, k + 1) for k in range(model.num_layers)], ridge=ridge)}
    return lambda skipped, hidden, seq: bridges[skipped[-1]].apply(hidden)


def repeat_previous(model: SkipModel) -> StandIn:
    """The layer before a run of skipped layers, applied once more in the run's place (as the chain's
    cheapest stand-in would: the node before a gap runs its last layer again).  A run from layer 0 has no
    layer before it: it is skipped."""
    def stand_in(skipped: SkipSet, hidden: torch.Tensor, seq: Sequence) -> torch.Tensor:
        layer = skipped[-1]
        if layer == 0 or layer - 1 in skipped:
            return hidden
        return model.run(hidden, seq, layer - 1, layer)

    return stand_in
