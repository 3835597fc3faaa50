"""Load and run a contiguous slice of decoder layers, one KV cache per session.

A node builds the model skeleton on the ``meta`` device (no memory), then
materialises only its own layers from their per-layer safetensors files, so its
memory scales with its slice.  Running a slice mirrors the family's
``Model.forward`` (masks per layer type, rotary embeddings, decoder layers)
with two differences that matter when layers live on different nodes:

* position ids travel with the hidden states (a node's cache slot 0 is empty,
  so ``cache.get_seq_length()`` would lie), and
* masks are built with ``layer_idx`` set to the first layer of each type on
  this slice, so they are sized from a slot this node actually fills.

Batched decode (:meth:`LayerSlice.forward_rows`) runs the decoder layers once over one position of several
sessions: every operation of a layer but attention is row-wise, and attention runs per row against that row's
own cache (:class:`RowsKV`).  A row's result then depends on its own values, the batch's size and its place in
it, never on the other rows, so the oracle replays a batched step with zeros in the other rows.

The code targets the transformers 5.24 layer API (``cache=`` keyword, no
``cache_position``); the version is pinned because that API changes often.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from payload.packed import Product, packed_product
from payload.prepare import HEAD_FILE, layer_file, load_manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    """Map a dtype name from a config file to torch, with a clear error."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def _load_tensors(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key).to(dtype) for key in handle.keys()}


def model_config(prepared: Path | str):
    """Config of a prepared model, with its family's transformers code imported (nothing built or run).

    The local testbed calls this before forking nodes, so each node skips those imports.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(prepared)
    MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the lookup imports the modeling module
    return config


class ModelSpec:
    """Config-level facts about a prepared model, plus a weightless skeleton to take modules from."""

    def __init__(self, prepared: Path | str):
        from transformers import AutoModelForCausalLM

        self.prepared = Path(prepared)
        self.manifest = load_manifest(self.prepared)
        self.config = model_config(self.prepared)
        self.num_layers = int(self.config.num_hidden_layers)
        self.hidden_size = int(self.config.hidden_size)
        with torch.device("meta"):
            self._skeleton = AutoModelForCausalLM.from_config(self.config)
        rotary_cls = type(self._skeleton.model.rotary_emb)
        self.rotary = rotary_cls(config=self.config)
        self._rotary_takes_type = "layer_type" in inspect.signature(self.rotary.forward).parameters

    def layer_type(self, index: int) -> str:
        """Attention type of layer ``index``: ``full_attention`` or ``sliding_attention``."""
        types = getattr(self.config, "layer_types", None)
        if types:
            return types[index]
        if getattr(self.config, "sliding_window", None) and self.config.model_type == "mistral":
            return "sliding_attention"
        return "full_attention"

    def materialise(self, module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> nn.Module:
        """Move a skeleton module to CPU memory and fill it from ``tensors`` (keys under ``prefix``)."""
        module = module.to_empty(device="cpu")
        own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        module.load_state_dict(own, strict=True)
        # Non-persistent buffers are not in the weights and come out of to_empty() uninitialised.
        for sub in module.modules():
            if hasattr(sub, "scalar_embed_scale"):
                sub.embed_scale.fill_(sub.scalar_embed_scale)
        persistent = set(own)
        for name, _ in module.named_buffers():
            if name not in persistent and not name.endswith("embed_scale"):
                raise RuntimeError(f"{type(module).__name__} has a buffer {name!r} this loader cannot initialise")
        return module.eval()

    def load_layers(self, indices: list[int], dtype: torch.dtype) -> dict[int, nn.Module]:
        """Materialise decoder layers ``indices`` only, reading just their files."""
        layers = {}
        for index in indices:
            if not 0 <= index < self.num_layers:
                raise ValueError(f"layer {index} out of range: the model has {self.num_layers} layers")
            tensors = _load_tensors(self.prepared / layer_file(index), dtype)
            skeleton = self._skeleton.model.layers[index]
            layers[index] = self.materialise(skeleton, tensors, f"model.layers.{index}.").to(dtype)
        return layers

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
        """Rotary (cos, sin) for these positions; Gemma 3 has one rotary per layer type."""
        if self._rotary_takes_type:
            return self.rotary(hidden, position_ids, layer_type)
        return self.rotary(hidden, position_ids)

    def new_cache(self):
        """A fresh per-session KV cache whose slots are indexed by global layer index."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)


class RowsKV:
    """Keys, values and masks of a batched decode step, one entry per row (None: a padding row).

    :class:`_RowsCache` hands this to the attention module in place of the keys and values; the rows-aware
    attention (:func:`_rows_aware`) then attends each row against its own session's cache, with the mask
    that row would have had alone.
    """

    __slots__ = ("rows",)

    def __init__(self, rows: list[tuple[torch.Tensor, torch.Tensor, object] | None]):
        self.rows = rows


class _RowsCache:
    """Stands in for a DynamicCache during :meth:`LayerSlice.forward_rows`: row j's new keys and values go to
    row j's own session cache, and what comes back is every row's whole keys and values (:class:`RowsKV`)."""

    def __init__(self, spec: "ModelSpec", caches: list["SessionCache | None"], masks: list[dict | None]):
        self.spec, self.caches, self.masks = spec, caches, masks

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        rows: list[tuple[torch.Tensor, torch.Tensor, object] | None] = []
        for j, cache in enumerate(self.caches):
            if cache is None:
                rows.append(None)
                continue
            keys, values = cache.cache.update(key_states[j:j + 1], value_states[j:j + 1], layer_idx, *args, **kwargs)
            rows.append((keys, values, self.masks[j][self.spec.layer_type(layer_idx)]))
        packed = RowsKV(rows)
        return packed, packed


def _rows_aware(attend):
    """``attend`` (an attention implementation) that also takes :class:`RowsKV`: each real row attends alone,
    exactly as ``attend`` would for that session unbatched; padding rows give zeros."""

    def attend_rows(module, query, key, value, attention_mask, **kwargs):
        if not isinstance(key, RowsKV):
            return attend(module, query, key, value, attention_mask, **kwargs)
        outs: list[torch.Tensor | None] = []
        for j, row in enumerate(key.rows):
            if row is None:
                outs.append(None)
                continue
            keys, values, mask = row
            outs.append(attend(module, query[j:j + 1], keys, values, mask, **kwargs)[0])
        real = next(out for out in outs if out is not None)
        return torch.cat([real.new_zeros(real.shape) if out is None else out for out in outs]), None

    attend_rows.jarvis_rows_aware = True
    return attend_rows


def install_rows_attention(config, attention: nn.Module) -> None:
    """Make the attention implementation ``config`` names rows-aware (idempotent; ordinary calls unchanged).

    The attention modules look their implementation up by name at every forward (``eager`` is their own
    module's ``eager_attention_forward``, looked up there at every call), so wrapping that one entry is where a
    batched step reaches per-row attention without copying the layer code.
    """
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = getattr(config, "_attn_implementation", None)
    if name in ALL_ATTENTION_FUNCTIONS:
        current = ALL_ATTENTION_FUNCTIONS[name]
        if not getattr(current, "jarvis_rows_aware", False):
            ALL_ATTENTION_FUNCTIONS[name] = _rows_aware(current)
        return
    family = sys.modules[type(attention).__module__]
    if name != "eager" or not callable(getattr(family, "eager_attention_forward", None)):
        raise ValueError(f"batched decode cannot reach the {name!r} attention of {type(attention).__name__}")
    if not getattr(family.eager_attention_forward, "jarvis_rows_aware", False):
        family.eager_attention_forward = _rows_aware(family.eager_attention_forward)


def make_mask(spec: ModelSpec, layer_type: str, hidden: torch.Tensor, cache, position_ids, layer_idx: int):
    """Causal (or sliding-window) mask sized from cache slot ``layer_idx``, which this slice owns."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    build = create_sliding_window_causal_mask if layer_type == "sliding_attention" else create_causal_mask
    return build(
        config=spec.config,
        inputs_embeds=hidden,
        attention_mask=None,
        cache=cache,
        position_ids=position_ids,
        layer_idx=layer_idx,
    )


@dataclass
class SessionCache:
    """One session's KV cache for one slice, with its own length bookkeeping.

    ``length`` counts positions this slice has cached.  Rolling back crops only
    this slice's layers (other slots of the DynamicCache are never touched: they
    may be uninitialised).  Sliding-window layers record their past so a re-sent
    step can be rolled back after the window is full; ``commit`` trims them once
    a step is known final.
    """

    cache: object
    layers: tuple[int, ...]
    length: int = 0

    @classmethod
    def new(cls, spec: ModelSpec, layers: tuple[int, ...]) -> "SessionCache":
        cache = spec.new_cache()
        for index in layers:
            slot = cache.layers[index]
            if hasattr(slot, "activate_past_recording"):
                slot.activate_past_recording()
        return cls(cache=cache, layers=layers)

    def rollback(self, positions: int) -> None:
        """Forget the last ``positions`` cached positions of this slice."""
        if positions <= 0:
            return
        if positions > self.length:
            raise ValueError(f"cannot roll back {positions} positions: only {self.length} cached")
        for index in self.layers:
            self.cache.layers[index].crop(-positions)
        self.length -= positions

    def commit(self) -> None:
        """Trim sliding-window layers back to their window: the last step is final."""
        for index in self.layers:
            slot = self.cache.layers[index]
            if getattr(slot, "is_initialized", False):
                slot.crop(0)


@dataclass
class LayerSlice:
    """Decoder layers ``[first, end)`` of a model, ready to run against a SessionCache."""

    spec: ModelSpec
    first: int
    end: int
    compute_dtype: torch.dtype = torch.float32
    layers: dict[int, nn.Module] = field(default_factory=dict)

    @classmethod
    def load(cls, spec: ModelSpec, first: int, end: int, compute_dtype: torch.dtype = torch.float32) -> "LayerSlice":
        if not 0 <= first < end <= spec.num_layers:
            raise ValueError(f"bad layer range [{first}, {end}) for a {spec.num_layers}-layer model")
        layers = spec.load_layers(list(range(first, end)), compute_dtype)
        return cls(spec=spec, first=first, end=end, compute_dtype=compute_dtype, layers=layers)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(range(self.first, self.end))

    @cached_property
    def first_of_type(self) -> dict[str, int]:
        """The first layer of each attention type on this slice: the cache slot its masks are sized from."""
        first: dict[str, int] = {}
        for index in self.indices:
            first.setdefault(self.spec.layer_type(index), index)
        return first

    def new_cache(self) -> SessionCache:
        return SessionCache.new(self.spec, self.indices)

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: SessionCache) -> torch.Tensor:
        """Apply the slice to ``hidden`` [1, T, H] at ``position_ids`` [1, T], appending T positions to ``cache``."""
        hidden = hidden.to(self.compute_dtype)
        first_of_type = self.first_of_type
        masks = {t: make_mask(self.spec, t, hidden, cache.cache, position_ids, i) for t, i in first_of_type.items()}
        rotary = {t: self.spec.position_embeddings(hidden, position_ids, t) for t in first_of_type}
        for index in self.indices:
            layer_type = self.spec.layer_type(index)
            hidden = self.layers[index](
                hidden,
                attention_mask=masks[layer_type],
                position_embeddings=rotary[layer_type],
                position_ids=position_ids,
                cache=cache.cache,
                use_cache=True,
            )
        cache.length += hidden.shape[1]
        return hidden

    @torch.inference_mode()
    def forward_rows(self, rows: list[tuple[torch.Tensor, int, SessionCache] | None]) -> list[torch.Tensor | None]:
        """Apply the slice to one position of several sessions at once: row j is ``(hidden [1, 1, H], position,
        cache)`` or None (padding: zeros, nothing cached).  Returns each row's output [1, 1, H] (None for
        padding); each real row's cache gains its position, as :meth:`forward` would add it.  One row is
        :meth:`forward` itself."""
        real = [row for row in rows if row is not None]
        if not real:
            raise ValueError("a batch needs at least one real row")
        if len(rows) == 1:  # a batch of one is the unbatched step itself
            hidden, position, cache = rows[0]
            return [self.forward(hidden, torch.tensor([[position]]), cache)]
        install_rows_attention(self.spec.config, self.layers[self.first].self_attn)
        zero = real[0][0].new_zeros((1, 1, self.spec.hidden_size), dtype=self.compute_dtype)
        hidden = torch.cat([zero if row is None else row[0].to(self.compute_dtype) for row in rows])
        position_ids = torch.tensor([[0 if row is None else row[1]] for row in rows])
        first_of_type = self.first_of_type
        masks = [None if row is None else {
            t: make_mask(self.spec, t, hidden[j:j + 1], row[2].cache, position_ids[j:j + 1], i)
            for t, i in first_of_type.items()} for j, row in enumerate(rows)]
        rotary = {t: self.spec.position_embeddings(hidden, position_ids, t) for t in first_of_type}
        view = _RowsCache(self.spec, [None if row is None else row[2] for row in rows], masks)
        for index in self.indices:
            layer_type = self.spec.layer_type(index)
            hidden = self.layers[index](hidden, attention_mask=None, position_embeddings=rotary[layer_type],
                                        position_ids=position_ids, cache=view, use_cache=True)
        for row in real:
            row[2].length += 1
        return [None if row is None else hidden[j:j + 1] for j, row in enumerate(rows)]


class Head:
    """The end-user node's share of the model: embeddings, final norm, output head."""

    def __init__(self, spec: ModelSpec, compute_dtype: torch.dtype = torch.float32):
        tensors = _load_tensors(spec.prepared / HEAD_FILE, compute_dtype)
        skeleton = spec._skeleton
        self.spec = spec
        self.compute_dtype = compute_dtype
        self.embed = spec.materialise(skeleton.model.embed_tokens, tensors, "model.embed_tokens.").to(compute_dtype)
        self.norm = spec.materialise(skeleton.model.norm, tensors, "model.norm.").to(compute_dtype)
        if "lm_head.weight" in tensors:
            self.lm_head_weight = tensors["lm_head.weight"]
        else:
            self.lm_head_weight = self.embed.weight  # tied embeddings
        self.softcap = getattr(spec.config, "final_logit_softcapping", None)
        self._rows_product: Product | None = None
        self.rows_packed = False

    @torch.inference_mode()
    def embed_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [1, T] -> hidden states [1, T, H] (Gemma's sqrt(H) scale lives inside embed_tokens)."""
        return self.embed(token_ids)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden state [1, T, H] -> logits [1, T, V], with Gemma's final soft-capping."""
        hidden = self.norm(hidden.to(self.compute_dtype))
        return self._capped(torch.nn.functional.linear(hidden, self.lm_head_weight))

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        if self.softcap:
            # In place: the same three element-wise steps as tanh(logits / cap) * cap, bit for bit, without
            # two fresh 262k-wide buffers (their page faults cost 16 of 23 ms on an 8-row batch here).
            logits.div_(self.softcap).tanh_().mul_(self.softcap)
        return logits

    def pack_rows(self) -> bool:
        """Ready the product that :meth:`logits_rows` computes several rows with (payload/packed.py: a packed
        copy of the head, made once, the head's size again); True when it is packed.  Done by the user node
        before it serves when it batches; otherwise on the first batch."""
        if self._rows_product is None:
            self._rows_product, self.rows_packed = packed_product(self.lm_head_weight)
        return self.rows_packed

    @torch.inference_mode()
    def logits_rows(self, rows: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
        """Logits of several sessions' last hidden states [1, 1, H] in one product (None: a padding row of
        zeros, as the oracle replays a batched step); each row's result depends on its own values, the number
        of rows and its place among them only.  One row is :meth:`logits` itself; more go through the packed
        product (:meth:`pack_rows`)."""
        real = next(row for row in rows if row is not None)
        if len(rows) == 1:
            return [self.logits(real)]
        self.pack_rows()
        zero = real.new_zeros((1, 1, self.spec.hidden_size))
        hidden = self.norm(torch.cat([zero if row is None else row.to(real.dtype) for row in rows]
                                     ).to(self.compute_dtype))
        logits = self._capped(self._rows_product(hidden))
        return [None if row is None else logits[j:j + 1] for j, row in enumerate(rows)]
