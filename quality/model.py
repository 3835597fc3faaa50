"""A whole prepared model in one process, run over full sequences with any layers left out.

The study does not need KV caches or nodes: it runs each input once through the
layers it keeps.  It reuses :mod:`payload.slices` for everything model-specific
(the weightless skeleton, per-layer weight files, masks per layer type, rotary
embeddings, the head with Gemma's soft-capping) so that "skipping a layer" here
means exactly what it means on a JARVIS chain: the hidden state goes straight
on to the next layer that is still alive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from payload.slices import Head, ModelSpec, make_mask


@dataclass(frozen=True)
class Sequence:
    """One input sequence, embedded, with the masks and rotary embeddings every layer needs.

    Masks and rotary embeddings depend only on the positions, so they are built
    once per input and shared by every skip set run over it.
    """

    embeddings: torch.Tensor
    position_ids: torch.Tensor
    masks: dict
    rotary: dict


class SkipModel:
    """Embeddings, every decoder layer and the head of a prepared model, in memory at once."""

    def __init__(self, prepared: Path | str, *, dtype: torch.dtype = torch.float32):
        self.spec = ModelSpec(prepared)
        self.head = Head(self.spec, dtype)
        self.layers = self.spec.load_layers(list(range(self.spec.num_layers)), dtype)
        self.layer_types = [self.spec.layer_type(i) for i in range(self.spec.num_layers)]

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    @property
    def config(self):
        return self.spec.config

    @property
    def adds_bos(self) -> bool:
        """Whether inputs start with BOS: lm-evaluation-harness forces it for Gemma, which degrades without it."""
        return str(self.config.model_type).startswith("gemma")

    @property
    def linear_head(self) -> bool:
        """Whether logits are a linear map of the normed final state (no soft-capping, as in Gemma 3 and Llama)."""
        return not self.head.softcap

    @torch.inference_mode()
    def head_input(self, hidden: torch.Tensor) -> torch.Tensor:
        """The normed final state the output head multiplies: ``logits = head_input @ head_weight.T`` when linear."""
        return self.head.norm(hidden.to(self.head.compute_dtype))

    @property
    def head_weight(self) -> torch.Tensor:
        return self.head.lm_head_weight

    @property
    def layer_macs_per_token(self) -> float:
        """Multiply-accumulates of one decoder layer per token (attention scores ignored): the unit of progress."""
        return sum(p.numel() for p in self.layers[0].parameters())

    @property
    def head_macs_per_position(self) -> float:
        """Multiply-accumulates of the output head per scored position (vocab x hidden)."""
        return float(self.head.lm_head_weight.numel())

    @torch.inference_mode()
    def sequence(self, token_ids: list[int] | torch.Tensor) -> Sequence:
        """Embed ``token_ids`` and build the per-layer-type masks and rotary embeddings for them."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(1, -1)
        hidden = self.head.embed_ids(ids)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        types = set(self.layer_types)
        masks = {t: make_mask(self.spec, t, hidden, None, positions, None) for t in types}
        rotary = {t: self.spec.position_embeddings(hidden, positions, t) for t in types}
        return Sequence(hidden, positions, masks, rotary)

    @torch.inference_mode()
    def run(self, hidden: torch.Tensor, seq: Sequence, first: int, end: int) -> torch.Tensor:
        """Apply decoder layers ``[first, end)`` to ``hidden`` (the state entering layer ``first``)."""
        for index in range(first, end):
            layer_type = self.layer_types[index]
            hidden = self.layers[index](
                hidden,
                attention_mask=seq.masks[layer_type],
                position_embeddings=seq.rotary[layer_type],
                position_ids=seq.position_ids,
                cache=None,
                use_cache=False,
            )
        return hidden

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden states [1, T, H] -> logits [1, T, V] (final norm, head, soft-capping)."""
        return self.head.logits(hidden)

    @torch.inference_mode()
    def final_hidden(self, token_ids: list[int] | torch.Tensor, skip: tuple[int, ...] = ()) -> torch.Tensor:
        """Last layer's output for the whole sequence with the layers in ``skip`` left out, from scratch.

        This is the plain definition of a skip set: the shared-prefix walk of
        :mod:`quality.walk` must agree with it, and generation uses it directly.
        """
        seq = self.sequence(token_ids)
        hidden = seq.embeddings
        for index in range(self.num_layers):
            if index not in skip:
                hidden = self.run(hidden, seq, index, index + 1)
        return hidden


def load_tokenizer(prepared: Path | str):
    """The prepared model's tokenizer (saved next to its config by ``payload.prepare``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(prepared))
